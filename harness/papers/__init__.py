"""The papers' own numbers: every numeric table of AMLN, ACKD, KDCL and TSB as YAML (``data/``), and
the lookup that finds the paper's number for a cell of a suite.

May import: nothing of harness.
"""

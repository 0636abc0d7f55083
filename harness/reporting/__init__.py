"""From records to what a reader sees: the paper-shaped tables (Markdown, LaTeX, CSV), the figures,
the frames both read records through, the suite index, the teacher/student analysis and ``harness list``.

May import: every harness package but harness.scheduling and harness.cli.
"""

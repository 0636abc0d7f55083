"""The documentation site: its generated pages say what the code says (a new suite key or a changed default fails
until they are regenerated), and the site builds with MkDocs in strict mode (a broken link, a missing page or an
anchor that is not there fails)."""
from __future__ import annotations

import subprocess
import sys

from harness import docsgen


def test_the_generated_pages_are_up_to_date():
    assert docsgen.stale(docsgen.pages()) == [], "run: python -m harness.docsgen"


def test_a_changed_default_makes_its_page_stale(monkeypatch):
    """The check compares with the code itself: a default changed in code shows in the generated text."""
    from methods.dml import DMLParams

    before = docsgen.pages()
    monkeypatch.setattr(DMLParams.model_fields["temperature"], "default", 3.0)
    after = docsgen.pages()
    changed = [p.name for p in before if before[p] != after[p]]
    assert changed == ["dml.md"] and "| `temperature` | number | `3.0` |" in after[docsgen.DOCS / "methods" / "dml.md"]


def test_the_site_builds_in_strict_mode(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=docsgen.ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "methods" / "dml" / "index.html").is_file()
    assert (tmp_path / "site" / "reference" / "suite" / "index.html").is_file()


def test_the_readmes_own_method_example_validates(tmp_path):
    """The README's two files, copied as a reader would: `harness validate` accepts the suite with its plug-in (its
    own process: the example's method name is also a name other tests register)."""
    from tests.helpers import HARNESS, ROOT, documented_files

    files = documented_files(ROOT / "README.md")
    assert set(files) == {"my_methods.py", "my_suite.yaml"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    result = subprocess.run([*HARNESS, "validate", "my_suite.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0 and "my_suite.yaml: ok, 6 cells" in result.stdout, result.stdout + result.stderr


def test_every_suite_key_says_what_it_means():
    """The reference's meaning column comes from each key's docstring: a new key without one fails here."""
    from harness.config.recipe import Recipe
    from harness.suite.spec import SuiteSpec

    models = {**docsgen.nested_models(SuiteSpec, ""), **docsgen.nested_models(Recipe, "recipe")}
    assert len(models) >= 10
    assert [f"{path or 'top level'}.{key}" for model, path in models.items()
            for key, field in model.model_fields.items() if not field.description] == []


def test_the_tutorials_suite_is_valid_as_written(tmp_path):
    """docs/tutorial.md's own suite, copied as a reader would: it loads, every key checked, into the cells it says."""
    from harness.suite.schema import load_suite
    from tests.helpers import ROOT, documented_files

    files = documented_files(ROOT / "docs" / "tutorial.md")
    (tmp_path / "my_suite.yaml").write_text(files["my_suite.yaml"])
    suite = load_suite(tmp_path / "my_suite.yaml")
    assert {c.method for c in suite.cells} == {"ind", "dml", "kdcl"} and len(suite.cells) == 9

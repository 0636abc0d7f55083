"""Every note the code cites exists, and nothing cites a document outside the repository.

The code, the suite files and the READMEs cite the notes under ``docs/`` as a path from the repository root plus the
heading's anchor, e.g. ``docs/notes/official_code.md#repdistiller``.  This test finds every such reference (and every
relative Markdown link between the pages under ``docs/``), checks that the page exists and that the anchor is the
id of one of its headings, and that no file names the documents the notes replace.

Anchors are the ids MkDocs gives headings: Python-Markdown's ``toc`` extension, whose default ``slugify`` is
reproduced here (the ``markdown`` package is not a dependency of the harness); a heading may also set its id
explicitly with ``{#id}`` (the ``attr_list`` extension).  Where ``markdown`` is installed, a second test checks that
both give the same ids for every page.
"""
from __future__ import annotations

import re
import unicodedata
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve()

# What is scanned: the folders that hold code, suites, tests and documentation, and the root's own text files.
FOLDERS = ("harness", "methods", "suites", "benchmarks", "tests", "docs", ".ci")
ROOT_FILES = ("README.md", "pyproject.toml", "reports/README.md")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".j2", ".json", ".tex", ".cfg", ".ini", ".sh", ""}
SKIPPED_PARTS = {"__pycache__", ".pytest_cache"}

# A note: ``docs/<path>.md`` with an optional ``#anchor``, not preceded by a word, a slash or a dot (so a URL's
# ``/docs/`` or ``mkdocs/`` is not one), but with any ``../`` in front of it, which is reported as not from the root.
REFERENCE = re.compile(r"(?<![\w/.-])((?:\.\./)*docs/[\w./-]*?\.md)(#[\w-]*)?")
# A Markdown link inside a page under docs/: [text](page.md#anchor), [text](#anchor).
LINK = re.compile(r"\]\(([^()\s#]*)(#[^()\s]*)?\)")

# Documents the notes replace, and the folder they lived in: no file may name them.
FORBIDDEN = {
    "methods_spec": re.compile(r"methods_spec"),
    "reference_impls": re.compile(r"reference_impls"),
    "../shared": re.compile(r"\.\./shared\b|\bshared/(docs|paper_tables|seeds|hooks)\b"),
    "paper_tables": re.compile(r"\bpaper_tables\b"),
    "../seeds": re.compile(r"\.\./seeds\b"),
    "gpu_review.md": re.compile(r"gpu_review"),
    "anchors.md": re.compile(r"\banchors\.md\b"),
    "environment.md": re.compile(r"\benvironment\.md\b"),
    "a bare 'spec §N' citation": re.compile(r"\bspec\s*§"),
}

HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$")
EXPLICIT_ID = re.compile(r"\s*\{[^}]*#([\w-]+)[^}]*\}\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def slugify(text: str) -> str:
    """Python-Markdown's ``toc`` slugify (its default, non-unicode form): ASCII-folded, punctuation dropped, lower
    case, runs of spaces and hyphens made one hyphen."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def heading_text(raw: str) -> str:
    """The text ``toc`` slugifies: the heading's inline Markdown rendered to plain text (code spans, emphasis and
    links reduced to their text)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", raw)  # links and images: their text
    text = re.sub(r"`+([^`]*)`+", r"\1", text)  # code spans
    text = re.sub(r"(\*{1,3}|\b_{1,3})(\S.*?\S|\S)\1", r"\2", text)  # emphasis
    return re.sub(r"<[^>]+>", "", text)  # inline HTML


@cache
def anchors(page: Path) -> tuple[str, ...]:
    """The ids of a page's headings, in order, as MkDocs would give them (duplicates suffixed _1, _2, ...)."""
    ids: list[str] = []
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if not match:
            continue
        raw = match.group(2)
        explicit = EXPLICIT_ID.search(raw)
        if explicit:
            ids.append(explicit.group(1))
            continue
        slug = base = slugify(heading_text(raw))
        n = 0
        while slug in ids:
            n += 1
            slug = f"{base}_{n}"
        ids.append(slug)
    return tuple(ids)


def scanned_files() -> list[Path]:
    files = [ROOT / name for name in ROOT_FILES if (ROOT / name).is_file()]
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*")):
            if (path.is_file() and path.suffix in TEXT_SUFFIXES and path.resolve() != THIS
                    and not SKIPPED_PARTS & set(path.relative_to(ROOT).parts)
                    and not any(part.endswith(".egg-info") for part in path.parts)):
                files.append(path)
    return files


@cache
def texts() -> dict[Path, str]:
    out = {}
    for path in scanned_files():
        try:
            out[path] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # a binary file with a text suffix: nothing to cite
            continue
    return out


def check(target: Path, anchor: str | None, shown: str) -> str | None:
    """Why a reference to ``target`` (and ``anchor``, without its #) does not resolve, or None."""
    if not target.is_file():
        return f"{shown}: no such file"
    if anchor is not None and anchor not in anchors(target):
        return (f"{shown}: no heading with the id {anchor!r} in {target.relative_to(ROOT)} "
                f"(its ids: {', '.join(anchors(target))})")
    return None


def where(path: Path, text: str, offset: int) -> str:
    return f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, offset) + 1}"


def test_every_reference_to_a_note_resolves():
    broken, found = [], 0
    for path, text in texts().items():
        for match in REFERENCE.finditer(text):
            found += 1
            shown, anchor = match.group(1) + (match.group(2) or ""), match.group(2)
            if shown.startswith("../"):
                broken.append(f"{where(path, text, match.start())}: {shown}: write the path from the repository root")
                continue
            problem = check(ROOT / match.group(1), anchor[1:] if anchor else None, shown)
            if problem:
                broken.append(f"{where(path, text, match.start())}: {problem}")
        if path.suffix == ".md" and path.is_relative_to(ROOT / "docs"):
            for match in LINK.finditer(text):
                target, anchor = match.group(1), match.group(2)
                if re.match(r"[a-z][a-z0-9+.-]*:", target) or not (target.endswith(".md") or not target):
                    continue  # a URL, or a link to something other than a page
                found += 1
                problem = check((path.parent / target).resolve() if target else path,
                                anchor[1:] if anchor else None, (target or path.name) + (anchor or ""))
                if problem:
                    broken.append(f"{where(path, text, match.start())}: {problem}")
    assert found, "no reference to a note found: the scan itself is broken"
    assert not broken, "references to notes that do not resolve:\n" + "\n".join(broken)


def test_nothing_names_the_documents_the_notes_replace():
    named = [f"{where(path, text, match.start())}: {name} ({text[match.start():match.end()]!r})"
             for path, text in texts().items() for name, pattern in FORBIDDEN.items()
             for match in pattern.finditer(text)]
    assert not named, ("files that point outside the repository (cite a page under docs/notes/ instead):\n"
                       + "\n".join(named))


def test_every_page_has_unique_headings_and_a_title():
    pages = sorted((ROOT / "docs").rglob("*.md"))
    assert pages, "docs/ holds no page"
    problems = []
    for page in pages:
        ids = anchors(page)
        lines = page.read_text(encoding="utf-8").splitlines()
        if not lines or not lines[0].startswith("# "):
            problems.append(f"{page.relative_to(ROOT)}: the first line is not a '# ' title")
        if any(re.search(r"_\d+$", i) and i.rsplit("_", 1)[0] in ids for i in ids):
            problems.append(f"{page.relative_to(ROOT)}: two headings give the same id ({', '.join(ids)})")
    assert not problems, "\n".join(problems)


def test_the_anchor_rule_is_markdowns():
    """The ids computed here are the ones Python-Markdown's toc extension (which MkDocs uses) gives."""
    markdown = pytest.importorskip("markdown")
    for page in sorted((ROOT / "docs").rglob("*.md")):
        md = markdown.Markdown(extensions=["toc", "attr_list", "tables", "fenced_code"])
        md.convert(page.read_text(encoding="utf-8"))
        theirs: list[str] = []

        def walk(tokens):
            for token in tokens:
                theirs.append(token["id"])
                walk(token["children"])

        walk(md.toc_tokens)
        assert list(anchors(page)) == theirs, page.relative_to(ROOT)


@pytest.mark.parametrize("heading, slug", [
    ("KL direction", "kl-direction"), ("Offline in RepDistiller's form", "offline-in-repdistillers-form"),
    ("T² scaling", "t2-scaling"), ("The `ens` output", "the-ens-output"), ("A -- b", "a-b"),
    ("Ablations of Table 5", "ablations-of-table-5")])
def test_slugify_follows_markdown(heading, slug):
    assert slugify(heading_text(heading)) == slug

"""Reading a YAML file a user wrote (a suite, a recipes file) so that whatever is wrong with it is one line.

A directory, a missing file, bytes that are not UTF-8 text, a file too large to be a config, YAML that does not
parse, nests too deeply or repeats a key (PyYAML keeps the last one silently; we refuse it), or a document that
is not a mapping: each is a :class:`YamlFileError` naming the file and what would be valid.
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

MAX_BYTES = 1 << 20  # a suite is a few kilobytes; a megabyte is not a config
MAX_DEPTH = 50  # mappings within mappings: a suite needs 5


class YamlFileError(ValueError):
    """What is wrong with a YAML config file, in one line."""


class _StrictLoader(yaml.SafeLoader):
    """The safe loader, refusing a key that a mapping already has."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {shorten(repr(key), 60)} (first on line {seen[key] + 1}); "
                        "YAML would keep only the last", key_node.start_mark)
                seen[key] = key_node.start_mark.line
            except TypeError:  # an unhashable key (a list or mapping): the model's own check names it
                pass
        return super().construct_mapping(node, deep=deep)


def shorten(text: str, limit: int = 300) -> str:
    """``text`` cut in its middle to at most ``limit`` characters (a value echoed back in an error message)."""
    return text if len(text) <= limit else f"{text[: limit // 2 - 2]} … {text[-(limit // 2 - 2):]}"


MAX_VALUES = 100_000  # values after YAML's aliases are expanded: a suite has a few hundred


def _shape(value) -> tuple[int, int]:
    """(deepest nesting, values counted) of a loaded document, counting stops past the limits: an alias bomb
    (a few lines whose aliases expand to billions of values) is measured in microseconds, not expanded."""
    deepest, count, stack = 0, 0, [(value, 0)]
    while stack and count <= MAX_VALUES and deepest <= MAX_DEPTH:
        item, level = stack.pop()
        count += 1
        deepest = max(deepest, level)
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((c, level + 1) for c in children)
    return deepest, count


def read_yaml_mapping(path: str | Path, what: str = "suite file") -> dict:
    """The mapping a YAML file holds, or a :class:`YamlFileError` in one line."""
    path = Path(path)
    if path.is_dir():
        raise YamlFileError(f"{path}: is a directory, not a {what}; give the path of a .yaml file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise YamlFileError(f"{path}: no such {what}") from None
    except OSError as e:
        raise YamlFileError(f"{path}: cannot be read ({e.strerror or e})") from None
    if len(data) > MAX_BYTES:
        raise YamlFileError(f"{path}: {len(data):,} bytes is too large for a {what} (at most {MAX_BYTES:,})")
    if b"\0" in data:
        raise YamlFileError(f"{path}: a binary file, not a {what} (YAML text)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise YamlFileError(f"{path}: not UTF-8 text (byte {e.start}: {data[e.start:e.start + 1]!r}); save the "
                            f"{what} as UTF-8") from None
    limit = sys.getrecursionlimit()
    try:
        sys.setrecursionlimit(max(limit, 5000))
        raw = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what_wrong = " ".join(filter(None, (e.context, e.problem)))
        raise YamlFileError(f"{path}: not valid YAML{where}: {shorten(what_wrong, 200)}") from None
    except yaml.YAMLError as e:
        raise YamlFileError(f"{path}: not valid YAML: {shorten(' '.join(str(e).split()), 200)}") from None
    except RecursionError:
        raise YamlFileError(f"{path}: nested too deeply to be a {what}") from None
    finally:
        sys.setrecursionlimit(limit)
    if not isinstance(raw, dict):
        raise YamlFileError(f"{path}: a {what} must be a mapping of keys, got {type(raw).__name__}")
    deepest, count = _shape(raw)
    if deepest > MAX_DEPTH:
        raise YamlFileError(f"{path}: nested more than {MAX_DEPTH} levels deep; a {what} needs a few")
    if count > MAX_VALUES:
        raise YamlFileError(f"{path}: expands to more than {MAX_VALUES:,} values (YAML aliases repeating "
                            f"aliases?); a {what} holds a few hundred")
    return raw

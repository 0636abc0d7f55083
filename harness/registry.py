"""Name → factory registries filled by decorators, so adding a component means adding one file, in this package or
in a researcher's own (a plug-in: an installed package's entry point, or a module or ``.py`` file a suite names)."""
from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


def did_you_mean(name: str, choices) -> str:
    """' (did you mean X?)' for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class UnknownName(KeyError):
    """A name that no registry entry has; the message lists what would be valid."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class NameClash(ValueError):
    """Two components registered under one name (a plug-in's and another); the message is one line."""


class PluginError(ImportError):
    """A plug-in that cannot be found or imported; the message is one line."""

    def __str__(self) -> str:
        return str(self.args[0])


# the entry-point group of each kind an installed package can add (pyproject: [project.entry-points."okd_harness.methods"])
ENTRY_POINT_GROUPS = {"method": "okd_harness.methods", "model": "okd_harness.models", "dataset": "okd_harness.datasets",
                      "tracker": "okd_harness.trackers"}
BUILT_IN = ("harness", "methods", "timm", "torchvision")  # top-level packages whose entries are not plug-ins
_loaded_groups: set[str] = set()


def load_entry_points(kind: str) -> None:
    """Import every installed package's plug-in module of ``kind`` (once per process): importing registers it."""
    group = ENTRY_POINT_GROUPS[kind]
    if group in _loaded_groups:
        return
    _loaded_groups.add(group)
    for point in importlib.metadata.entry_points(group=group):
        try:
            point.load()
        except NameClash:
            raise
        except Exception as e:  # noqa: BLE001 — whatever a plug-in raises on import is one line
            raise PluginError(f"plug-in {point.name!r} ({point.value}, entry point of {group}) failed to import: "
                              f"{type(e).__name__}: {e}") from None


def load_plugin(spec: str, base: Path | None = None):
    """Import a plug-in named by a suite (``plugins:``) or ``--plugins``: a module name, or a ``.py`` file (relative
    to ``base``, the suite's folder); importing registers its methods, models and datasets.  Returns the module."""
    if spec.endswith(".py"):
        path = Path(spec) if Path(spec).is_absolute() or base is None else Path(base) / spec
        path = path.resolve()
        name = f"harness_plugin_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}_{path.stem}"
        if name in sys.modules:
            return sys.modules[name]
        if not path.is_file():
            raise PluginError(f"plug-in {spec}: no such file ({path})")
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        module.__harness_plugin__ = str(path)  # what a trial imports again in its own process
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except NameClash:
            del sys.modules[name]
            raise
        except Exception as e:  # noqa: BLE001
            del sys.modules[name]
            raise PluginError(f"plug-in {spec} failed to import: {type(e).__name__}: {e}") from None
        return module
    try:
        return importlib.import_module(spec)
    except NameClash:
        raise
    except Exception as e:  # noqa: BLE001
        raise PluginError(f"plug-in {spec!r} cannot be imported ({type(e).__name__}: {e}); give an installed "
                          "module's name or a .py file") from None


def plugin_of(entry) -> str | None:
    """``"<module or .py path>@<SHA-256 of its source, 16 hex>"`` where ``entry`` (a class or function) comes from a
    plug-in, None where it is built in: what enters the hash of the cells that use it."""
    module = sys.modules.get(getattr(entry, "__module__", "") or "")
    if module is None or module.__name__.split(".")[0] in BUILT_IN:
        return None
    where = _where(entry)
    try:
        source = Path(inspect.getsourcefile(module)).read_bytes()
    except (TypeError, OSError):
        source = b""
    return f"{where}@{hashlib.sha256(source).hexdigest()[:16]}"


def origin(entry) -> str:
    """Where an entry comes from, for ``harness list``: "built in", or the plug-in's module or file."""
    plugin = plugin_of(entry)
    return "built in" if plugin is None else f"plug-in {plugin.rsplit('@', 1)[0]}"


def load_cell_plugins(cells) -> None:
    """Import, in this process (a trial, a data-parallel worker), the plug-ins the cells' entries come from."""
    for spec in {p for cell in cells for p in cell.plugins}:
        load_plugin(spec.rsplit("@", 1)[0])


class Registry(Generic[T]):
    """A named table of entries, each registered once with ``@REGISTRY.register("name")``."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            old = self._entries.get(name)
            if old is not None and old is not entry and _where(old) != _where(entry):
                raise NameClash(f"{self.kind} {name!r} is registered twice: by {_where(old)} and by {_where(entry)}; "
                                "rename one of them")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownName(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        return f"unknown {self.kind} {name!r}{did_you_mean(name, self._entries)}; valid: {', '.join(sorted(self))}"

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def items(self):
        return sorted(self._entries.items())


def _where(entry) -> str:
    """The plug-in file an entry was loaded from, else its module's name."""
    module = sys.modules.get(getattr(entry, "__module__", "") or "")
    return getattr(module, "__harness_plugin__", None) or getattr(entry, "__module__", "?")

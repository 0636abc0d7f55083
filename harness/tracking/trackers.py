"""The tracker registry and the built-in trackers (``wandb``, ``mlflow``, ``tensorboard``).

A tracker is a class registered by name: its typed settings (``Options``, the suite's ``log: {name: {...}}``), the
packages it needs (and the extra that installs them), a check run before Ray starts, and the Ray Tune callback that
logs a run (:meth:`Tracker.callback`).  A researcher's own registers the same way, in a plug-in file or an installed
package's ``okd_harness.trackers`` entry point::

    from harness.tracking.trackers import TRACKERS, Tracker

    @TRACKERS.register("jsonl")
    class JsonLines(Tracker):
        \"\"\"Each cell's epochs as lines of a JSON file.\"\"\"
        def callback(self, cells_of, record_of):
            return MyCallback(self, cells_of, record_of)   # a CellRuns subclass (harness/tracking/cell_runs.py)
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Callable, ClassVar

from pydantic import ValidationError

from harness.config.recipe import Strict
from harness.registry import Registry, did_you_mean, load_entry_points


class TrackerError(RuntimeError):
    """A tracker that cannot log here (its package missing, no credentials); the message is one line."""


class TrackerOptions(Strict):
    """Settings every tracker takes: ``offline`` keeps everything in local files (``--log-offline``)."""

    offline: bool = False


class Tracker:
    """One tracker of a run: built before Ray starts from its validated options, the suite's name and ``folder``
    (where its local files go: the results folder, or the current one for a results URI)."""

    Options: ClassVar[type[TrackerOptions]] = TrackerOptions
    title: ClassVar[str] = ""  # how its lines name it ("W&B"); the registered name where empty
    extra: ClassVar[str | None] = None  # `pip install "okd-harness[<extra>]"` installs what it needs
    modules: ClassVar[tuple[str, ...]] = ()  # the modules it imports, checked before Ray starts

    def __init__(self, name: str, options: TrackerOptions, suite: str, folder: Path):
        self.name, self.options, self.suite, self.folder = name, options, suite, Path(folder).absolute()

    @property
    def label(self) -> str:
        return self.title or self.name

    def needs(self) -> tuple[str, ...]:
        """The modules it imports with these options."""
        return self.modules

    def check(self) -> None:
        """Raise :class:`TrackerError` (one line) where this tracker cannot log: by default, a missing package."""
        missing = [m for m in self.needs() if importlib.util.find_spec(m) is None]
        if missing:
            how = f'pip install "okd-harness[{self.extra}]"' if self.extra else f"pip install {' '.join(missing)}"
            raise TrackerError(f"{self.name} tracker: {', '.join(missing)} is not installed here; {how}")

    def callback(self, cells_of: Callable, record_of: Callable):
        """The Ray Tune callback of one experiment (a wave of cells): ``cells_of(trial)`` gives a trial's cells and
        the code version, ``record_of(cell_hash)`` a cell's record once its trial ended (None before)."""
        raise NotImplementedError

    def opening(self) -> str:
        """The line a run prints before it trains: where the runs go."""
        return f"{self.label}: logging each cell as a run"

    def closing(self) -> str | None:
        """The line a run prints at its end (how to upload offline runs), or None."""
        return None


TRACKERS: Registry[type[Tracker]] = Registry("tracker")


def load_trackers() -> Registry[type[Tracker]]:
    """The registry, with every installed package's ``okd_harness.trackers`` entry points imported."""
    load_entry_points("tracker")
    return TRACKERS


def options_of(name: str, given: dict | None) -> TrackerOptions:
    """``given`` validated as tracker ``name``'s options (pydantic's error, for the caller to word)."""
    return TRACKERS.get(name).Options.model_validate(given or {})


def chosen_trackers(suite_log: dict, names: list[str] | None, offline: bool, suite: str,
                    folder: Path) -> list[Tracker]:
    """The trackers of a run: the suite's ``log:`` (validated when it was loaded), or ``names`` from ``--log``
    (comma-separated entries allowed; ``none``: no tracker) with the suite's settings of those it names;
    ``offline`` (``--log-offline``) sets every one offline.  Raises :class:`TrackerError` (one line)."""
    registry = load_trackers()
    if names is None:
        chosen = dict(suite_log)
    else:
        given = [n.strip() for entry in names for n in entry.split(",") if n.strip() not in ("", "none")]
        chosen = {}
        for name in given:
            if name not in registry:
                raise TrackerError(f"--log: unknown tracker {name!r}{did_you_mean(name, list(registry) + ['none'])};"
                                   f" valid: {', '.join(registry)} (or none)")
            chosen[name] = suite_log.get(name) or {}
    out = []
    for name, given in chosen.items():
        try:
            options = options_of(name, {**(given or {}), **({"offline": True} if offline else {})})
        except ValidationError as e:  # the suite's were checked when it was loaded; a plug-in's defaults may not be
            raise TrackerError(f"{name} tracker: {e.errors()[0]['msg']}") from None
        out.append(registry.get(name)(name, options, suite, folder))
    return out


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


# ------------------------------------------------------------------------------------------------ built-ins
class WandbOptions(TrackerOptions):
    project: str | None = None  # default: $WANDB_PROJECT, else the suite's name
    entity: str | None = None  # default: $WANDB_ENTITY, else your W&B default entity
    dir: str | None = None  # the folder of W&B's local files (its wandb/ folder); default: $WANDB_DIR, else results


@TRACKERS.register("wandb")
class WandbTracker(Tracker):
    """Weights & Biases: one run per cell, grouped by method and peer group (its seeds), offline on request."""

    Options = WandbOptions
    title = "W&B"
    extra = "wandb"
    modules = ("wandb",)

    @property
    def offline(self) -> bool:
        return self.options.offline or _env("WANDB_MODE") in ("offline", "dryrun")

    @property
    def project(self) -> str:
        return self.options.project or _env("WANDB_PROJECT") or self.suite

    @property
    def entity(self) -> str | None:
        return self.options.entity or _env("WANDB_ENTITY")

    @property
    def dir(self) -> Path:
        return Path(self.options.dir or _env("WANDB_DIR") or self.folder).absolute()

    def check(self) -> None:
        super().check()
        if not self.offline and _wandb_key_here() is False:
            raise TrackerError("wandb tracker: no W&B API key here; run `wandb login`, set WANDB_API_KEY, or log "
                               "offline (--log-offline) and `wandb sync` the runs later")

    def callback(self, cells_of, record_of):
        from harness.tracking.wandb_callback import WandbCellRuns

        return WandbCellRuns(self, cells_of, record_of)

    def opening(self) -> str:
        where = f"{self.entity}/{self.project}" if self.entity else self.project
        if self.offline:
            return f"W&B: offline, each cell a run of project {where!r} in {self.dir / 'wandb'}"
        return f"W&B: each cell a run of project {where!r}"

    def closing(self) -> str | None:
        if not self.offline:
            return None
        where = self.dir / "wandb"
        return f"W&B: offline runs in {where}; upload them with: wandb sync {where}/offline-run-*"


def _wandb_key_here() -> bool | None:
    """Whether W&B has an API key here: $WANDB_API_KEY, or the one `wandb login` saved for its host (None where
    wandb's internals cannot tell: the run goes ahead, and W&B says what it misses).  Never asks the network, and
    not through ``wandb.api``, deprecated (Ray's callback asks it, with a warning on the console)."""
    if _env("WANDB_API_KEY"):
        return True
    try:
        from wandb.sdk import wandb_setup
        from wandb.sdk.lib import wbauth

        settings = wandb_setup.singleton().settings
        host = settings.base_url
        return bool(wbauth.session_credentials(host=host) or wbauth.read_netrc_auth(host=host) or settings.api_key)
    except Exception:  # noqa: BLE001 — wandb's internals changed
        return None


class MlflowOptions(TrackerOptions):
    tracking_uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else sqlite:///<results>/mlflow.db
    experiment: str | None = None  # default: $MLFLOW_EXPERIMENT_NAME, else the suite's name


@TRACKERS.register("mlflow")
class MlflowTracker(Tracker):
    """MLflow: one run per cell in the suite's experiment, its tags, parameters and per-epoch metrics."""

    Options = MlflowOptions
    title = "MLflow"
    extra = "mlflow"
    modules = ("mlflow", "sqlalchemy", "alembic")

    @property
    def tracking_uri(self) -> str:
        """The options' URI, else $MLFLOW_TRACKING_URI, else MLflow's own default, a SQLite file, here under the
        results folder; offline, a server's URI (http, https, databricks) gives way to that file."""
        for uri in (self.options.tracking_uri, _env("MLFLOW_TRACKING_URI")):
            if uri and not (self.options.offline and uri.split(":", 1)[0] in ("http", "https", "databricks")):
                return uri
        return f"sqlite:///{self.folder / 'mlflow.db'}"

    @property
    def experiment(self) -> str:
        return self.options.experiment or _env("MLFLOW_EXPERIMENT_NAME") or self.suite

    def needs(self) -> tuple[str, ...]:
        return self.modules if self.tracking_uri.startswith("sqlite:") else ("mlflow",)  # a server: no SQLAlchemy

    def callback(self, cells_of, record_of):
        from harness.tracking.mlflow_callback import MlflowCellRuns

        return MlflowCellRuns(self, cells_of, record_of)

    def opening(self) -> str:
        uri = self.tracking_uri
        local = uri.startswith(("sqlite:", "file:")) or "://" not in uri  # a server shows its own UI
        view = f"; view with: mlflow ui --backend-store-uri {uri} (the full mlflow package)" if local else ""
        return f"MLflow: each cell a run of experiment {self.experiment!r} at {uri}{view}"


class TensorboardOptions(TrackerOptions):
    logdir: str | None = None  # default: <results>/tensorboard; one folder per suite, one per cell in it


@TRACKERS.register("tensorboard")
class TensorboardTracker(Tracker):
    """TensorBoard: event files per cell (tensorboardX), its scalars per epoch, its tags as hyper-parameters."""

    Options = TensorboardOptions
    title = "TensorBoard"
    extra = "tensorboard"
    modules = ("tensorboardX",)

    @property
    def logdir(self) -> Path:
        return Path(self.options.logdir or self.folder / "tensorboard").absolute()

    def callback(self, cells_of, record_of):
        from harness.tracking.tensorboard_callback import TensorboardCellRuns

        return TensorboardCellRuns(self, cells_of, record_of)

    def opening(self) -> str:
        return (f"TensorBoard: each cell a run in {self.logdir / self.suite}; view with: tensorboard --logdir "
                f"{self.logdir}")

"""A cell: one fully resolved training run (dataset, peer group, method and its hyper-parameters, recipe,
seed) with a stable hash that names its result everywhere."""
from __future__ import annotations

import fnmatch
import hashlib
import json
from dataclasses import asdict, dataclass, field

HASH_FORMAT = 1  # bump only when the meaning of an unchanged config changes
# where data lives and the checksum of the copy there (a run keys other data apart with ``data``), citations, which
# epoch a report shows
_NOT_HASHED = {"dataset": ("root", "download", "fingerprint"), "recipe": ("source", "report_epoch")}


# keys added after cells were hashed: at this value they are left out of the hash
_ADDED_DEFAULTS = {"recipe": {"precision": "fp32", "sync_bn": False}}


def hashed_recipe(recipe: dict) -> dict:
    """``recipe`` without the keys that do not enter a hash (its citation, the epoch a report shows) and without
    options added later at their default."""
    added = _ADDED_DEFAULTS["recipe"]
    return {k: v for k, v in recipe.items()
            if k not in _NOT_HASHED["recipe"] and not (k in added and v == added[k])}


@dataclass(frozen=True)
class Cell:
    method: str
    hparams: dict
    group: tuple[str, ...]
    dataset: dict
    recipe: dict
    seed: int
    label: str = ""  # the method's column name in the suite's table; cosmetic, not hashed
    suite: str = field(default="", compare=False)
    stop_epoch: int | None = None  # train the recipe's schedule but stop after this epoch (ESKD's teacher)
    # a network trained alone (a suite's ``alone: true``) for the table row of the group ``row``, whose network
    # ``position`` (0-based) it is; cosmetic, not hashed: the same cell serves every row that has the network
    row: tuple[str, ...] | None = field(default=None, compare=False)
    position: int = field(default=0, compare=False)
    # the plug-ins its method, networks and dataset come from ("<module or file>@<source SHA-256>"): hashed, so that
    # results of two versions of a plug-in never mix; empty for built-in entries (their code is the harness's)
    plugins: tuple[str, ...] = ()

    def identity(self) -> dict:
        """What defines the result: every field that changes the numbers, and nothing else."""
        ident = {
            "format": HASH_FORMAT,
            "method": self.method,
            "hparams": self.hparams,
            "group": list(self.group),
            "dataset": self.dataset,
            "recipe": self.recipe,
            "seed": self.seed,
        }
        if self.stop_epoch is not None:  # absent otherwise, so that earlier hashes stay valid
            ident["stop_epoch"] = self.stop_epoch
        if self.plugins:  # likewise
            ident["plugins"] = list(self.plugins)
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in self.recipe.get("peer_lr") or {} for name in self.group):
            ident["peer_lr_reaches"] = "followers"  # since 2026-12-01 also the extra modules that follow a network
        if any(name.startswith("cifar_mobilenetv2") for name in self.group):
            ident["mobilenetv2_stages"] = "repdistiller"  # since 2026-12-01: stage 4 ends before the 1280-channel conv
        ident["dataset"] = {k: v for k, v in self.dataset.items() if k not in _NOT_HASHED["dataset"]}
        ident["recipe"] = hashed_recipe(self.recipe)
        return ident

    @property
    def hash(self) -> str:
        canonical = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def group_name(self) -> str:
        return "+".join(self.group)

    @property
    def row_name(self) -> str:
        """The group whose table row shows this cell: its own, or, for a network trained alone, the row's."""
        return "+".join(self.row) if self.row else self.group_name

    def describe(self) -> str:
        return f"{self.label or self.method} {self.group_name} seed {self.seed}"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["group"] = list(self.group)
        if self.row is None:  # only a network trained alone says which row it is for
            del out["row"], out["position"]
        else:
            out["row"] = list(self.row)
        if self.plugins:
            out["plugins"] = list(self.plugins)
        else:
            del out["plugins"]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Cell":
        row = data.get("row")
        return cls(**{**data, "group": tuple(data["group"]), "row": tuple(row) if row else None,
                      "plugins": tuple(data.get("plugins") or ())})

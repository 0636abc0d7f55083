"""Every shipped suite, mutated as a user's typo would (deleted keys, wrong types, out-of-range and non-finite
numbers, unknown names, broken syntax, repeated keys, text that is not a suite, a batch larger than the data, a
value naming a network no group has): ``harness validate`` answers each
with exit code 2 and short lines naming the file, never a traceback and never "ok"."""
import copy
import random
from pathlib import Path

import pytest
import yaml

from harness.cli import main

SUITES = sorted(Path(__file__).parents[1].joinpath("suites").glob("*.yaml"))


def _first_method_dict(suite: dict) -> dict:
    methods = suite["methods"]
    for i, m in enumerate(methods):
        if isinstance(m, dict):
            return m
    methods[0] = {"name": methods[0]}
    return methods[0]


def _recipe(suite: dict) -> dict:
    if not isinstance(suite.get("recipe"), dict):
        suite["recipe"] = {"base": suite["recipe"]}
    return suite["recipe"]


# name -> how it breaks a loaded suite (a mapping); each is one mistake
STRUCTURED = {
    "no groups": lambda s: s.pop("groups"),
    "no seeds": lambda s: s.pop("seeds"),
    "no dataset": lambda s: s.pop("dataset"),
    "empty methods": lambda s: s.update(methods=[]),
    "seed -1": lambda s: s.update(seeds=[-1]),
    "seed true": lambda s: s.update(seeds=[True]),
    "seed 2^64": lambda s: s.update(seeds=[2**64]),
    "epochs 0": lambda s: _recipe(s).update(epochs=0),
    "epochs 2.5": lambda s: _recipe(s).update(epochs=2.5),
    "batch -8": lambda s: _recipe(s).update(batch_size=-8),
    "lr nan": lambda s: _recipe(s).update(optimizer={"name": "sgd", "lr": float("nan")}),
    "lr inf": lambda s: _recipe(s).update(optimizer={"name": "sgd", "lr": float("inf")}),
    "momentum 5": lambda s: _recipe(s).update(optimizer={"name": "sgd", "lr": 0.1, "momentum": 5}),
    "gamma inf": lambda s: _recipe(s).update(schedule={"name": "multistep", "milestones": [1], "gamma": float("inf")}),
    "weight decay -1": lambda s: _recipe(s).update(optimizer={"name": "sgd", "lr": 0.1, "weight_decay": -1}),
    "crop padding 10^6": lambda s: _recipe(s).update(augment={"crop_padding": 10**6}),
    "cpu inf": lambda s: s.update(resources={"cpu": float("inf")}),
    "gpu -1": lambda s: s.update(resources={"gpu": -1}),
    "unknown dataset": lambda s: s.update(dataset={"name": "cifar1000"}),
    "unknown model": lambda s: s["groups"][0].__setitem__(0, "resnet_9000"),
    "model is a number": lambda s: s["groups"][0].__setitem__(0, 7),
    "unknown method": lambda s: s["methods"].append("dmll"),
    "method name is a list": lambda s: s["methods"].append({"name": ["dml"]}),
    "unknown hyper-parameter": lambda s: _first_method_dict(s).update(temprature=3),
    "temperature 0": lambda s: s["methods"].append({"name": "dml", "label": "t0", "temperature": 0}),
    "temperature -inf": lambda s: s["methods"].append({"name": "kd", "label": "tinf", "temperature": float("-inf")}),
    "negative loss weight": lambda s: s["methods"].append({"name": "dml", "label": "w", "kl_weight": -1}),
    "batch beyond the data": lambda s: _recipe(s).update(batch_size=2_000_000),
    "value net9": lambda s: s.setdefault("table", {}).setdefault("values", ["net1", "net2"]).append("net9"),
    "unknown preset": lambda s: s.update(recipe={"base": "tsb_cifarr"}),
    "preset is a list": lambda s: s.update(recipe={"base": ["tsb_cifar"]}),
    "recipes not a mapping": lambda s: s.update(recipes={"mine": [1, 2]}),
    "unknown top-level key": lambda s: s.update(seed=[0]),
    "name too long": lambda s: s.update(name="x" * 100_000),
    "name with a slash": lambda s: s.update(name="a/b"),
}

# name -> how it breaks the file's text
TEXTUAL = {
    "syntax: unclosed bracket": lambda t: t + "\ngroups: [[cifar_resnet8, cifar_resnet8]\n",
    "syntax: tab indentation": lambda t: t + "\nresources:\n\tcpu: 1\n",
    "duplicate key": lambda t: t + "\nseeds: [0]\n",
    "not a mapping": lambda t: "- just\n- a list\n",
    "not UTF-8": lambda t: None,
    "binary": lambda t: None,
}


def mutations(path: Path):
    text = path.read_text()
    suite = yaml.safe_load(text)
    rng = random.Random(path.name)  # a few structured mutations per suite, the same every run
    for name in rng.sample(sorted(STRUCTURED), 8):
        mutated = copy.deepcopy(suite)
        STRUCTURED[name](mutated)
        yield name, yaml.safe_dump(mutated, sort_keys=False).encode()
    for name in rng.sample(sorted(TEXTUAL), 2):
        if name == "not UTF-8":
            yield name, text.encode("utf-8") + "\nname: caf\u00e9\n".encode("latin-1")
        elif name == "binary":
            yield name, b"\x7fELF\x02\x01\x01\x00" + bytes(range(256))
        else:
            yield name, TEXTUAL[name](text).encode()


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_every_mutation_of_a_shipped_suite_is_short_lines_and_exit_2(path, tmp_path, capsys):
    for name, content in mutations(path):
        mutated = tmp_path / path.name
        mutated.write_bytes(content)
        status = main(["validate", str(mutated), "--results", str(tmp_path / "none")])
        out, err = capsys.readouterr()
        lines = [line for line in err.splitlines() if line.strip()]
        assert status == 2, f"{name}: accepted ({out.strip()})"
        assert lines and all(line.startswith(f"{mutated}: ") for line in lines), f"{name}: {err}"
        assert all(len(line) <= 2000 for line in lines) and "Traceback" not in err, f"{name}: {err[:3000]}"
        assert len(lines) <= 3, f"{name}: one mistake, {len(lines)} lines: {err}"

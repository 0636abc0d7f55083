"""A researcher's own method, network and dataset plug in without a fork: a ``.py`` file a suite names
(``plugins:``), a module given with ``--plugins``, or an installed package's ``okd_harness.*`` entry points.  A
plug-in's source enters the hash of the cells that use it; ``harness list`` says where each entry comes from; a
name clash is one line."""
from __future__ import annotations

import importlib.metadata
import sys
import textwrap

import pytest
import yaml

from tests.helpers import TINY_DATA, TINY_RECIPE, cli

PLUGIN = '''
"""A researcher's own work: a method (Ind with label smoothing) and a network (a ResNet-8 under another name)."""
import timm
import torch.nn.functional as F
from timm.models import register_model

import harness.models  # noqa: F401  (the CIFAR networks it builds on)
from harness.training.method import register_method
from methods.ind import Independent


@register_method("{method}")
class SmoothedInd(Independent):
    """Each network learns from labels smoothed by 0.1."""

    def losses(self, batch, step):
        return {{f"ce/net{{k + 1}}": F.cross_entropy(logits, batch.y, label_smoothing=0.1)
                for k, logits in enumerate(self.peer_logits(batch))}}


@register_model
def {model}(pretrained=False, **kwargs):
    return timm.create_model("cifar_resnet8", **kwargs)
'''


def write_plugin(folder, method="smoothed_ind", model="my_resnet8", name="my_plugin.py"):
    path = folder / name
    path.write_text(PLUGIN.format(method=method, model=model))
    return path


def plugin_suite(folder, plugins, method="smoothed_ind", model="my_resnet8"):
    suite = {"name": "plugged", "dataset": TINY_DATA, "groups": [[model, model]], "methods": [method, "ind"],
             "seeds": [0], "recipe": TINY_RECIPE, "resources": {"cpu": 1}, "plugins": plugins}
    path = folder / "plugged.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def test_the_documented_plugin_trains_through_harness_run(tmp_path, ray_address, capfd):
    """docs/guides/add_method.md's two files, written as a reader copies them: its method, network and dataset train
    through `harness run`, and every record names the plug-in file and its source's hash."""
    from harness.suite.schema import load_suite
    from tests.helpers import ROOT, documented_files, harness_main, records

    files = documented_files(ROOT / "docs" / "guides" / "add_method.md")
    assert set(files) == {"my_work.py", "my_suite.yaml"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    path = tmp_path / "my_suite.yaml"
    suite = load_suite(path)
    mine = next(c for c in suite.cells if c.method == "smooth_labels")
    assert len(mine.plugins) == 1 and mine.plugins[0].startswith(str(tmp_path / "my_work.py") + "@")
    results = tmp_path / "results"
    code, out = harness_main(capfd, "run", path, "--results", results, "--reports", tmp_path / "reports",
                             address=ray_address)
    assert code == 0, out
    final = records(results)
    assert {r["cell"]["method"] for r in final.values()} == {"smooth_labels", "ind"}
    assert all(r["status"] == "ok" and len(r["history"]) == 2 for r in final.values())
    assert final[mine.hash]["cell"]["plugins"] == list(mine.plugins)
    assert {r["cell"]["dataset"]["name"] for r in final.values()} == {"two_blobs"}


def test_a_plugins_source_enters_the_hash_of_the_cells_that_use_it(tmp_path):
    """Editing the plug-in's file gives its cells new hashes; the built-in method's cells of the same suite (on a
    plug-in network) change too, a suite of built-in entries only does not carry a plug-in."""
    from harness.suite.schema import load_suite

    first = tmp_path / "v1"
    first.mkdir()
    write_plugin(first, "smoothed_v", "net_v")
    before = {c.method: c for c in load_suite(plugin_suite(first, ["my_plugin.py"], "smoothed_v", "net_v")).cells}
    (first / "my_plugin.py").write_text((first / "my_plugin.py").read_text() + "\n# a comment: new source\n")
    sys.modules.pop(next(n for n in sys.modules if n.endswith("_my_plugin")), None)
    after = {c.method: c for c in load_suite(plugin_suite(first, ["my_plugin.py"], "smoothed_v", "net_v")).cells}
    assert before["smoothed_v"].hash != after["smoothed_v"].hash and before["ind"].hash != after["ind"].hash
    assert before["smoothed_v"].plugins != after["smoothed_v"].plugins
    # a teacher stage of a plug-in network (KD's `ind` teacher) carries the plug-in as well
    suite = {"name": "kd_plug", "dataset": TINY_DATA, "groups": [["net_v", "net_v"]], "methods": ["kd"],
             "seeds": [0], "recipe": TINY_RECIPE, "resources": {"cpu": 1}, "plugins": ["my_plugin.py"]}
    (first / "kd.yaml").write_text(yaml.safe_dump(suite))
    plan = load_suite(first / "kd.yaml").plan
    teacher = next(c for c in plan.everything if c.label == "teacher")
    assert teacher.method == "ind" and teacher.plugins == after["ind"].plugins


def test_an_installed_packages_entry_points_register_and_harness_list_says_where_from(tmp_path, monkeypatch,
                                                                                      capfd):
    """A package put on the path with its entry-point metadata (as `pip install` leaves it): its method is there
    without any `plugins:` key, trains in process, and `harness list` names its origin."""
    from harness import registry

    package = tmp_path / "site" / "my_okd"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    write_plugin(package, "ep_method", "ep_net", name="methods.py")
    info = tmp_path / "site" / "my_okd-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-okd\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""\
        [okd_harness.methods]
        ep = my_okd.methods
        """))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    monkeypatch.setattr(registry, "_loaded_groups", set())
    from harness.suite.schema import load_suite
    from harness.training.engine import Runtime, Trainer

    suite = {"name": "ep", "dataset": TINY_DATA, "groups": [["ep_net", "ep_net"]], "methods": ["ep_method"],
             "seeds": [0], "recipe": {**TINY_RECIPE, "epochs": 1}, "resources": {"cpu": 1}}
    path = tmp_path / "ep.yaml"
    path.write_text(yaml.safe_dump(suite))
    cell = load_suite(path).cells[0]
    assert cell.plugins and cell.plugins[0].startswith("my_okd.methods@")
    summary = Trainer(cell, Runtime(device="cpu")).run()
    assert summary["epochs"] == 1
    code, out, _ = cli(capfd, "list", "methods")
    line = next(line for line in out.splitlines() if line.startswith("ep_method"))
    assert code == 0 and "plug-in my_okd.methods" in line
    assert "built in" in next(line for line in out.splitlines() if line.startswith("dml "))


def test_a_name_clash_and_a_missing_plugin_are_one_line_each(tmp_path, capfd):
    clash = write_plugin(tmp_path, "dml", "my_resnet8_clash", name="clash.py")  # 'dml' is built in
    path = plugin_suite(tmp_path, [clash.name], "dml", "my_resnet8_clash")
    code, out, err = cli(capfd, "validate", path)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "method 'dml' is registered twice: by methods.dml and by" in err and "rename one of them" in err
    missing = plugin_suite(tmp_path, ["nowhere.py"])
    code, out, err = cli(capfd, "validate", missing)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "plugins: plug-in nowhere.py: no such file" in err
    code, out, err = cli(capfd, "list", "methods", "--plugins", "no_such_module_xyz")
    assert code == 2 and "plug-in 'no_such_module_xyz' cannot be imported" in err


@pytest.fixture(autouse=True)
def _registries_as_they_were():
    """The methods a test's plug-ins registered are forgotten after it (the timm networks stay: names of their own)."""
    from harness.training.method import METHODS, load_methods

    load_methods()
    before = dict(METHODS._entries)
    yield
    METHODS._entries.clear()
    METHODS._entries.update(before)


"""Each kind of mistake in a suite file gives one line naming the file, the key path and what is valid."""
import pytest

from harness.suite.schema import SuiteError, load_suite
from tests.helpers import shipped_suite, tiny_suite_dict


def errors_of(write_suite, suite) -> list[str]:
    path = write_suite(suite)
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    lines = info.value.lines
    assert all(line.startswith(f"{path}: ") for line in lines)
    assert all("\n" not in line for line in lines)
    return lines


def test_valid_suite_expands(write_suite):
    suite = load_suite(write_suite(tiny_suite_dict()))
    assert len(suite.cells) == 4
    assert suite.labels() == ["ind", "dml"]


def test_unknown_top_level_key_suggests(write_suite):
    bad = tiny_suite_dict()
    bad["seed"] = bad.pop("seeds")
    lines = errors_of(write_suite, bad)
    assert any("seed: unknown key (did you mean 'seeds'?)" in l for l in lines)
    assert any("seeds: Field required" in l for l in lines)


def test_unknown_nested_key(write_suite):
    lines = errors_of(write_suite, tiny_suite_dict(evaluation={"epochs": "last"}))
    assert lines == [lines[0]]
    assert "evaluation.epochs: unknown key (did you mean 'epoch'?); valid keys: epoch, aggregate, metric" in lines[0]


def test_unknown_method_name(write_suite):
    lines = errors_of(write_suite, tiny_suite_dict(methods=["ind", "dmll"]))
    assert len(lines) == 1 and "methods[1].name: unknown method 'dmll' (did you mean 'dml'?); valid:" in lines[0]


def test_unknown_method_hparam(write_suite):
    lines = errors_of(write_suite, tiny_suite_dict(methods=[{"name": "dml", "temprature": 3}]))
    assert "methods[0].temprature: unknown key (did you mean 'temperature'?)" in lines[0]


def test_bad_hparam_value(write_suite):
    lines = errors_of(write_suite, tiny_suite_dict(methods=[{"name": "dml", "update": "alternate"}]))
    assert "methods[0].update:" in lines[0] and "'joint' or 'sequential'" in lines[0] and "'alternate'" in lines[0]


def test_unknown_model(write_suite):
    lines = errors_of(write_suite, tiny_suite_dict(groups=[["cifar_resnet8", "cifar_resnet33"]]))
    assert "groups[0][1]: unknown model 'cifar_resnet33' (did you mean" in lines[0]


def test_unknown_dataset(write_suite):
    lines = errors_of(write_suite, tiny_suite_dict(dataset={"name": "fashion_mnsit"}))
    assert "dataset.name: unknown dataset 'fashion_mnsit' (did you mean 'fashion_mnist'?)" in lines[0]


def test_unknown_recipe_preset(write_suite):
    lines = errors_of(write_suite, tiny_suite_dict(recipe="tsb_cifra"))
    assert "recipe.base: unknown recipe 'tsb_cifra' (did you mean 'tsb_cifar'?)" in lines[0]


def test_an_empty_grid_is_one_line_not_a_method_silently_gone(write_suite):
    lines = errors_of(write_suite, tiny_suite_dict(methods=["ind", {"name": "dml", "temperature": {"grid": []}}]))
    assert len(lines) == 1 and "methods[1].temperature: grid: [] sweeps no value" in lines[0]


def test_presets_in_a_loop_are_one_line_even_where_no_cell_uses_them(write_suite):
    suite = {**tiny_suite_dict(), "recipes": {"mine": {"base": "yours"}, "yours": {"base": "mine"},
                                              "fine": {"base": "tsb_cifar", "epochs": 3}}}
    lines = errors_of(write_suite, suite)
    assert len(lines) == 1 and "recipes.mine.base: presets inherit from each other in a loop: mine -> yours -> mine" in lines[0]


def test_bad_recipe_value(write_suite):
    lines = errors_of(write_suite, tiny_suite_dict(recipe={"base": "tsb_cifar", "optimizer": {"lr": "fast"}}))
    assert len(lines) == 1 and "recipe.optimizer.lr:" in lines[0] and "'fast'" in lines[0]


def test_bad_literal_lists_valid_values(write_suite):
    lines = errors_of(write_suite, tiny_suite_dict(evaluation={"aggregate": "average"}))
    assert "evaluation.aggregate:" in lines[0] and "'median'" in lines[0] and "'average'" in lines[0]


def test_group_too_small_for_method(write_suite):
    lines = errors_of(write_suite, tiny_suite_dict(groups=[["cifar_resnet8"]]))
    assert "groups[0]: method 'dml' takes 2..any networks, the group has 1" in lines[0]


def test_group_a_method_cannot_train(write_suite):
    suite = tiny_suite_dict(groups=[["cifar_resnet8", "cifar_resnet14"], ["cifar_resnet8"] * 3],
                            methods=["one", {"name": "clnn", "fanouts": [2]}, {"name": "ffl", "shared_trunk": True}])
    lines = errors_of(write_suite, suite)
    assert any("groups[0]: method 'one' cannot train ['cifar_resnet8', 'cifar_resnet14']: " in l
               and "same architecture" in l for l in lines)
    assert any("groups[0]: method 'ffl' cannot train" in l and "shared_trunk" in l for l in lines)
    assert any("groups[1]: method 'clnn' cannot train" in l and "multiply to the 3 networks" in l for l in lines)
    assert any("groups[1]: method 'ffl' takes 2..2 networks, the group has 3" in l for l in lines)
    assert len(lines) == 5  # one, clnn (mixed) and ffl on groups[0]; clnn (fan-outs) and ffl (size) on groups[1]


def test_table_without_a_place_for_an_axis(write_suite):
    suite = tiny_suite_dict(groups=[["cifar_resnet8", "cifar_resnet8"], ["cifar_resnet14", "cifar_resnet14"]],
                            table={"rows": ["method"], "columns": ["method", "value"]})
    lines = errors_of(write_suite, suite)
    assert any("table: 'method' is in both rows and columns" in l for l in lines)
    assert any("table: the suite has 2 entries of 'group' but the table has no place for them; add 'group'" in l
               for l in lines)
    assert len(lines) == 2


def test_duplicate_labels(write_suite):
    lines = errors_of(write_suite, tiny_suite_dict(methods=["dml", {"name": "dml", "temperature": 3}]))
    assert "label 'dml' is used twice" in lines[0]


def test_unknown_paper_table(write_suite):
    lines = errors_of(write_suite, tiny_suite_dict(paper_table={"name": "tsb_table1_cifar1000"}))
    assert "paper_table.name: unknown paper table 'tsb_table1_cifar1000' (did you mean 'tsb_table1_cifar100'?)" in lines[0]


def test_every_error_at_once(write_suite):
    bad = tiny_suite_dict(methods=["dmll"], groups=[["cifar_resnet33"]], evaluation={"epochs": "last"})
    lines = errors_of(write_suite, bad)
    assert len(lines) == 3


def test_yaml_syntax_error(write_suite):
    lines = errors_of(write_suite, "name: x\ngroups: [[a, b]\n")
    assert len(lines) == 1 and "not valid YAML" in lines[0]


def test_missing_file(tmp_path):
    with pytest.raises(SuiteError) as info:
        load_suite(tmp_path / "nope.yaml")
    assert "no such suite file" in str(info.value)


def test_shipped_suites_validate():
    from pathlib import Path

    for path in sorted(Path(__file__).parent.parent.joinpath("suites").glob("*.yaml")):
        assert shipped_suite(path).cells, path


def test_a_method_may_train_under_its_own_recipe(write_suite):
    """cifar100_same_arch's 'paper recipes' variant: each method under its own paper's recipe."""
    raw = tiny_suite_dict(methods=["ind", {"name": "dml", "recipe": {"base": "quickstart", "epochs": 3}}])
    suite = load_suite(write_suite(raw))
    by_label = {c.label: c for c in suite.cells if c.seed == 0}
    assert by_label["ind"].recipe["epochs"] == 2 and by_label["dml"].recipe["epochs"] == 3
    assert by_label["dml"].recipe["batch_size"] == 64  # the quickstart preset's, not the suite's
    bad = tiny_suite_dict(methods=["ind", {"name": "dml", "recipe": {"base": "tsb_cifr", "epochs": 3}},
                                   {"name": "dml", "label": "d2", "recipe": {"base": "quickstart", "epoch": 3}}])
    with pytest.raises(SuiteError) as info:
        load_suite(write_suite(bad))
    text = "\n".join(info.value.lines)
    assert "methods[1].recipe.base: unknown recipe 'tsb_cifr' (did you mean 'tsb_cifar'?)" in text
    assert "methods[2].recipe.epoch" in text


def test_paper_table_settings_name_this_suites_labels_and_the_tables_methods(write_suite):
    raw = tiny_suite_dict(paper_table={"name": "tsb_table1_cifar100", "methods": {"dmll": "dml", "ind": "indd"},
                                       "value_keys": {"KDCL": {"net1": "top1"}, "*": {"avg": "value"}}})
    with pytest.raises(SuiteError) as info:
        load_suite(write_suite(raw))
    text = "\n".join(info.value.lines)
    assert "paper_table.methods.dmll: not a method label of this suite (did you mean 'dml'?); valid: ind, dml" in text
    assert "paper_table.value_keys.KDCL: not a method label of this suite; valid: ind, dml or '*'" in text
    assert "paper_table.methods.ind: 'indd' is not a method of tsb_table1_cifar100 (did you mean 'ind'?)" in text
    assert "value_keys.*" not in text  # "*" stands for any label
    assert len(info.value.lines) == 3


def test_a_top_level_mistake_does_not_hide_the_method_entries_own(write_suite):
    """Every mistake of a file in one pass (issue 18): a bad seed used to stop validation before the methods."""
    lines = errors_of(write_suite, tiny_suite_dict(seeds=[-1], methods=["ind", {"name": "dml", "temprature": 2}]))
    assert len(lines) == 2, lines
    assert "seeds[0]: Input should be greater than or equal to 0, got -1" in lines[0]
    assert "methods[1].temprature: unknown key (did you mean 'temperature'?)" in lines[1]

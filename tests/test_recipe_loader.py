"""Recipe inheritance in the config loader: ``base:``, deep merge, aliases per file, one-line errors."""

from pathlib import Path

import pytest

from perceptrl import cli
from perceptrl.config import ConfigError, deep_merge, load_config, read_recipe, read_yaml

ROOT = Path(__file__).resolve().parent.parent


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_deep_merge_merges_mappings_and_replaces_the_rest():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 3, "c": {"z": 1}}
    over = {"a": {"y": [3], "w": None}, "c": None}
    assert deep_merge(base, over) == {"a": {"x": 1, "y": [3], "w": None}, "b": 3, "c": None}
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": 3, "c": {"z": 1}}  # inputs untouched


def test_a_chain_of_bases_merges_in_order(tmp_path):
    write(tmp_path / "recipes" / "root.yaml", "rollout:\n  n: 4\n  top_p: 0.9\ntrain:\n  lr: 1.0e-4\n  prompts_per_step: 6\n")
    write(tmp_path / "recipes" / "mid.yaml", "base: root\nrollout:\n  n: 6\nalgorithm:\n  dual_clip_c: 3.0\n")
    child = write(tmp_path / "recipes" / "sub" / "child.yaml",
                  "base: ../mid.yaml\nalgorithm:\n  dual_clip_c: null\ndata:\n  rollout_batch_size: 12\n")
    config = load_config(child)
    assert config.rollout.n == 6 and config.rollout.top_p == 0.9 and config.train.lr == 1e-4
    assert config.algorithm.dual_clip_c is None  # null in a child replaces the base's value
    assert config.data.rollout_batch_size == 12  # an alias in the root, the canonical key in the child
    assert [f.path.name for f in read_recipe(child).chain] == ["root.yaml", "mid.yaml", "child.yaml"]
    assert "base" not in read_yaml(child)
    assert load_config(child, ["rollout.n=2"]).rollout.n == 2  # overrides still win


def test_a_bare_name_is_looked_up_in_the_enclosing_recipes_folder(tmp_path):
    write(tmp_path / "recipes" / "mine.yaml", "rollout:\n  n: 3\n")
    nested = write(tmp_path / "recipes" / "paper" / "x.yaml", "base: mine\n")
    assert load_config(nested).rollout.n == 3
    elsewhere = write(tmp_path / "other" / "y.yaml", "base: papo_g\ntrain:\n  lr: 1.0e-6\n")
    config = load_config(elsewhere)  # not under a recipes/ folder: the shipped recipes/
    assert config.recipe == "papo_g" and config.papo.gamma == 0.02 and config.train.lr == 1e-6


@pytest.mark.parametrize("files,target,message", [
    ({"a.yaml": "base: b\n", "b.yaml": "base: a\n"}, "a.yaml", r"b\.yaml: 'base' makes a cycle: a\.yaml -> b\.yaml -> a\.yaml"),
    ({"a.yaml": "base: a.yaml\n"}, "a.yaml", r"a\.yaml: 'base' makes a cycle"),
    ({"a.yaml": "base: nowhere\n"}, "a.yaml", r"a\.yaml: base recipe 'nowhere' not found"),
    ({"a.yaml": "base: missing.yaml\n"}, "a.yaml", r"a\.yaml: base recipe 'missing\.yaml' not found"),
    ({"a.yaml": "base: [1]\n"}, "a.yaml", r"a\.yaml: 'base' must be a recipe name"),
    ({"a.yaml": "base: b\ntrain:\n  lr: 1.0e-5\n", "b.yaml": "train:\n  learning_rate: 1\n"}, "a.yaml",
     r"b\.yaml: unknown key 'train\.learning_rate'"),
    ({"a.yaml": "base: b\n", "b.yaml": "rollout:\n  n: many\n"}, "a.yaml", r"b\.yaml: rollout\.n: expected an integer"),
    ({"a.yaml": "differs_from_base:\n  rollout.n: why\nrollout:\n  n: 4\n"}, "a.yaml", r"a\.yaml: 'differs_from_base' needs a 'base'"),
    ({"a.yaml": "base: b\ndiffers_from_base:\n  rollout.m: why\n", "b.yaml": ""}, "a.yaml",
     r"a\.yaml: differs_from_base: unknown key 'rollout\.m'"),
    ({"a.yaml": "base: b\ndiffers_from_base:\n  rollout.n: why\n", "b.yaml": ""}, "a.yaml",
     r"a\.yaml: differs_from_base: 'rollout\.n' is not set in this file"),
    ({"a.yaml": "base: b\nrollout:\n  n: 4\ndiffers_from_base:\n  rollout.n: ''\n", "b.yaml": ""}, "a.yaml",
     r"a\.yaml: differs_from_base: 'rollout\.n' needs a reason"),
    ({"a.yaml": "base: b\ndiffers_from_base: [rollout.n]\n", "b.yaml": ""}, "a.yaml",
     r"a\.yaml: 'differs_from_base' must map dotted keys to reasons"),
])
def test_bad_inheritance_is_a_config_error_naming_the_file(tmp_path, files, target, message):
    for name, text in files.items():
        write(tmp_path / "recipes" / name, text)
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "recipes" / target)


def test_reasons_are_read_and_removed(tmp_path):
    write(tmp_path / "recipes" / "b.yaml", "rollout:\n  n: 4\n")
    path = write(tmp_path / "recipes" / "a.yaml",
                 "base: b\nrollout:\n  n: 6\ndiffers_from_base:\n  rollout.n: a bigger group\n")
    source = read_recipe(path)
    assert source.reasons_since("b") == {"rollout.n": "a bigger group"}
    assert "differs_from_base" not in source.raw and load_config(path).rollout.n == 6


def test_cli_reports_a_cycle_in_one_line(tmp_path, capsys):
    write(tmp_path / "recipes" / "a.yaml", "base: b\n")
    write(tmp_path / "recipes" / "b.yaml", "base: a\n")
    code = cli.main(["train", str(tmp_path / "recipes" / "a.yaml"), "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "makes a cycle" in err, err

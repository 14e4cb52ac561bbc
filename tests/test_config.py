import pytest

from perceptrl.config import Config, ConfigError, load_config


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_and_overrides(tmp_path):
    path = write(tmp_path, "train:\n  lr: 1e-4\n  max_steps: 3\nrollout:\n  n: 4\n")
    cfg = load_config(path, ["train.seed=7", "data.families=[count, pope]", "algorithm.dual_clip_c=null"])
    assert isinstance(cfg, Config)
    assert cfg.train.lr == pytest.approx(1e-4)  # YAML 1.1 reads 1e-4 as a string: we coerce it
    assert cfg.train.max_steps == 3 and cfg.train.seed == 7 and cfg.rollout.n == 4
    assert cfg.data.families == ["count", "pope"]
    assert cfg.algorithm.dual_clip_c is None


def test_unknown_key_is_named(tmp_path):
    path = write(tmp_path, "train:\n  learning_rate: 1e-4\n")
    with pytest.raises(ConfigError, match=r"train\.learning_rate"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"rollout\.temprature"):
        load_config(None, ["rollout.temprature=1.0"])


@pytest.mark.parametrize(
    "override, key",
    [("train.max_steps=abc", "train.max_steps"), ("train.progress=3", "train.progress"),
     ("train.lr=fast", "train.lr"), ("data.families=3", "data.families[0]")],
)
def test_wrong_type_is_named(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("[", r"\[").replace("]", r"\]")):
        load_config(None, [override])


@pytest.mark.parametrize(
    "override, message",
    [("train.lr=-1e-3", "train.lr"), ("rollout.n=1", "rollout.n"), ("algorithm.eps_high=0.1", "eps_high"),
     ("algorithm.loss_agg_mode=mean", "loss_agg_mode"), ("rollout.top_p=0", "top_p")],
)
def test_invalid_hyperparameters(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_malformed_yaml_names_file(tmp_path):
    path = write(tmp_path, "train: [unclosed\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_shipped_recipes_load():
    from pathlib import Path

    for path in sorted(Path(__file__).resolve().parent.parent.glob("recipes/*.yaml")):
        load_config(path)


def test_prompts_per_step_is_an_alias_of_rollout_batch_size(tmp_path):
    from perceptrl.config import ConfigError, load_config

    assert load_config(None, ["train.prompts_per_step=12"]).data.rollout_batch_size == 12
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  prompts_per_step: 16\n")
    assert load_config(recipe).data.rollout_batch_size == 16
    assert load_config(recipe, ["data.rollout_batch_size=4"]).data.rollout_batch_size == 4  # an override wins
    recipe.write_text("train:\n  prompts_per_step: 16\ndata:\n  rollout_batch_size: 8\n")
    with pytest.raises(ConfigError, match="prompts_per_step.*another name for 'data.rollout_batch_size'"):
        load_config(recipe)


def test_global_batch_size_must_divide_the_rollout_batch():
    from perceptrl.config import ConfigError, load_config

    assert load_config(None, ["data.rollout_batch_size=12", "train.global_batch_size=4"]).train.global_batch_size == 4
    with pytest.raises(ConfigError, match="global_batch_size \\(5\\) must divide data.rollout_batch_size \\(12\\)"):
        load_config(None, ["data.rollout_batch_size=12", "train.global_batch_size=5"])

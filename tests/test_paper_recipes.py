"""recipes/paper/: the seeds' released runs (ALGORITHMS.md section 13), and ``--dry-run`` on each of them.

Every paper recipe is dry-run (model built on the meta device from the shipped public config, no
weights, no data read); the released values of section 13 are checked key by key; each method's file
differs from its own paper's baseline only in the method's keys; the CLI prints the plan and trains nothing.
"""

import json
from pathlib import Path

import pytest

from perceptrl import cli
from perceptrl.config import ConfigError, load_config, read_recipe
from perceptrl.train.dry_run import SHIPPED_CONFIGS, build_model, format_plan, make_plan, model_shape

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "recipes" / "paper"
FILES = sorted(PAPER.rglob("*.yaml"))


def flat(config) -> dict:
    out = {}

    def walk(tree, prefix=""):
        for key, value in tree.items():
            dotted = f"{prefix}.{key}" if prefix else key
            walk(value, dotted) if isinstance(value, dict) else out.__setitem__(dotted, value)

    walk(config.to_dict())
    return out


def test_the_released_runs_are_all_there():
    names = {str(p.relative_to(PAPER).with_suffix("")) for p in FILES}
    assert {"papo/grpo_3b", "papo/papo_g_3b", "papo/grpo_7b", "papo/papo_g_7b", "papo/dapo_3b", "papo/papo_d_3b",
            "papo/dapo_7b", "papo/papo_d_7b", "noisy_rollout/grpo_7b_geo3k", "noisy_rollout/noisy_rollout_7b_geo3k",
            "noisy_grpo/grpo_3b", "noisy_grpo/noisy_grpo_3b", "dupl/grpo_3b", "dupl/dupl_3b", "dupl/grpo_7b",
            "dupl/dupl_7b"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PAPER)))
def test_every_paper_recipe_dry_runs(path):
    config = load_config(path)
    plan = make_plan(config, "train", str(path))
    text = format_plan(plan)
    size = "3B" if "3b" in path.stem else "7B"
    assert config.model.path == f"Qwen/Qwen2.5-VL-{size}-Instruct"
    assert plan.shape.total_params == {"3B": 3_754_622_976, "7B": 8_292_166_656}[size]
    assert [(e.n_gpus, e.offload) for e in plan.estimates] == [(1, False), (2, False), (2, True), (4, False),
                                                              (4, True), (8, False), (8, True)]
    for est in plan.estimates:
        assert est.peak > 0 and all(v >= 0 for v in est.terms.values())
    peaks = {(e.n_gpus, e.offload): e.peak for e in plan.estimates}
    # Under FSDP2 more GPUs never need more memory per GPU, and offload never more than without. (One GPU
    # can need less than two: one process keeps no float32 master copy and gathers no weights.)
    assert peaks[2, False] > peaks[4, False] > peaks[8, False]
    assert all(peaks[n, True] < peaks[n, False] for n in (2, 4, 8))
    assert "optimizer steps per rollout step" in text and "memory per GPU in GiB" in text
    assert "not a local file" in text  # the authors' dataset names are not local files


# ALGORITHMS.md section 13, key by key: {file glob: {key: value}}.
RELEASED = {
    "papo/*": {"data.rollout_batch_size": 384, "train.global_batch_size": 128, "rollout.n": 5, "rollout.temperature": 1.0,
               "rollout.top_p": 0.99, "data.max_prompt_length": 4096, "rollout.max_new_tokens": 2048,
               "data.min_pixels": 200_704, "data.max_pixels": 1_003_520, "train.lr": 1e-6, "train.weight_decay": 1e-2,
               "train.max_grad_norm": 1.0, "model.freeze_vision_tower": False, "model.gradient_checkpointing": True,
               "model.dtype": "bfloat16", "data.template": "think_boxed"},
    "papo/grpo_*": {"algorithm.kl_beta": 0.01, "algorithm.kl_type": "k3", "papo.gamma": 0.0},
    "papo/papo_g_3b": {"algorithm.kl_beta": 0.01, "papo.gamma": 0.02, "papo.eta1": 0.0, "papo.eta2": 0.0},
    "papo/papo_g_7b": {"algorithm.kl_beta": 0.01, "papo.gamma": 0.02, "papo.eta1": 0.05, "papo.eta2": 0.05},
    "papo/dapo_*": {"algorithm.kl_beta": 0.0, "algorithm.eps_high": 0.28, "filters.dynamic_sampling": True},
    "papo/papo_d_*": {"algorithm.kl_beta": 0.0, "papo.gamma": 0.01, "papo.eta1": 0.03, "papo.eta2": 0.03,
                      "algorithm.eps_high": 0.28, "filters.dynamic_sampling": True},
    "noisy_rollout/*": {"data.rollout_batch_size": 512, "train.global_batch_size": 128, "rollout.n": 12,
                        "rollout.temperature": 1.0, "rollout.top_p": 1.0, "data.max_prompt_length": 2048,
                        "rollout.max_new_tokens": 2048, "data.max_pixels": 1_000_000, "train.lr": 1e-6,
                        "algorithm.kl_beta": 0.0, "algorithm.entropy_coef": 1e-3, "algorithm.dual_clip_c": None,
                        "model.freeze_vision_tower": True, "model.gradient_checkpointing": True},
    "noisy_rollout/noisy_rollout_*": {"rollout.plan": "noisy_rollout", "noisy_rollout.n1": 6, "noisy_rollout.n2": 6,
                                      "noisy_rollout.t_max": 500, "noisy_rollout.s_mid": 40.0},
    "noisy_grpo/*": {"data.rollout_batch_size": 16, "train.global_batch_size": None, "rollout.n": 4,
                     "rollout.temperature": 1.0, "data.max_pixels": 2_359_296, "algorithm.kl_beta": 0.04,
                     "algorithm.kl_clamp": False, "algorithm.dual_clip_c": None, "model.freeze_vision_tower": True,
                     "model.gradient_checkpointing": True, "model.dtype": "bfloat16"},
    "noisy_grpo/noisy_grpo_*": {"rollout.plan": "noise_ladder", "noisy_grpo.levels": [0.0, 0.3, 0.6, 0.9]},
    "dupl/*": {"data.rollout_batch_size": 512, "train.global_batch_size": 128, "rollout.n": 5,
               "rollout.temperature": 1.0, "rollout.top_p": 1.0, "data.max_prompt_length": 2048,
               "rollout.max_new_tokens": 2048, "data.min_pixels": 262_144, "data.max_pixels": 4_194_304,
               "train.lr": 1e-6, "train.weight_decay": 1e-2, "algorithm.kl_beta": 0.0, "model.freeze_vision_tower": False,
               "model.gradient_checkpointing": True, "train.max_steps": 200},
    "dupl/dupl_*": {"rollout.plan": "dupl", "dupl.variant": "released", "dupl.sigma": 0.2},
}


@pytest.mark.parametrize("pattern", sorted(RELEASED))
def test_released_values(pattern):
    paths = sorted(PAPER.glob(pattern + ".yaml"))
    assert paths, pattern
    for path in paths:
        values = flat(load_config(path))
        wrong = {k: (values[k], v) for k, v in RELEASED[pattern].items() if values[k] != v}
        assert not wrong, f"{path.relative_to(PAPER)}: (recipe, released) {wrong}"


# A paper's method file against that paper's baseline: only the method's keys may differ.
PAPER_PAIRS = {
    ("papo/grpo_3b", "papo/papo_g_3b"): {"papo.gamma"},
    ("papo/grpo_7b", "papo/papo_g_7b"): {"papo.gamma", "papo.eta1", "papo.eta2"},
    ("papo/dapo_3b", "papo/papo_d_3b"): {"papo.gamma", "papo.eta1", "papo.eta2"},
    ("papo/dapo_7b", "papo/papo_d_7b"): {"papo.gamma", "papo.eta1", "papo.eta2"},
    ("papo/grpo_3b", "papo/dapo_3b"): {"algorithm.eps_high", "algorithm.kl_beta", "filters.dynamic_sampling",
                                       "filters.round_prompts"},
    ("noisy_rollout/grpo_7b_geo3k", "noisy_rollout/noisy_rollout_7b_geo3k"): {
        "rollout.plan", "noisy_rollout.n1", "noisy_rollout.n2"},
    ("noisy_grpo/grpo_3b", "noisy_grpo/noisy_grpo_3b"): {"rollout.plan", "algorithm.adv_estimator"},
    ("dupl/grpo_3b", "dupl/dupl_3b"): {"rollout.plan", "algorithm.adv_estimator", "dupl.variant", "dupl.sigma",
                                       "dupl.view_per_rollout"},
    ("dupl/grpo_7b", "dupl/dupl_7b"): {"rollout.plan", "algorithm.adv_estimator", "dupl.variant", "dupl.sigma",
                                       "dupl.view_per_rollout"},
    ("dupl/grpo_7b", "dupl/dapo_7b"): {"algorithm.eps_high", "filters.dynamic_sampling"},
    ("dupl/dapo_7b", "dupl/dupl_dapo_7b"): {"rollout.plan", "algorithm.adv_estimator", "dupl.variant", "dupl.sigma",
                                            "dupl.view_per_rollout"},
}


@pytest.mark.parametrize("baseline,method", sorted(PAPER_PAIRS))
def test_paper_method_differs_from_its_paper_baseline_only_in_the_method(baseline, method):
    a, b = flat(load_config(PAPER / f"{baseline}.yaml")), flat(load_config(PAPER / f"{method}.yaml"))
    diff = {k for k in a if a[k] != b[k]} - {"recipe", "train.output_dir"}
    assert diff == PAPER_PAIRS[baseline, method], sorted(diff ^ PAPER_PAIRS[baseline, method])
    assert (PAPER / f"{baseline}.yaml").resolve() in [f.path for f in read_recipe(PAPER / f"{method}.yaml").chain]


def test_shipped_configs_are_the_public_shapes():
    """DESIGN.md "Real shapes": every number of the two shipped configs."""
    for name, text, vision_out in (("Qwen2.5-VL-3B-Instruct", (2048, 36, 16, 2, 11008, 151936, True), 2048),
                                   ("Qwen2.5-VL-7B-Instruct", (3584, 28, 28, 4, 18944, 152064, False), 3584)):
        raw = json.loads((SHIPPED_CONFIGS / name / "config.json").read_text())
        assert (raw["hidden_size"], raw["num_hidden_layers"], raw["num_attention_heads"], raw["num_key_value_heads"],
                raw["intermediate_size"], raw["vocab_size"], raw["tie_word_embeddings"]) == text, name
        v = raw["vision_config"]
        assert (v["depth"], v["hidden_size"], v["patch_size"], v["spatial_merge_size"], v["out_hidden_size"]) == \
            (32, 1280, 14, 2, vision_out), name
        assert v["fullatt_block_indexes"] == [7, 15, 23, 31] and v["window_size"] == 112
        assert (raw["bos_token_id"], raw["eos_token_id"], raw["vision_start_token_id"], raw["vision_end_token_id"],
                raw["vision_token_id"], raw["image_token_id"], raw["video_token_id"]) == \
            (151643, 151645, 151652, 151653, 151654, 151655, 151656)


def test_frozen_vision_tower_and_lora_change_the_trainable_count():
    config = load_config(PAPER / "noisy_rollout" / "noisy_rollout_7b_geo3k.yaml")
    shape = model_shape(build_model(config)[0], config)
    assert shape.vision_params == 676_550_144 and not shape.vision_trainable
    assert shape.trainable_params == 8_292_166_656 - 676_550_144
    lora = load_config(PAPER / "papo" / "papo_g_7b.yaml", ["model.lora.enabled=true", "model.lora.r=64"])
    shape = model_shape(build_model(lora)[0], lora)
    # SCALING.md: r = 64 on q, k, v, o, gate, up, down of 28 layers = 161.5 M adapter parameters
    assert shape.trainable_params == 28 * 64 * (7168 + 4096 + 4096 + 7168 + 3 * 22528)
    assert make_plan(lora).estimates[-1].terms["reference_model"] == 0  # LoRA: the base is the reference


def test_unknown_hub_model_is_a_config_error():
    config = load_config(PAPER / "papo" / "grpo_3b.yaml", ["model.path=Qwen/Qwen9-VL-1T"])
    with pytest.raises(ConfigError, match="model.path: 'Qwen/Qwen9-VL-1T' is not a local model folder.*shipped"):
        make_plan(config)


def test_cli_dry_run_prints_the_plan_and_trains_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["train", str(PAPER / "papo" / "papo_g_7b.yaml"), f"train.output_dir={out}", "--dry-run"])
    text = capsys.readouterr().out
    assert code == 0 and not out.exists()
    assert "optimizer steps per rollout step: 3 (384 / 128" in text and "8,292,166,656 total" in text
    code = cli.main(["sft", str(ROOT / "recipes" / "sft.yaml"), f"train.output_dir={out}", "--dry-run"])
    text = capsys.readouterr().out
    assert code == 0 and not out.exists() and "perceptrl sft --dry-run" in text and "memory per GPU in MiB" in text

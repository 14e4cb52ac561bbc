"""Matched baselines: a method recipe differs from its baseline only in the method's own keys.

Each method file names its baseline (``base: grpo`` or ``base: dapo``) and inherits everything else.
For every pair below, the *loaded* configs are compared key by key: a key that differs must lie in the
method's own section (``papo.*`` for PAPO, ...), be an identity key (the recipe's name and output
folder), or carry a reason in the method file's ``differs_from_base`` mapping. A reason for a key that
does not differ is stale and fails too. So a comparison between the two files changes only what the
method is, plus differences someone wrote down and justified.
"""

from pathlib import Path

import pytest

from perceptrl.config import load_config, read_recipe

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"

# (baseline, method) -> the method's own sections. The first six are the comparisons the papers make;
# the rest are the other inheritances of the shipped recipes.
PAIRS = {
    ("grpo", "papo_g"): ("papo",),
    ("dapo", "papo_d"): ("papo",),
    ("grpo", "noisy_rollout"): ("noisy_rollout",),
    ("grpo", "noisy_grpo"): ("noisy_grpo",),
    ("grpo", "dupl"): ("dupl",),
    ("dapo", "dupl_dapo"): ("dupl",),
    ("grpo", "dapo"): ("filters",),
    ("grpo", "dr_grpo"): (),
    ("noisy_rollout", "papo_noisy_rollout"): ("papo",),
    ("dupl", "vogue"): (),
    ("dupl", "dupl_released"): ("dupl",),
    ("dupl", "dupl_no_u_per"): ("dupl",),
    ("dupl", "dupl_no_u_out"): ("dupl",),
    # token-level perception-aware family and policy-gradient baselines (tests/test_token_recipes.py)
    ("dapo", "vppo"): ("token_signal", "token_select", "token_scale"),
    ("dapo", "pgpo"): ("token_signal", "token_scale"),
    ("grpo", "tor"): ("token_signal", "token_select"),
    ("grpo", "vepo"): ("token_signal", "token_select"),
    ("grpo", "dvrp"): ("papo", "dvrp"),
    ("grpo", "gspo"): ("policy_loss",),
    ("grpo", "cispo"): ("policy_loss",),
    ("grpo", "rloo"): ("policy_loss",),
}
IDENTITY = {"recipe", "train.output_dir"}  # names, not settings


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.update(flatten(value, dotted))
        else:
            out[dotted] = value
    return out


def differences(baseline: str, method: str) -> dict[str, tuple]:
    """Dotted key -> (baseline value, method value) for every key in which the loaded configs differ."""
    a = flatten(load_config(RECIPES / f"{baseline}.yaml").to_dict())
    b = flatten(load_config(RECIPES / f"{method}.yaml").to_dict())
    return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def unexplained(diff: dict, own_sections: tuple, reasons: dict) -> dict:
    return {k: v for k, v in diff.items()
            if k not in IDENTITY and k.split(".")[0] not in own_sections and k not in reasons}


@pytest.mark.parametrize("baseline,method", sorted(PAIRS))
def test_method_differs_from_its_baseline_only_where_it_says_why(baseline, method):
    source = read_recipe(RECIPES / f"{method}.yaml")
    assert (RECIPES / f"{baseline}.yaml").resolve() in [f.path for f in source.chain], \
        f"{method}.yaml does not inherit {baseline}.yaml"
    reasons = source.reasons_since(baseline)
    diff = differences(baseline, method)
    missing = unexplained(diff, PAIRS[baseline, method], reasons)
    assert not missing, (f"{method}.yaml differs from {baseline}.yaml outside its own section without a reason "
                         f"in differs_from_base: {missing}")
    stale = sorted(k for k in reasons if k not in diff)
    assert not stale, f"{method}.yaml gives reasons for keys that do not differ from {baseline}.yaml: {stale}"


def test_the_paper_pairs_differ_in_the_method():
    """The check above is not vacuous: each pair really differs, in the method's section or its pieces."""
    for (baseline, method), own in PAIRS.items():
        diff = differences(baseline, method)
        assert set(diff) - IDENTITY or not own, (baseline, method)
    assert set(differences("grpo", "papo_g")) - IDENTITY == {"papo.gamma"}
    assert set(differences("dapo", "papo_d")) - IDENTITY == {"papo.gamma", "papo.eta1", "papo.eta2"}


def test_an_unexplained_difference_is_caught():
    """The rule on a difference nobody explained: a top-p change in a PAPO-G copy fails the check."""
    diff = differences("grpo", "papo_g")
    diff["rollout.top_p"] = (0.99, 1.0)
    assert unexplained(diff, ("papo",), {}) == {"rollout.top_p": (0.99, 1.0)}
    assert unexplained(diff, ("papo",), {"rollout.top_p": "a reason"}) == {}


def test_every_method_recipe_names_a_base():
    roots = {"grpo", "sft", "warmstart"}  # grpo is the root baseline; sft and warmstart are not RL recipes
    for path in sorted(RECIPES.glob("*.yaml")):
        if path.stem in roots:
            continue
        assert read_recipe(path).chain[0].path == (RECIPES / "grpo.yaml").resolve(), path.name

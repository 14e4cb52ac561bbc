"""Multi-process training: two CPU processes (torchrun, gloo) train exactly as one process does.

The 2-process run splits each step's prompts between the processes (whole groups on each), sums
the loss denominators over them and lets DDP average the gradients (the loss is scaled by the world
size). With batch-invariant sampling (``perceptrl.models.sampling``) both runs sample the same
completions, so after a few steps their parameters agree to float rounding.

Measured on the 2-core CI machine (3 steps of PAPO-G at lr 1e-3 with an entropy bonus, so that the
random-weight tiny model gets a gradient without any reward): max |w_1proc - w_2proc| = 5.0e-6,
while the parameters moved by 3.0e-3. With the global-RNG sampler (``rollout.batch_invariant=false``)
the same comparison gives 6.0e-3: the completions differ. TOLERANCE sits between the two.

FSDP2 (``fully_shard`` through accelerate, gloo on CPU; ``FSDP_ENV``) runs the same comparison:
the update on sharded parameters (reduce-scatter after every micro-batch), generation, the KL
reference, PAPO's masked view and evaluation on weights gathered once per step
(``Distributed.full_weights``). Measured: 3.9e-6 (LoRA, padding micro-batches, clipping: 2.5e-7).
Without the gathering, the processes' unpaired forwards deadlock (the launch timeout fails the test).

DeepSpeed ZeRO-2 and ZeRO-3 (``deepspeed_env``: the repository's zero2.json / zero3.json in fp32,
switched on through the variables ``accelerate launch`` sets; perceptrl switches accelerate's CPU
state to DeepSpeed) run the same comparison on CPU processes, DeepSpeed's own communication over
gloo. The engine clips and steps inside the last backward; ZeRO-3's rollout forwards run on weights
gathered with the engine's hooks off (``sharding.zero3_gathered``). Measured, 3 steps: 5.0e-6
(ZeRO-2) and 3.9e-6 (ZeRO-3), grad norms equal to 2e-7 relative. DeepSpeed compiles a small C++ op
on first use (``deepspeed_shm_comm``, ~50 s on 2 cores, cached in ~/.cache/torch_extensions):
``deepspeed_built`` builds it once, outside the runs' timeout.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from perceptrl.config import ConfigError, load_config
from perceptrl.train.distributed import Distributed
from perceptrl.train.rl import train

ROOT = Path(__file__).resolve().parents[1]

TOLERANCE = 1e-4  # max abs parameter difference, 1 vs 2 processes (measured 5e-6; unsynchronised sampling 6e-3)

# FSDP2 on CPU processes: the variables ``accelerate launch --config_file configs/accelerate/fsdp.yaml``
# sets (perceptrl switches accelerate's CPU state to FSDP, see ``sharding.fsdp_on_cpu``).
FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP"}
FSDP_TIMEOUT = 240  # a run takes ~15 s; a deadlock (unpaired sharded forwards) fails instead of hanging

SETTINGS = [
    "train.prompts_per_step=4", "rollout.n=4", "rollout.max_new_tokens=16", "data.val_per_family=2",
    "train.progress=false", "train.lr=1e-3", "train.num_threads=1",
    # A gradient without rewards: entropy bonus and PAPO's entropy term on the sampled tokens.
    "algorithm.entropy_coef=0.01", "papo.eta1=0.05",
    # 8 rows per process in micro-batches of 6 (6 + 2), 16 rows in one process (6 + 6 + 4).
    "train.micro_batch_size=6",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(nproc: int, out_dir, *overrides: str, env: dict | None = None, timeout: int = 600,
           entry: tuple[str, ...] = ("-m", "perceptrl.cli")) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--master_port={_free_port()}", *entry, "train", "recipes/papo_g.yaml",
           *SETTINGS, f"train.output_dir={out_dir}", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def weights(out_dir) -> dict[str, torch.Tensor]:
    return load_file(str(out_dir / "final" / "model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("two") / "run"
    done = launch(2, out, "train.max_steps=3", "train.save_steps=2")
    return out, done


def one_process(out_dir, *overrides: str):
    """The same run in this process, on one thread as each process of a 2-process run."""
    threads = torch.get_num_threads()
    try:
        return train(load_config("recipes/papo_g.yaml", [*SETTINGS, "train.max_steps=3", f"train.output_dir={out_dir}",
                                                         *overrides]))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    """(output folder, initial weights) of the 1-process run every 2-process layout is compared with."""
    out = tmp_path_factory.mktemp("one")
    return one_process(out / "run").output_dir, weights_at_start(out / "start")


def assert_same_run(one, two, initial, check_grad_norm: bool = True) -> float:
    """Same parameters (to TOLERANCE) and the same global metrics; returns the parameter difference."""
    a, b = weights(one), weights(two)
    assert max_diff(a, initial) > 30 * TOLERANCE  # the runs did train
    diff = max_diff(a, b)
    assert diff <= TOLERANCE
    # metrics logged once, global over both processes: 16 completions per step, same losses
    rows_two = [r for r in read_metrics(two) if "loss" in r]
    rows_one = [r for r in read_metrics(one) if "loss" in r]
    assert [r["num_completions"] for r in rows_two] == [16.0] * 3
    for r1, r2 in zip(rows_one, rows_two, strict=True):
        assert r1["loss"] == pytest.approx(r2["loss"], rel=1e-5, abs=1e-7)
        assert r1["reward"] == pytest.approx(r2["reward"])
        if check_grad_norm:  # the gradient of the whole batch: loss scaling, reduction and clipping
            assert r1["grad_norm"] == pytest.approx(r2["grad_norm"], rel=1e-4)
    return diff


def test_two_processes_match_one(two_process_run, one_process_run):
    two, done = two_process_run
    assert done.stdout.count("held-out greedy accuracy") == 1  # reported once, by the main process
    assert "processes: 2 processes, DDP (gloo)" in done.stdout
    one, initial = one_process_run
    assert_same_run(one, two, initial)


def test_two_process_resume_continues_exactly(two_process_run, tmp_path):
    two, _ = two_process_run
    checkpoint = two / "checkpoint-2"
    assert (checkpoint / "rng_rank1.pt").is_file()  # each process's random states
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(checkpoint, resumed / "checkpoint-2")
    shutil.copy(two / "config.yaml", resumed / "config.yaml")
    launch(2, resumed, "train.max_steps=3", "train.save_steps=2")
    assert max_diff(weights(resumed), weights(two)) == 0.0
    assert [r["step"] for r in read_metrics(resumed) if "loss" in r] == [3]


MINIBATCHES = ["train.prompts_per_step=6", "train.global_batch_size=2", "train.max_steps=2"]
# With SGD (tests/sgd_train.py) a step is lr x gradient, so this compares every optimizer step's gradient.
# (With AdamW the same runs differ by 3.2e-6 after 6 steps: Adam's first step is lr x sign(g), and
# entries of g near zero flip sign with float rounding.)
MINIBATCH_TOLERANCE = 1e-6


def test_two_processes_take_the_same_minibatch_steps_as_one(tmp_path, monkeypatch):
    """6 prompts in 3 mini-batches of 2 (each process holds one prompt of each; one process cuts each
    mini-batch's 8 rows into micro-batches of 6 + 2): every optimizer step sees the same prompts and the
    same global denominators, so the runs agree step by step. lp_old comes from the no-grad pass before
    the first step (ratio exactly 1 there) and PAPO's clip fractions of the later steps are equal.
    Plain SGD (tests/sgd_train.py), so that equal parameters mean equal gradients at every step."""
    from sgd_train import sgd

    two, settings = tmp_path / "two", [*MINIBATCHES, "train.lr=0.1"]  # SGD's steps are ~100x smaller than Adam's
    launch(2, two, *settings, entry=(str(ROOT / "tests" / "sgd_train.py"),))
    monkeypatch.setattr("perceptrl.train.rl.make_optimizer", sgd)
    one = one_process(tmp_path / "one", *settings).output_dir
    rows_one = [r for r in read_metrics(one) if "loss" in r]
    rows_two = [r for r in read_metrics(two) if "loss" in r]
    for r1, r2 in zip(rows_one, rows_two, strict=True):
        assert r1["update/optimizer_steps"] == r2["update/optimizer_steps"] == 3.0
        assert r1["num_completions"] == r2["num_completions"] == 24.0
        assert r1["ratio_mean/first_mb"] == r2["ratio_mean/first_mb"] == 1.0
        for key in ("loss", "ratio_mean/later_mbs", "ppo_kl/later_mbs", "entropy"):
            assert r1[key] == pytest.approx(r2[key], rel=1e-5, abs=1e-7), key
        for key in ("grad_norm", "clip_frac_high/later_mbs", "clip_frac_low/later_mbs"):
            assert r1[key] == pytest.approx(r2[key], rel=1e-4, abs=1e-7), key
    assert rows_one[1]["ppo_kl/later_mbs"] != 0.0  # the later steps did see a moved policy
    moved, diff = max_diff(weights(one), weights_at_start(tmp_path / "start")), max_diff(weights(one), weights(two))
    print(f"1 vs 2 processes, 3 mini-batches x 2 steps: max |w_1proc - w_2proc| = {diff:.2e} (moved {moved:.2e})")
    assert moved > 30 * MINIBATCH_TOLERANCE and diff <= MINIBATCH_TOLERANCE


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp") / "run"
    done = launch(2, out, "train.max_steps=3", "train.save_steps=2", env=FSDP_ENV, timeout=FSDP_TIMEOUT)
    return out, done


def test_fsdp_two_processes_match_one(fsdp_run, one_process_run):
    """PAPO-G under FSDP2: sharded update; generation, KL reference (a frozen copy), masked view on gathered weights."""
    two, done = fsdp_run
    assert done.stdout.count("held-out greedy accuracy") == 1
    assert "processes: 2 processes, FSDP2 (gloo)" in done.stdout  # not a silent fallback to plain CPU processes
    one, initial = one_process_run
    assert_same_run(one, two, initial)
    final = weights(two)
    assert all(t.shape == initial[k].shape for k, t in final.items())  # the full tensors, not a shard


def test_fsdp_checkpoint_is_full_and_resumes_exactly(fsdp_run, tmp_path):
    two, _ = fsdp_run
    checkpoint = two / "checkpoint-2"
    # the files of a 1-process checkpoint: full tensors (not a process's shard), tied weights once,
    # and the state of a plain optimizer over the model's parameters
    from perceptrl.models.loading import load_model_and_processor
    from perceptrl.train.checkpoint import _state_dict_for_safetensors

    model = load_model_and_processor("tiny")[0]
    expected, params = _state_dict_for_safetensors(model), list(model.parameters())
    saved = load_file(str(checkpoint / "model.safetensors"))
    assert saved.keys() == expected.keys() and all(saved[k].shape == expected[k].shape for k in saved)
    optimizer = torch.load(checkpoint / "trainer_state.pt", weights_only=True)["optimizer"]
    assert sorted(optimizer["state"]) == list(range(len(params)))
    assert all(optimizer["state"][i]["exp_avg"].shape == p.shape for i, p in enumerate(params))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(checkpoint, resumed / "checkpoint-2")
    shutil.copy(two / "config.yaml", resumed / "config.yaml")
    launch(2, resumed, "train.max_steps=3", "train.save_steps=2", env=FSDP_ENV, timeout=FSDP_TIMEOUT)
    assert max_diff(weights(resumed), weights(two)) == 0.0
    assert [r["step"] for r in read_metrics(resumed) if "loss" in r] == [3]


def test_fsdp_lora_with_padding_micro_batches_matches_one(tmp_path):
    """LoRA under FSDP2 (reference: the adapter switched off), DAPO's overlong mask leaving a process
    with fewer update rows (zero-weight padding micro-batches), gradient checkpointing, and
    gradient clipping over the sharded gradients (max_grad_norm below the gradient norm)."""
    settings = ["model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8", "filters.overlong_mask=true",
                "rollout.max_new_tokens=24", "model.gradient_checkpointing=true", "train.lr=3e-3",
                "train.max_grad_norm=0.005"]
    two = tmp_path / "two"
    launch(2, two, "train.max_steps=3", *settings, env=FSDP_ENV, timeout=FSDP_TIMEOUT)
    one = one_process(tmp_path / "one", *settings).output_dir
    # Truncated rows are masked: 1 to 3 update rows per step in all (measured: at steps 1 and 3 one
    # process has none and runs a padding micro-batch while the other trains on its rows).
    rows_two = [r for r in read_metrics(two) if "loss" in r]
    assert min(r["update/rows"] for r in rows_two) < 16 and max(r["update/rows"] for r in rows_two) > 0
    assert min(r["grad_norm"] for r in rows_two) > 0.005  # clipped at every step
    for r1, r2 in zip([r for r in read_metrics(one) if "loss" in r], rows_two, strict=True):
        assert r1["grad_norm"] == pytest.approx(r2["grad_norm"], rel=1e-4)
    a, b = weights(one), weights(two)
    initial = weights_at_start(tmp_path / "start")
    assert max_diff(a, initial) > 30 * TOLERANCE
    assert max_diff(a, b) <= TOLERANCE
    adapter = [load_file(str(d / "adapter" / "adapter_model.safetensors")) for d in (one, two)]
    assert max_diff(*adapter) <= TOLERANCE


DEEPSPEED_TIMEOUT = 240  # a run takes ~20 s once DeepSpeed's C++ op is built (deepspeed_built)


@pytest.fixture(scope="module")
def deepspeed_built():
    """DeepSpeed importable, and its CPU communication op compiled (first use: ~50 s on 2 cores, then cached)."""
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed (it is in the test extra: pip install -e '.[test]')")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", "from deepspeed.comm.torch import build_shm_op; build_shm_op()"],
                          env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]


def deepspeed_env(folder, stage: int) -> dict:
    """The variables of ``accelerate launch --config_file configs/accelerate/zero<stage>.yaml``, with the
    repository's zero<stage>.json in fp32 (bf16 off: the comparison with one process is in fp32)."""
    config = json.loads((ROOT / "configs" / "accelerate" / f"zero{stage}.json").read_text())
    config["bf16"] = {"enabled": False}
    # the engine clips: the same threshold as the run's (and as the 1-process run's clip_grad_norm_)
    assert config["gradient_clipping"] == load_config("recipes/papo_g.yaml").train.max_grad_norm
    path = Path(folder) / f"zero{stage}_fp32.json"
    path.write_text(json.dumps(config))
    return {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO3_INIT": "false",
            "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(path)}


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_two_processes_match_one(stage, deepspeed_built, one_process_run, tmp_path):
    """PAPO-G under DeepSpeed ZeRO-2 / ZeRO-3: the engine's partitioned AdamW, its gradient reduction,
    clipping and accumulation boundary; ZeRO-3: partitioned parameters, generation, KL reference,
    masked view and the main process's evaluation on gathered weights, final model gathered."""
    two = tmp_path / "run"
    done = launch(2, two, "train.max_steps=3", "train.save_steps=0", env=deepspeed_env(tmp_path, stage),
                  timeout=DEEPSPEED_TIMEOUT)
    assert f"processes: 2 processes, DeepSpeed ZeRO-{stage} (gloo)" in done.stdout  # not a silent DDP fallback
    assert done.stdout.count("held-out greedy accuracy") == 1
    one, initial = one_process_run
    assert_same_run(one, two, initial)  # grad_norm too: the engine's global norm, to 1e-4 relative
    final = weights(two)
    assert all(t.shape == initial[k].shape and t.dtype == initial[k].dtype for k, t in final.items())


def test_deepspeed_zero3_init_is_refused(deepspeed_built, tmp_path):
    """zero3_init_flag (accelerate's default for ZeRO-3 when ACCELERATE_DEEPSPEED_ZERO3_INIT is unset) would
    have transformers build the model partitioned: refused with a config error before the model is built."""
    env = deepspeed_env(tmp_path, 3)
    del env["ACCELERATE_DEEPSPEED_ZERO3_INIT"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "perceptrl.cli", "train", "recipes/papo_g.yaml", *SETTINGS, f"train.output_dir={tmp_path / 'run'}"]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, capture_output=True, text=True,
                          timeout=DEEPSPEED_TIMEOUT, check=False)
    assert done.returncode != 0
    assert "config error: DeepSpeed zero3_init_flag: true is not supported" in done.stderr


def weights_at_start(out_dir) -> dict[str, torch.Tensor]:
    """The tiny model's initial weights, saved the way a run saves its final model."""
    from perceptrl.models.loading import load_model_and_processor, save_pretrained

    model, processor = load_model_and_processor("tiny")
    save_pretrained(model, processor, out_dir / "final")
    return weights(out_dir)


def read_metrics(out_dir) -> list[dict]:
    import json

    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_prompts_per_step_must_divide_by_world_size():
    dist = Distributed()
    dist.check_divisible(3)  # one process: anything goes
    dist.world_size = 2
    with pytest.raises(ConfigError, match="divisible by the number of processes"):
        dist.check_divisible(3)
    dist.check_divisible(4)


def test_sharded_backends_refuse_update_forwards_that_differ_between_processes():
    dist = Distributed()
    dist.world_size, dist.fsdp = 2, True
    dist.check(load_config("recipes/papo_g.yaml", ["train.prompts_per_step=4"]))
    for recipe, overrides, match in [("papo_g", ["rollout.engine=vllm"], "rollout.engine"),
                                     ("papo_g", ["papo.recompute_masked=true"], "recompute_masked"),
                                     ("dupl", [], "use_u_per")]:  # the paper variant
        config = load_config(f"recipes/{recipe}.yaml", overrides)
        with pytest.raises(ConfigError, match=match):
            dist.check(config)
    dist.fsdp = False  # DDP runs them
    dist.check(load_config("recipes/papo_g.yaml", ["papo.recompute_masked=true"]))


def test_single_process_wrapper_is_inert():
    dist = Distributed()
    assert not dist.enabled and dist.is_main and dist.device is None and dist.describe() == "1 process"
    with dist.full_weights():
        pass
    assert dist.all_reduce_sum(2.5) == 2.5 and dist.all_reduce_max(3) == 3
    assert dist.gather_objects({"a": 1}) == [{"a": 1}]
    assert dist.reduce_metrics({"reward": 0.5}) == {"reward": 0.5}
    assert dist.gather_rng_states() is None and dist.rng_writer(None) is None


def test_metrics_merge_over_processes(monkeypatch):
    dist = Distributed()
    dist.world_size = 2
    parts = [{"reward": 1.0, "num_completions": 6.0, "response_length/max": 9.0, "loss": 0.3},
             {"reward": 0.0, "num_completions": 2.0, "response_length/max": 12.0, "loss": 0.3, "dupl/u_per": 0.1}]
    monkeypatch.setattr(dist, "gather_objects", lambda obj: parts)
    merged = dist.reduce_metrics(parts[0])
    assert merged["reward"] == pytest.approx(0.75)  # weighted by completions
    assert merged["num_completions"] == 8.0 and merged["response_length/max"] == 12.0
    assert merged["loss"] == pytest.approx(0.3) and merged["dupl/u_per"] == pytest.approx(0.1)


def test_idle_micro_batches_change_nothing(tiny):
    """A process with fewer update rows runs zero-weight micro-batches: its gradient is unchanged."""
    import copy

    from perceptrl.config import DataConfig
    from perceptrl.data.sources import build_source
    from perceptrl.models.policy import Policy
    from perceptrl.rewards import get_template
    from perceptrl.train.rollout import GenSpec, collect_rollout
    from perceptrl.train.terms import entropy_bonus_term, surrogate_term
    from perceptrl.train.update import UpdateSettings, run_update

    model, processor = tiny
    source = build_source(DataConfig(image_size=56, val_per_family=1), 0)
    samples = [source.train_sample(i) for i in range(2)]
    rollout = collect_rollout(Policy(model, processor), samples, [GenSpec("clean", 3)], get_template("boxed"), 8,
                              1.0, 1.0, seed_of=lambda p, name: 100 * p + len(name), row_seeds=True)
    rollout.advantages = torch.linspace(-1, 1, len(rollout))
    settings = UpdateSettings("token_mean", micro_batch_size=4, max_grad_norm=1.0, max_len=8, entropy_grad=True,
                              terms=[surrogate_term(0.2, 0.2, 3.0), entropy_bonus_term(0.01)])

    def update(dist):
        policy = Policy(copy.deepcopy(model), processor)
        optimizer = torch.optim.AdamW(policy.model.parameters(), lr=1e-2)
        metrics = run_update(policy, optimizer, rollout, settings, dist)
        return dict(policy.model.named_parameters()), metrics

    plain, plain_metrics = update(None)
    padded = Distributed()
    padded.micro_batches = lambda n: n + 2  # as if another process had two more micro-batches
    idle, idle_metrics = update(padded)
    assert plain_metrics["grad_norm"] > 0 and idle_metrics["grad_norm"] == plain_metrics["grad_norm"]
    assert all(torch.equal(plain[k], idle[k]) for k in plain)

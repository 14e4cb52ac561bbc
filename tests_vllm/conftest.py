"""The vLLM engine on CPU (``make test-vllm``, in ``.venv-vllm``). Kept outside ``tests/``: the main
environment has no vLLM, and ``make test`` never collects these.

A process holds one live vLLM engine (starting one closes the previous: ``VLLMEngine.close``), so
an engine fixture is module-scoped and no test uses an engine after starting another."""

import copy
import os

# vLLM reads these when an engine starts: engine core in this process (the engine passes tensors),
# a 1 GiB KV cache, its log lines from warnings up.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("PERCEPTRL_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def warm():
    """The shipped warm start (trained: varied answers that end, vision tokens never likely)."""
    from perceptrl.config import ModelConfig
    from perceptrl.models.loading import load_policy

    return load_policy(ModelConfig(path="warmstart"))


@pytest.fixture(scope="session")
def samples():
    """Six prompts of the built-in suite (two families), 112 px images (no resize: same pixels in both)."""
    from perceptrl.config import load_config
    from perceptrl.data.sources import build_source

    config = load_config("recipes/grpo.yaml", ["data.families=[count,arith]", "data.image_size=112"])
    source = build_source(config.data, 0)
    return [source.train_sample(i) for i in range(6)]


@pytest.fixture
def copy_policy(warm):
    def make():
        from perceptrl.models.policy import Policy

        return Policy(copy.deepcopy(warm.model), warm.processor)

    return make

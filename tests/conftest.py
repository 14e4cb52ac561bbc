import os

import pytest
import torch

# Two cores: keep torch from oversubscribing when pytest runs beside other work.
torch.set_num_threads(int(os.environ.get("PERCEPTRL_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def tiny():
    """A fresh tiny Qwen2.5-VL and its processor (built once per test session)."""
    from perceptrl.models.tiny import build_tiny

    model, processor = build_tiny(seed=0)
    model.eval()
    return model, processor


@pytest.fixture(scope="session")
def tiny_policy(tiny):
    from perceptrl.models.policy import Policy

    model, processor = tiny
    return Policy(model, processor)


@pytest.fixture
def rgb_images():
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((56, 56 + 28 * i, 3)) * 255).astype("uint8")) for i in range(3)]

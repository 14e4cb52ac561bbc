"""A dataset in the EasyR1 convention (paths and embedded bytes, one and two images) trains."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from perceptrl.config import load_config
from perceptrl.train.rl import train


def png_bytes(seed):
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray((rng.random((56, 56, 3)) * 255).astype("uint8")).save(buffer, format="PNG")
    return buffer.getvalue()


def write_jsonl(folder):
    (folder / "images").mkdir(parents=True)
    rows = []
    for i in range(4):
        names = []
        for k in range(1 + i % 2):  # one and two images per row
            name = f"images/{i}_{k}.png"
            (folder / name).write_bytes(png_bytes(10 * i + k))
            names.append(name)
        rows.append({"images": names, "problem": f"<image>How many shapes? ({i})", "answer": str(i), "answer_type": "integer"})
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_parquet(folder):
    datasets = pytest.importorskip("datasets")
    rows = {"images": [[{"bytes": png_bytes(i), "path": None}] * (1 + i % 2) for i in range(4)],
            "problem": [f"What is {i} plus 1?" for i in range(4)], "answer": [str(i + 1) for i in range(4)]}
    features = datasets.Features({"images": datasets.Sequence(datasets.Image()), "problem": datasets.Value("string"),
                                  "answer": datasets.Value("string")})
    path = folder / "train.parquet"
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return path


@pytest.mark.parametrize("writer", [write_jsonl, write_parquet])
def test_easyr1_dataset_trains_two_steps(tmp_path, writer):
    data = writer(tmp_path / "data")
    config = load_config("recipes/grpo.yaml", [
        f"data.train_files={data}", f"data.val_files={data}", f"train.output_dir={tmp_path / 'run'}",
        "train.max_steps=2", "train.prompts_per_step=2", "rollout.n=4", "rollout.max_new_tokens=8",
        "data.val_per_family=4", "train.progress=false", "train.save_final=false", "train.lr=1e-3",
    ])
    result = train(config)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in steps)
    assert "accuracy" in result.after

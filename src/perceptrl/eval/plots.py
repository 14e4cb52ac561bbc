"""Plots of a comparison (matplotlib, Agg backend: no display needed). Each function takes the
report data of :mod:`perceptrl.eval.compare_report` and a path, writes one PNG and returns its path
(or None when there is nothing to draw)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def color_of(data: dict, recipe: str) -> str:
    return COLORS[data["recipes"].index(recipe) % len(COLORS)] if recipe in data["recipes"] else "#333333"


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average that ignores NaN (window 1 = unchanged)."""
    if window <= 1 or values.size == 0:
        return values
    out = np.full_like(values, np.nan, dtype=float)
    for i in range(values.size):
        chunk = values[max(0, i - window + 1): i + 1]
        chunk = chunk[np.isfinite(chunk)]
        if chunk.size:
            out[i] = chunk.mean()
    return out


def _series(data: dict, recipe: str, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Steps and a ``[seeds, steps]`` array (NaN where a seed did not log the key)."""
    curves = data["curves"].get(recipe, {})
    runs = [c for c in curves.values() if any(key in row for row in c)]
    if not runs:
        return None
    steps = sorted({row["step"] for c in runs for row in c if key in row})
    index = {s: i for i, s in enumerate(steps)}
    arr = np.full((len(runs), len(steps)), np.nan)
    for r, c in enumerate(runs):
        for row in c:
            if key in row and row[key] is not None:
                arr[r, index[row["step"]]] = row[key]
    return np.asarray(steps), arr


def _band(ax, data: dict, recipe: str, key: str, window: int) -> bool:
    found = _series(data, recipe, key)
    if found is None:
        return False
    steps, arr = found
    arr = np.stack([smooth(row, window) for row in arr])
    with np.errstate(all="ignore"):
        mean = np.nanmean(arr, axis=0)
        low, high = np.nanmin(arr, axis=0), np.nanmax(arr, axis=0)
    color = color_of(data, recipe)
    ax.plot(steps, mean, color=color, label=f"{recipe} (n={arr.shape[0]})", lw=1.6)
    if arr.shape[0] > 1:
        ax.fill_between(steps, low, high, color=color, alpha=0.18, lw=0)
    return True


def _window(data: dict) -> int:
    steps = max((len(c) for curves in data["curves"].values() for c in curves.values()), default=1)
    return max(1, min(10, steps // 10))


def plot_curves(data: dict, path: str | Path) -> Path | None:
    """Training reward, training accuracy and (when logged) held-out accuracy against the step:
    the mean over seeds, and a band from the lowest to the highest seed."""
    panels = [("reward", "train reward (rollouts)"), ("accuracy", "train accuracy (rollouts)")]
    if any(_series(data, r, "eval/accuracy") is not None and _series(data, r, "eval/accuracy")[0].size > 2
           for r in data["recipes"]):
        panels.append(("eval/accuracy", "held-out greedy accuracy"))
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    window = _window(data)
    drawn = False
    for ax, (key, title) in zip(axes[0], panels):
        for recipe in data["recipes"]:
            drawn |= _band(ax, data, recipe, key, 1 if key.startswith("eval/") else window)
        ax.set_title(title + (f", moving avg {window}" if window > 1 and not key.startswith("eval/") else ""),
                     fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("training curves: mean over seeds, band = min..max over seeds", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return _save(fig, path, plt) if drawn else _close(fig, plt)


def plot_families(data: dict, path: str | Path) -> Path | None:
    """Held-out accuracy per family after training: one bar per recipe, 95% CI over seeds; the
    starting model's accuracy as a black tick."""
    groups = data["groups"]
    if not groups:
        return None
    plt = _plt()
    recipes = data["recipes"]
    fig, ax = plt.subplots(figsize=(min(13.0, max(7.0, 0.3 * len(groups) * max(1, len(recipes)))), 4.4))
    width = 0.8 / max(1, len(recipes))
    x = np.arange(len(groups))
    for i, recipe in enumerate(recipes):
        rows = data["table"].get(recipe)
        if not rows:
            continue
        means = np.array([rows[g]["mean"] if g in rows else np.nan for g in groups])
        half = np.array([(rows[g].get("half_width") or 0.0) if g in rows else 0.0 for g in groups])
        ax.bar(x - 0.4 + width * (i + 0.5), means, width, yerr=half, capsize=2, color=color_of(data, recipe),
               label=recipe, alpha=0.9)
    before = data.get("before", {})
    for j, g in enumerate(groups):
        if g in before and before[g] is not None:
            ax.hlines(before[g], x[j] - 0.42, x[j] + 0.42, colors="black", lw=1.2)
    ax.set_xticks(x)
    ax.set_xticklabels([g.replace("family/", "") for g in groups], rotation=20, fontsize=8)
    ax.set_ylabel("held-out greedy accuracy")
    ax.set_title("after training, per family (bars: mean, 95% CI over seeds; black line: starting model)",
                 fontsize=10)
    ax.legend(fontsize=8, ncol=min(5, len(recipes)))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path, plt)


def plot_differences(data: dict, path: str | Path) -> Path | None:
    """Paired difference to the baseline with its 95% CI, per group (a forest plot)."""
    diffs = data["differences"]
    if not diffs:
        return None
    groups = data["groups"]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 0.35 * len(groups) * max(1, len(diffs)) + 1.5))
    y, ticks, labels = 0.0, [], []
    for recipe, rows in diffs.items():
        for g in groups:
            d = rows.get(g)
            if d is None:
                continue
            low, high = d.get("low"), d.get("high")
            ax.plot([d["mean"]], [y], "o", color=color_of(data, recipe), ms=4)
            if low is not None and high is not None:
                ax.hlines(y, low, high, color=color_of(data, recipe), lw=1.6)
            ticks.append(y)
            labels.append(f"{recipe}: {g.replace('family/', '')}")
            y += 1
        y += 0.5  # a gap between recipes
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"accuracy minus {data['baseline']} (paired over seeds, 95% CI)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path, plt)


def plot_signals(data: dict, path: str | Path, keys: list[str] | None = None) -> Path | None:
    """The method signals over training (perception KL, entropies, u_per, Kalman gain, noise
    strength, ...): one panel per key, a line per recipe that logs it."""
    keys = keys or [k for k in data["signal_keys"] if not _constant(data, k)]
    if not keys:
        return None
    plt = _plt()
    cols = 3
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.0 * rows), squeeze=False)
    window = _window(data)
    for ax, key in zip(axes.flat, keys):
        for recipe in data["recipes"]:
            _band(ax, data, recipe, key, window)
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(f"method signals (mean over seeds, band min..max, moving avg {window}; constant ones omitted)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.25 / (3.0 * rows)))
    return _save(fig, path, plt)


def _constant(data: dict, key: str) -> bool:
    """A signal that never changes (e.g. a fixed noise ladder, a clip fraction that stays 0)."""
    values = {round(row[key], 9) for curves in data["curves"].values() for c in curves.values() for row in c
              if key in row}
    return len(values) <= 1


def _save(fig, path, plt) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _close(fig, plt) -> None:
    plt.close(fig)
    return None

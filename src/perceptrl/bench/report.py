"""Render a benchmark report: a matplotlib PNG and Markdown tables."""

from __future__ import annotations

from pathlib import Path

from perceptrl.bench.suite import PHASES

TARGETS = {  # recipe -> most step time relative to GRPO (issue 6)
    "papo_g_nokl": 1.25,
    "dupl_released": 1.3,
    "dupl_released_noisy": 1.3,
    "noisy_rollout": 1.05,
    "dupl": 2.1,
}


def _fmt(x, digits: int = 3) -> str:
    return "-" if x is None or x != x else f"{x:.{digits}f}"


def _spread(stats: dict) -> str:
    """``median [min-max]`` of a ratio summary, two decimals ("-" where missing)."""
    return f"{_fmt(stats.get('median'), 2)} [{_fmt(stats.get('min'), 2)}-{_fmt(stats.get('max'), 2)}]"


def plot(report: dict, path: Path, clock: str = "cpu") -> Path | None:
    """Stacked step-time split per recipe (one panel per size) and the scaling curves."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    recipe_sizes = list(report.get("recipes", {}))
    scaling_sizes = list(report.get("scaling", {}))
    axes_names = sorted({a for s in scaling_sizes for a in report["scaling"][s]})
    if not recipe_sizes and not axes_names:
        return None
    # Row 1: the step split of every recipe, one panel per size; row 2: one panel per scaling axis.
    n_rows = int(bool(recipe_sizes)) + int(bool(axes_names))
    n_cols = max(len(recipe_sizes), len(axes_names), 1)
    fig, grid = plt.subplots(n_rows, n_cols, figsize=(6.5 * n_cols, 5.0 * n_rows), squeeze=False)
    axes = list(grid[0][: len(recipe_sizes)]) + list(grid[-1][: len(axes_names)])
    for row in grid:
        for ax in row:
            if ax not in axes:
                ax.set_visible(False)
    seconds = "CPU seconds" if clock == "cpu" else "seconds"
    colors = plt.get_cmap("tab10")
    for i, size in enumerate(recipe_sizes):
        ax = axes[i]
        rows = report["recipes"][size]
        names = list(rows)
        bottom = [0.0] * len(names)
        labels = [label for label, _ in PHASES] + ["other"]
        for j, label in enumerate(labels):
            values = [rows[n]["split_seconds"][clock].get(label, 0.0) for n in names]
            ax.bar(names, values, bottom=bottom, label=label, color=colors(j % 10))
            bottom = [b + v for b, v in zip(bottom, values)]
        params = rows[names[0]].get("parameters") or 0
        case = rows[names[0]]["case"]
        ax.set_title(f"{size} ({params / 1e6:.1f} M params), {case['prompts']}x{case['completions']}x{case['tokens']}")
        ax.set_ylabel(f"{seconds} per step")
        ax.tick_params(axis="x", rotation=60)
        if i == len(recipe_sizes) - 1:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    for k, axis in enumerate(axes_names):
        ax = axes[len(recipe_sizes) + k]
        for m, size in enumerate(scaling_sizes):
            data = report["scaling"][size].get(axis)
            if not data:
                continue
            key = "cpu_seconds_per_step" if clock == "cpu" else "seconds_per_step"
            xs = [p["value"] for p in data["points"]]
            ys = [p[key] for p in data["points"]]
            ax.plot(xs, ys, "o-", color=colors(m), label=size)
            ax.plot(xs, [ys[0] * x / xs[0] for x in xs], ":", color=colors(m), label=f"{size}, linear")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(axis.replace("_", " "))
        ax.set_ylabel(f"{seconds} per step (GRPO)")
        ax.set_xticks(xs)
        ax.set_xticklabels([str(x) for x in xs])
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(report: dict) -> str:
    """Tables: recipes (time split, ratio to GRPO, memory), speed changes, scaling."""
    out: list[str] = []
    meta = report.get("meta", {})
    if meta:
        out.append(f"Command: `{meta.get('command', '')}`; {meta.get('repeats')} repeats, "
                   f"{meta.get('measured_steps')} measured steps each after {meta.get('warmup')} warm-up; "
                   f"torch threads {meta.get('threads')}; load average during the run "
                   f"{meta.get('load_min', float('nan')):.1f}-{meta.get('load_max', float('nan')):.1f} on "
                   f"{meta.get('cpus')} CPUs.\n")
    for size, rows in report.get("recipes", {}).items():
        first = next(iter(rows.values()))
        c = first["case"]
        out.append(f"**Recipes, {size} model ({(first.get('parameters') or 0) / 1e6:.2f} M parameters), "
                   f"{c['prompts']} prompts x {c['completions']} completions x {c['tokens']} tokens, "
                   f"{c['image_size']} px images.** CPU seconds per step (wall in brackets); ratio = recipe / GRPO "
                   f"in the same repeat, median [min-max].\n")
        out.append("| recipe | s/step CPU (wall) | ratio CPU | ratio wall | gen | reward | scoring | upd fwd | upd bwd | optim | tok/s CPU | peak RSS MB | target |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for name, row in rows.items():
            sp = row["split_seconds"]["cpu"]
            r = row.get("ratio_to_grpo", {})
            rc, rw = r.get("cpu", {}), r.get("wall", {})
            scoring = sum(sp.get(k, 0.0) for k in ("scoring: reference", "scoring: old", "scoring: extra views"))
            target = TARGETS.get(name)
            verdict = "-" if target is None or not rc else (
                f"<= {target}: {'met' if rc['median'] <= target else 'not met'}")
            out.append(
                f"| {name} | {_fmt(row['cpu_seconds_per_step']['median'])} ({_fmt(row['seconds_per_step']['median'])}) "
                f"| {_spread(rc)} | {_spread(rw)} "
                f"| {_fmt(sp['generation'])} | {_fmt(sp['reward'])} | {_fmt(scoring)} | {_fmt(sp['update: forward'])} "
                f"| {_fmt(sp['update: backward'])} | {_fmt(sp['update: optimizer'])} "
                f"| {_fmt(row['generated_tokens_per_cpu_second'], 0)} | {_fmt(row['peak_rss_mb'], 0)} | {verdict} |"
            )
        out.append("")
        for name, row in rows.items():
            same = row.get("ratio_to_same_sampling")
            if same:
                out.append(f"- {name} over {same['base']} (GRPO sampling as it does), CPU: {_spread(same['cpu'])}")
        if any(row.get("ratio_to_same_sampling") for row in rows.values()):
            out.append("")
    for size, rows in report.get("speedups", {}).items():
        out.append(f"**Speed changes, {size} model, GRPO.** Step time with the change undone (or the setting "
                   f"named), over the default (> 1: the change saves time), median [min-max] over repeats.\n")
        out.append("| variant | s/step CPU (wall) | ratio CPU | ratio wall | generation CPU s | update fwd+bwd CPU s |")
        out.append("|---|---|---|---|---|---|")
        for name, row in rows.items():
            sp = row["split_seconds"]["cpu"]
            r = row.get("ratio_to_default", {})
            out.append(
                f"| {name} | {_fmt(row['cpu_seconds_per_step']['median'])} ({_fmt(row['seconds_per_step']['median'])}) "
                f"| {_spread(r.get('cpu', {}))} | {_spread(r.get('wall', {}))} "
                f"| {_fmt(sp['generation'])} | {_fmt(sp['update: forward'] + sp['update: backward'])} |"
            )
        out.append("")
    for size, axes in report.get("scaling", {}).items():
        out.append(f"**Scaling, {size} model, GRPO.** CPU seconds per step along each axis; growth = time factor "
                   f"from the first to the last point against the axis factor, and the log-log slope (1 = linear).\n")
        out.append("| axis | points (value: CPU s/step) | time factor / axis factor | slope | no worse than linear |")
        out.append("|---|---|---|---|---|")
        for axis, data in axes.items():
            pts = ", ".join(f"{p['value']}: {_fmt(p['cpu_seconds_per_step'])}" for p in data["points"])
            g = data.get("cpu", {})
            out.append(f"| {axis} | {pts} | {_fmt(g.get('time_factor'), 2)} / {_fmt(data.get('axis_factor'), 0)} "
                       f"| {_fmt(g.get('loglog_slope'), 2)} | {g.get('no_worse_than_linear', '-')} |")
        out.append("")
    return "\n".join(out)

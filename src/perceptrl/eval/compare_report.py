"""The report of ``perceptrl compare``: numbers (``compare.json``), ``report.md`` and a
self-contained ``report.html`` (plots embedded as base64 PNG).

:func:`build_report_data` turns the finished runs into plain data (means and 95% t intervals over
seeds, paired differences to the baseline, compact training curves, method-signal summaries);
:func:`write_report` writes the files; :func:`render_table` is the console table.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

from perceptrl.eval.report import to_json_safe
from perceptrl.eval.stats import mean_ci, paired_difference

# Keys of metrics.jsonl kept in the curves (besides every method signal).
CURVE_KEYS = ("reward", "accuracy", "format_rate", "entropy", "kl_ref", "clip_frac_high", "grad_norm",
              "response_length/mean", "time/step")
# Signals shared by every recipe that explain a collapse or a stall (ALGORITHMS.md section 4).
COMMON_SIGNALS = ("entropy", "kl_ref", "clip_frac_high", "grad_norm", "response_length/mean")
SIGNAL_PREFIXES = ("papo/", "noisy_rollout/", "noisy_grpo/", "dupl/", "filter/", "dapo/")


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))


def _groups(records: list[dict]) -> list[str]:
    """``accuracy`` first, then vision-dependent / text-only, then the families."""
    keys: set[str] = set()
    for r in records:
        keys |= {k[len("accuracy/"):] for k in r["after"] if k.startswith("accuracy/")}
    fams = sorted(k for k in keys if k.startswith("family/"))
    rest = [k for k in ("vision_dependent", "text_only") if k in keys]
    return ["accuracy", *rest, *fams]


def _value(report: dict, group: str) -> float | None:
    v = report.get("accuracy" if group == "accuracy" else f"accuracy/{group}")
    return float(v) if _finite(v) else None


def _ci_dict(values: dict) -> dict | None:
    if not values:
        return None
    ci = mean_ci(list(values.values()))
    d = ci.to_dict()
    d["values"] = values
    return d


def build_report_data(records: list[dict], recipes: list[str], seeds: list[int], baseline: str,
                      overrides: list[str], recipe_overrides: dict, missing: list[str], errors: dict,
                      wall_time_s: float, title: str | None = None, notes: list[str] | None = None,
                      tuning: dict | None = None) -> dict:
    by_recipe: dict[str, dict[int, dict]] = {r: {} for r in recipes}
    for rec in records:
        by_recipe.setdefault(rec["recipe"], {})[int(rec["seed"])] = rec
    groups = _groups(records)

    table: dict[str, dict] = {}
    for recipe, runs in by_recipe.items():
        rows = {}
        for g in groups:
            vals = {s: _value(rec["after"], g) for s, rec in runs.items()}
            vals = {s: v for s, v in vals.items() if v is not None}
            if vals:
                rows[g] = _ci_dict(vals)
        fmt = {s: rec["after"].get("format_rate") for s, rec in runs.items() if _finite(rec["after"].get("format_rate"))}
        if fmt:
            rows["format_rate"] = _ci_dict(fmt)
        if rows:
            table[recipe] = rows

    # The starting model (same for every run when they share model.path): mean of the "before" evals.
    before: dict[str, float] = {}
    for g in groups:
        vals = [_value(rec["before"], g) for rec in records]
        vals = [v for v in vals if v is not None]
        if vals:
            before[g] = sum(vals) / len(vals)

    differences: dict[str, dict] = {}
    base_runs = by_recipe.get(baseline, {})
    for recipe, runs in by_recipe.items():
        if recipe == baseline or not runs or not base_runs:
            continue
        rows = {}
        for g in groups:
            a = {s: _value(rec["after"], g) for s, rec in runs.items()}
            b = {s: _value(rec["after"], g) for s, rec in base_runs.items()}
            a = {s: v for s, v in a.items() if v is not None}
            b = {s: v for s, v in b.items() if v is not None}
            if set(a) & set(b):
                rows[g] = paired_difference(a, b).to_dict()
        if rows:
            differences[recipe] = rows

    signal_keys: list[str] = []
    for rec in records:
        for row in rec.get("history", []):
            for k in row:
                if (k.startswith(SIGNAL_PREFIXES) or k in COMMON_SIGNALS) and k not in signal_keys \
                        and _finite(row[k]):
                    signal_keys.append(k)
    signal_keys = sorted(signal_keys, key=lambda k: (k in COMMON_SIGNALS, k))
    curves: dict[str, dict[str, list]] = {}
    for recipe, runs in by_recipe.items():
        curves[recipe] = {}
        for seed, rec in sorted(runs.items()):
            keep = set(CURVE_KEYS) | set(signal_keys)
            rows = []
            for row in rec.get("history", []):
                if "step" not in row:
                    continue
                slim = {k: v for k, v in row.items() if (k in keep or k == "eval/accuracy") and _finite(v)}
                if row["step"] == 0:
                    continue  # the evaluation before training
                if slim:
                    rows.append({"step": int(row["step"]), **slim})
            curves[recipe][str(seed)] = rows

    signals = {recipe: _signal_summary(curves[recipe], signal_keys) for recipe in curves}
    timing = {}
    for recipe, runs in by_recipe.items():
        per_step = [rec.get("time_per_step_s") for rec in runs.values() if _finite(rec.get("time_per_step_s"))]
        wall = [rec.get("wall_time_s") for rec in runs.values() if _finite(rec.get("wall_time_s"))]
        if per_step:
            timing[recipe] = {"time_per_step_s": sum(per_step) / len(per_step),
                              "wall_time_s": sum(wall) / max(1, len(wall)),
                              "steps": max(int(rec.get("max_steps", 0)) for rec in runs.values()),
                              "lr": sorted({rec.get("lr") for rec in runs.values()})}
    probe = {}
    for recipe, runs in by_recipe.items():
        found = {s: rec["probe"] for s, rec in runs.items() if rec.get("probe")}
        if found:
            keys = sorted({k for p in found.values() for k in p})
            probe[recipe] = {k: _ci_dict({s: p[k] for s, p in found.items() if _finite(p.get(k))}) for k in keys}

    return {
        "kind": "perceptrl.compare", "schema_version": 1, "title": title or "perceptrl compare",
        "recipes": recipes, "seeds": seeds, "baseline": baseline, "overrides": overrides,
        "recipe_overrides": recipe_overrides, "groups": groups, "table": table, "before": before,
        "differences": differences, "signal_keys": signal_keys, "signals": signals, "timing": timing,
        "probe": probe, "curves": curves, "missing": missing, "errors": errors, "notes": notes or [],
        "n_runs": len(records), "wall_time_s": wall_time_s, "tuning": tuning, "claims": check_claims(by_recipe),
    }


# The papers' claims (ALGORITHMS.md section 12) as paired comparisons: (a, b, group, claim).
CLAIMS = (
    ("papo_g", "grpo", "accuracy", "PAPO above GRPO (arXiv 2507.06448)"),
    ("papo_g", "grpo", "vision_dependent", "PAPO above GRPO on vision-dependent families"),
    ("noisy_rollout", "grpo", "accuracy", "NoisyRollout above GRPO (arXiv 2504.13055)"),
    ("dupl", "grpo", "accuracy", "DUPL above GRPO (arXiv 2510.01444)"),
    ("dupl", "noisy_rollout", "accuracy", "DUPL above NoisyRollout (arXiv 2510.01444)"),
    ("noisy_grpo", "grpo", "accuracy", "NoisyGRPO above GRPO (arXiv 2510.21122)"),
    ("papo_d", "dapo", "accuracy", "PAPO-D above DAPO (arXiv 2507.06448)"),
    ("dupl_dapo", "dapo", "accuracy", "DUPL+DAPO above DAPO (arXiv 2510.01444)"),
    ("dupl_released", "grpo", "accuracy", "DUPL as released (ruiiu/DUPL) above GRPO"),
    ("dupl", "dupl_no_u_per", "accuracy", "DUPL above its ablation without u_per (arXiv 2510.01444)"),
    ("dupl", "dupl_no_u_out", "accuracy", "DUPL above its ablation without u_out (arXiv 2510.01444)"),
)


def verdict(d: dict) -> str:
    """How a claimed positive difference fared: its sign and whether the 95% CI excludes 0."""
    if d.get("low") is None:
        return "held (one seed, no interval)" if d["mean"] > 0 else "did not hold (one seed, no interval)"
    if d["low"] > 0:
        return "held (CI above 0)"
    if d["high"] < 0:
        return "reversed (CI below 0)"
    return "positive, not significant (CI includes 0)" if d["mean"] > 0 else "not seen (mean <= 0, CI includes 0)"


def check_claims(by_recipe: dict[str, dict[int, dict]]) -> list[dict]:
    """Each claim whose two recipes both ran: paired difference over common seeds and a verdict;
    for PAPO also the gap "gain on vision-dependent minus gain on text-only" (the papers: gains are
    largest where perception matters)."""
    out = []

    def vals(recipe: str, group: str) -> dict:
        runs = by_recipe.get(recipe, {})
        found = {s: _value(rec["after"], group) for s, rec in runs.items()}
        return {s: v for s, v in found.items() if v is not None}

    for a, b, group, claim in CLAIMS:
        va, vb = vals(a, group), vals(b, group)
        if not set(va) & set(vb):
            continue
        d = paired_difference(va, vb).to_dict()
        out.append({"claim": claim, "a": a, "b": b, "group": group, "difference": d, "verdict": verdict(d)})
    va, vb = vals("papo_g", "vision_dependent"), vals("grpo", "vision_dependent")
    ta, tb = vals("papo_g", "text_only"), vals("grpo", "text_only")
    seeds = set(va) & set(vb) & set(ta) & set(tb)
    if seeds:
        gap = {s: (va[s] - vb[s]) - (ta[s] - tb[s]) for s in seeds}
        d = paired_difference(gap, {s: 0.0 for s in seeds}).to_dict()
        out.append({"claim": "PAPO's gain larger on vision-dependent than on text-only families", "a": "papo_g",
                    "b": "grpo", "group": "vision_dependent - text_only", "difference": d, "verdict": verdict(d)})
    return out


def _signal_summary(curves: dict[str, list], keys: list[str]) -> dict[str, dict]:
    """Per key: mean over seeds of the first and last quarter of training, and the maximum."""
    out = {}
    for key in keys:
        first, last, peak = [], [], []
        for rows in curves.values():
            vals = [row[key] for row in rows if key in row]
            if not vals:
                continue
            q = max(1, len(vals) // 4)
            first.append(sum(vals[:q]) / q)
            last.append(sum(vals[-q:]) / q)
            peak.append(max(vals))
        if first:
            out[key] = {"first_quarter": sum(first) / len(first), "last_quarter": sum(last) / len(last),
                        "max": max(peak)}
    return out


# ------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------


def fmt_ci(d: dict | None, digits: int = 3) -> str:
    if not d:
        return "-"
    if d.get("half_width") is None:
        return f"{d['mean']:.{digits}f}"
    return f"{d['mean']:.{digits}f} ± {d['half_width']:.{digits}f}"


def fmt_diff(d: dict | None) -> str:
    if not d:
        return "-"
    sign = f"{d['mean']:+.3f}"
    if d.get("low") is None:
        return f"{sign} (n=1)"
    star = "*" if d.get("significant") else ""
    return f"{sign} [{d['low']:+.3f}, {d['high']:+.3f}]{star}"


def _short(group: str) -> str:
    return group.replace("family/", "").replace("vision_dependent", "vision-dep").replace("text_only", "text-only")


def table_rows(data: dict) -> tuple[list[str], list[list[str]]]:
    header = ["method", "n", *[_short(g) for g in data["groups"]]]
    rows = []
    if data["before"]:
        rows.append(["(start)", "-", *[f"{data['before'][g]:.3f}" if g in data["before"] else "-"
                                       for g in data["groups"]]])
    for recipe in data["recipes"]:
        t = data["table"].get(recipe)
        if not t:
            rows.append([recipe, "0", *["-"] * len(data["groups"])])
            continue
        n = t["accuracy"]["n"] if "accuracy" in t else 0
        rows.append([recipe, str(n), *[fmt_ci(t.get(g)) for g in data["groups"]]])
    return header, rows


def diff_rows(data: dict) -> tuple[list[str], list[list[str]]]:
    header = ["method", *[_short(g) for g in data["groups"]]]
    rows = [[recipe, *[fmt_diff(rows.get(g)) for g in data["groups"]]] for recipe, rows in data["differences"].items()]
    return header, rows


def render_table(data: dict) -> str:
    """Plain-text table for the console."""
    header, rows = table_rows(data)
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))] if rows else \
        [len(h) for h in header]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    out = ["held-out greedy accuracy after training (mean ± 95% CI half-width over seeds)",
           line(header), line(["-" * w for w in widths]), *[line(r) for r in rows]]
    if data["differences"]:
        dh, drows = diff_rows(data)
        out += ["", f"paired difference to {data['baseline']} over matched seeds [95% CI], * = CI excludes 0"]
        out += [f"  {r[0]}: accuracy {r[1]}" + (f", vision-dep {r[2]}" if len(r) > 2 and "vision" in dh[2] else "")
                for r in drows]
    return "\n".join(out)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _signal_rows(data: dict) -> tuple[list[str], list[list[str]]]:
    header = ["signal", *data["recipes"]]
    rows = []
    for key in data["signal_keys"]:
        cells = []
        for recipe in data["recipes"]:
            s = data["signals"].get(recipe, {}).get(key)
            cells.append("-" if not s else f"{s['first_quarter']:.3g} → {s['last_quarter']:.3g} (max {s['max']:.3g})")
        rows.append([key, *cells])
    return header, rows


def _timing_rows(data: dict) -> tuple[list[str], list[list[str]]]:
    header = ["method", "steps", "lr", "s/step (mean)", "wall s/run (mean)"]
    rows = []
    for recipe in data["recipes"]:
        t = data["timing"].get(recipe)
        if t:
            rows.append([recipe, str(t["steps"]), ", ".join(f"{x:g}" for x in t["lr"] if x is not None),
                         f"{t['time_per_step_s']:.2f}", f"{t['wall_time_s']:.0f}"])
    return header, rows


def _probe_rows(data: dict) -> tuple[list[str], list[list[str]]] | None:
    if not data["probe"]:
        return None
    keys = sorted({k for p in data["probe"].values() for k in p})
    header = ["method", *keys]
    rows = [[r, *[fmt_ci(data["probe"].get(r, {}).get(k)) for k in keys]] for r in data["recipes"] if r in data["probe"]]
    return header, rows


def sections(data: dict) -> list[tuple[str, str, Any]]:
    """The report as ``(kind, title, content)``: kind is text | table | image."""
    out: list[tuple[str, str, Any]] = []
    seeds = ", ".join(map(str, data["seeds"]))
    intro = (f"{len(data['recipes'])} recipes x seeds {seeds}: {data['n_runs']} finished runs. "
             f"Shared overrides: `{' '.join(data['overrides']) or '(none)'}`.")
    if data["recipe_overrides"]:
        intro += " Per-recipe overrides: " + "; ".join(
            f"{r}: `{' '.join(o)}`" for r, o in data["recipe_overrides"].items()) + "."
    out.append(("text", "", intro))
    for note in data["notes"]:
        out.append(("text", "", note))
    if data["missing"]:
        out.append(("text", "", "**Missing runs** (not finished): " + ", ".join(data["missing"]) + "."))
    out.append(("table", "Held-out greedy accuracy after training",
                (*table_rows(data), "Mean ± half-width of the 95% Student-t interval over seeds (no interval "
                 "with one seed). `(start)` is the model before RL. Same fixed test set for every run.")))
    if data["differences"]:
        out.append(("table", f"Paired difference to {data['baseline']}",
                    (*diff_rows(data), "Method minus baseline over matched seeds (same seed: same data order and "
                     "sampling seeds), paired-t 95% interval; `*` marks an interval that excludes 0.")))
    if data.get("claims"):
        rows = [[c["claim"], f"{c['a']} - {c['b']}", c["group"], fmt_diff(c["difference"]), c["verdict"]]
                for c in data["claims"]]
        out.append(("table", "The papers' claims, checked here", (["claim", "difference", "on", "mean [95% CI]",
                    "verdict"], rows, "Paired over matched seeds. A miniature: a 0.6 M-parameter model on the "
                    "built-in suite, so a claim that does not hold here says nothing about 3B/7B models; it says "
                    "what this budget and scale can show.")))
    out.append(("image", "Training curves", "curves.png"))
    out.append(("image", "Per-family accuracy", "families.png"))
    if data["differences"]:
        out.append(("image", "Differences to the baseline", "differences.png"))
    if data["signal_keys"]:
        out.append(("table", "Method signals", (*_signal_rows(data), "Mean over seeds of the first and last "
                    "quarter of training, and the largest value logged by any seed.")))
        out.append(("image", "Method signals over training", "signals.png"))
    probe = _probe_rows(data)
    if probe:
        out.append(("table", "Perception probe (final models)", (*probe, "Greedy accuracy on the original, "
                    "masked (PAPO mask) and blank images; a model that uses the image loses accuracy without it.")))
    tuning = data.get("tuning")
    if tuning:
        header, rows = tuning_rows(tuning, data["recipes"])
        metric = tuning.get("metric", "accuracy")
        scored = "greedy accuracy" if metric == "accuracy" else f"{metric} at T = 1"
        where = "the tuning split (held-out items not in the test set)" if tuning.get("split") == "tune" else "the test set"
        out.append(("table", "Learning-rate tuning", (header, rows,
                    f"Same tuning budget for every method: each learning rate once, seed {tuning['seed']} (not a "
                    f"comparison seed), {tuning['steps'] or 'the full'} steps; {scored} on {where}; the best "
                    "is used for every seed above. An ablation takes the rate chosen for its method (\"as\").")))
    if data["timing"]:
        out.append(("table", "Budget and time", (*_timing_rows(data), "Wall-clock on a shared machine: "
                    "times depend on the load of other processes.")))
    return out


def tuning_rows(tuning: dict, recipes: list[str]) -> tuple[list[str], list[list[str]]]:
    """The tuning table: each recipe's score at each learning rate and the rate chosen (an ablation's
    rate "as" its method's)."""
    lrs = [f"{x:g}" for x in tuning["lrs"]]
    rows = []
    for recipe in recipes:
        scores = tuning["results"].get(recipe, {})
        chosen = tuning["chosen"].get(recipe)
        pick = "-" if chosen is None else f"{chosen['lr']:g}" + (f" (as {chosen['from']})" if chosen.get("from") else "")
        rows.append([recipe, *("-" if scores.get(lr) is None else f"{scores[lr]:.3f}" for lr in lrs), pick])
    return ["method", *[f"lr {lr}" for lr in lrs], "chosen"], rows


def render_markdown(data: dict) -> str:
    lines = [f"# {data['title']}", ""]
    for kind, title, content in sections(data):
        if title:
            lines += [f"## {title}", ""]
        if kind == "text":
            lines += [content, ""]
        elif kind == "table":
            header, rows, caption = content
            lines += [md_table(header, rows), "", caption, ""]
        elif kind == "image":
            lines += [f"![{title}]({content})", ""]
    return "\n".join(lines)


def _md_inline(text: str) -> str:
    """Escape, then the two inline marks the report uses: `code` and **bold**."""
    import re

    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)


def render_html(data: dict, folder: Path) -> str:
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'>",
             f"<title>{html.escape(data['title'])}</title><style>",
             "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}",
             "table{border-collapse:collapse;margin:.5em 0;font-size:.85em}",
             "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}td:first-child{text-align:left}",
             "th{background:#f3f3f3}img{max-width:100%}.cap{color:#666;font-size:.85em}",
             "</style></head><body>", f"<h1>{html.escape(data['title'])}</h1>"]
    for kind, title, content in sections(data):
        if title:
            parts.append(f"<h2>{html.escape(title)}</h2>")
        if kind == "text":
            parts.append(f"<p>{_md_inline(content)}</p>")
        elif kind == "table":
            header, rows, caption = content
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows]
            parts.append(f"</table><p class='cap'>{_md_inline(caption)}</p>")
        elif kind == "image":
            path = folder / content
            if path.is_file():
                b64 = base64.b64encode(path.read_bytes()).decode("ascii")
                parts.append(f"<img alt='{html.escape(title)}' src='data:image/png;base64,{b64}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(data: dict, output_dir: str | Path) -> dict[str, Path]:
    """``compare.json``, the PNGs, ``report.md`` and ``report.html`` in ``output_dir``."""
    from perceptrl.eval import plots

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "compare.json"}
    paths["json"].write_text(json.dumps(to_json_safe(data), separators=(",", ":")))
    for name, fn in (("curves", plots.plot_curves), ("families", plots.plot_families),
                     ("differences", plots.plot_differences), ("signals", plots.plot_signals)):
        target = out / f"{name}.png"
        if target.exists():
            target.unlink()  # never leave a stale plot of an earlier report
        made = fn(data, target) if data["n_runs"] else None
        if made:
            paths[name] = made
    paths["md"] = out / "report.md"
    paths["md"].write_text(render_markdown(data))
    paths["html"] = out / "report.html"
    paths["html"].write_text(render_html(data, out))
    return paths


def load_report_data(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())

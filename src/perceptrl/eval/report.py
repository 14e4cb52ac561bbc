"""Writing an evaluation: ``eval.json`` (the report), ``eval.md`` (tables), ``predictions.jsonl``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["render_markdown", "to_json_safe", "write_outputs"]


def to_json_safe(value: Any) -> Any:
    """Replace NaN and infinities by None (strict JSON), recursively; tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return to_json_safe(value.item())
    return value


def _f(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)
    return f"{x:.{digits}f}"


def _ci(pair: Any) -> str:
    if not pair or pair[0] is None or pair[1] is None:
        return ""
    return f" [{pair[0]:.3f}, {pair[1]:.3f}]"


def _signed_ci(value: Any, pair: Any) -> str:
    if value is None:
        return "–"
    text = f"{value:+.3f}"
    if pair and pair[0] is not None and pair[1] is not None:
        text += f" [{pair[0]:+.3f}, {pair[1]:+.3f}]"
    return text


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _data_line(data: dict[str, Any]) -> str:
    if data.get("source") == "files":
        files = ", ".join(f"`{f}`" for f in data.get("files", []))
        cap = f"; at most {data['n_per_family']} per family" if data.get("n_per_family") else ""
        return f"files {files}{cap}"
    return (f"built-in suite v{data.get('suite_version')}: {', '.join(data.get('families', []))}; difficulty "
            f"{data.get('difficulty')}; {data.get('image_size')} px; {data.get('n_per_family')} per family")


def render_markdown(report: dict[str, Any]) -> str:
    """The report's tables as Markdown."""
    st = report["settings"]
    k = st["k"]
    conf = int(round(100 * st.get("confidence", 0.95)))
    model = report.get("model", {})
    data = report.get("data", {})
    lines = [f"# perceptrl eval: `{model.get('path', '?')}`", ""]
    if data:
        lines.append(f"- data: {_data_line(data)}; {report['n_samples']} items; template `{data.get('template')}`")
    sampling = f"{k} samples per prompt at temperature {st.get('temperature')}, top-p {st.get('top_p')}" if k else "no sampling"
    lines.append(f"- greedy decoding and {sampling}; max {st.get('max_new_tokens')} new tokens; seed {st['seed']}")
    lines.append("")

    groups = report["groups"]
    pass_ks = st.get("pass_ks") or []
    header = ["group", "n", f"greedy acc [{conf}% CI]", "format"]
    if k:
        header += [f"avg@{k} [{conf}% CI]"] + [f"pass@{j}" for j in pass_ks]
    rows = []
    for name, g in groups.items():
        gr = g["greedy"]
        row = [name, str(g["n"]), f"{gr['accuracy']:.3f}{_ci(gr['ci'])}", _f(gr["format_rate"])]
        if k and g.get("sampled"):
            s = g["sampled"]
            row += [f"{s[f'avg@{k}']:.3f}{_ci(s.get(f'avg@{k}_ci'))}"] + [_f(s[f"pass@{j}"]) for j in pass_ks]
        rows.append(row)
    lines += ["## Accuracy", ""] + _table(header, rows) + [""]
    lines.append(f"Greedy accuracy intervals are Wilson score intervals over items; avg@{k} intervals are t "
                 f"intervals over items; pass@j is the unbiased estimator 1 - C(n-c, j)/C(n, j) with n = {k}."
                 if k else "Greedy accuracy intervals are Wilson score intervals over items.")
    lines.append("")

    if any(g.get("probe") for g in groups.values()):
        mv = st.get("mask_view") or {}
        lines += ["## Perception probe (greedy)", "",
                  f"Same prompts with PAPO's masked image (`mask_patches`, p = {mv.get('p')}, {mv.get('patch')}-px "
                  f"patches, black, seeded per item) and with a blank image (grey level {st.get('blank_fill')}). "
                  "Drop = clean accuracy minus probe accuracy (paired over items, "
                  f"{conf}% t interval); answer changed = share of items whose extracted answer changes; completion changed = share "
                  "whose completion text changes at all. A model that ignores the image shows 0 drop and 0 "
                  "changes; `text_only` is the control.", ""]
        header = ["group", "n", "clean", "masked", "blank", "drop (masked)", "drop (blank)",
                  "answer changed (masked / blank)", "completion changed (masked / blank)"]
        rows = []
        for name, g in groups.items():
            p = g.get("probe")
            if not p:
                continue
            rows.append([name, str(g["n"]), _f(p["clean"]), _f(p.get("masked")), _f(p.get("blank")),
                         _signed_ci(p.get("drop_masked"), p.get("drop_masked_ci")),
                         _signed_ci(p.get("drop_blank"), p.get("drop_blank_ci")),
                         f"{_f(p.get('changed_masked'))} / {_f(p.get('changed_blank'))}",
                         f"{_f(p.get('completion_changed_masked'))} / {_f(p.get('completion_changed_blank'))}"])
        lines += _table(header, rows) + [""]

    pope = report.get("pope")
    if pope:
        lines += ["## POPE (greedy)", "", "Positive class \"yes\"; an answer that is neither yes nor no counts as "
                  "wrong and as not-yes (column `unanswered`).", ""]
        header = ["mode", "n", "accuracy", "precision", "recall", "F1", "yes-ratio", "unanswered"]
        rows = [[mode, str(s["n"]), _f(s["accuracy"]), _f(s["precision"]), _f(s["recall"]), _f(s["f1"]),
                 _f(s["yes_ratio"]), str(s["unanswered"])] for mode, s in pope.items()]
        lines += _table(header, rows) + [""]

    timing = report.get("timing") or {}
    if timing:
        lines.append("Time: " + ", ".join(f"{k} {v:.1f} s" for k, v in timing.items()))
        lines.append("")
    return "\n".join(lines)


def write_outputs(output_dir: str | Path, report: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Path]:
    """Write ``eval.json``, ``eval.md`` and ``predictions.jsonl`` into ``output_dir``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    safe = to_json_safe(report)
    paths = {"json": out / "eval.json", "markdown": out / "eval.md", "predictions": out / "predictions.jsonl"}
    paths["json"].write_text(json.dumps(safe, indent=2, allow_nan=False) + "\n")
    paths["markdown"].write_text(render_markdown(safe))
    with open(paths["predictions"], "w") as handle:
        for rec in records:
            handle.write(json.dumps(to_json_safe(rec), ensure_ascii=False, allow_nan=False) + "\n")
    return paths

"""The results as a printed table, a JSON file and a PNG chart."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.measure import Measurement

COLOURS = {"met": "#2e7d32", "MISSED": "#c62828", "info": "#78909c"}


def fmt(value: float | None, unit: str = "") -> str:
    if value is None or not math.isfinite(value):
        return "—"
    if unit == "rows":
        return f"{value:,.0f}"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    return f"{text} {unit}".strip()


def table(measurements: list[Measurement]) -> str:
    header = ("#", "measurement", "ours", "baseline", "ratio", "target", "status")
    rows = [header]
    for i, m in enumerate(measurements, 1):
        rows.append((str(i), m.title, fmt(m.ours, m.unit), fmt(m.baseline, m.unit),
                     f"{m.ratio:.3f}" if m.ratio is not None else "—", m.target_text,
                     m.status))
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(measurements: list[Measurement]) -> str:
    lines = ["| Measurement | Ours | Baseline | Ratio | Target | |", "|---|---:|---:|---:|---:|---|"]
    for m in measurements:
        status = {"met": "met", "MISSED": "**missed**", "info": "info"}.get(m.status, m.note or m.status)
        lines.append(
            f"| {m.title} | {fmt(m.ours, m.unit)} | {fmt(m.baseline, m.unit)} |"
            f" {f'{m.ratio:.3f}' if m.ratio is not None else '—'} | {m.target_text} | {status} |"
        )
    return "\n".join(lines)


def write_json(path: Path, measurements: list[Measurement], meta: dict[str, Any]) -> None:
    payload = {**meta, "measurements": [m.as_dict() for m in measurements]}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def write_chart(path: Path, measurements: list[Measurement], subtitle: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in measurements if m.ratio is not None and math.isfinite(m.ratio)]
    labels = [short_label(m) for m in shown]
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(shown) + 1.6))
    y = list(range(len(shown)))[::-1]
    ratios = [max(m.ratio, 1e-3) for m in shown]
    ax.barh(y, ratios, color=[COLOURS.get(m.status, "#78909c") for m in shown], height=0.6)
    for yi, m, r in zip(y, shown, ratios):
        if m.target is not None:
            ax.plot([m.target, m.target], [yi - 0.38, yi + 0.38], color="black", linewidth=2)
        label = f"{m.ratio:.3f}" + (f"  (target {m.target_text})" if m.target is not None else "")
        ax.text(max(r, m.target or 0) * 1.06, yi, label, va="center", fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xscale("log")
    top = max(ratios + [m.target or 0 for m in shown])
    ax.set_xlim(min(ratios + [m.target or 1 for m in shown]) / 2, top * 6)
    ax.axvline(1.0, color="#9e9e9e", linewidth=0.8, linestyle="--")
    ax.set_xlabel("ratio, ours ÷ baseline (log scale; black tick = target; green met, red missed,"
                  " grey info)")
    ax.set_title(f"airflow-vectorize benchmark — {subtitle}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def short_label(m: Measurement) -> str:
    return {
        "import_vs_floor": "import, no index ÷ INSERT…SELECT floor",
        "import_vs_pg_vectorize": "import with HNSW ÷ pg_vectorize way",
        "import_vs_airflow": "import, no index ÷ PostgresHook.insert_rows",
        "reimport_10_vs_naive": "re-import 10 % ÷ naive upsert",
        "reimport_10_per_row_vs_initial": "re-import 10 %, per row ÷ initial",
        "reimport_10_rebuild_vs_incremental": "re-import 10 %, rebuild ÷ keep index",
        "reimport_100_vs_initial": "re-import 100 % ÷ initial import",
        "reimport_100_vs_naive": "re-import 100 % ÷ naive upsert",
        "generate_vs_encode": "generation rows/s ÷ model.encode",
        "search_vs_raw_sql": "search p50 ÷ raw SQL p50",
        "search_connection_share": "raw SQL, new conn ÷ open conn",
        "search_recall": "search recall@10 vs exact",
        "memory_import_4x": "import peak RSS, 4× ÷ 1×",
        "memory_generate_4x": "generation peak RSS, 4× ÷ 1×",
    }.get(m.key, m.key)


def load(path: Path) -> tuple[list[Measurement], dict[str, Any]]:
    """The measurements and metadata of a JSON file written by ``write_json``."""
    payload = json.loads(Path(path).read_text())
    fields = set(Measurement.__dataclass_fields__)
    measurements = [Measurement(**{k: v for k, v in m.items() if k in fields})
                    for m in payload.pop("measurements")]
    return measurements, payload


if __name__ == "__main__":  # python -m bench.report [bench/latest.json]: the README's results table
    import sys

    found, _ = load(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "latest.json"))
    print(markdown_table(found))

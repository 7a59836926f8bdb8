"""Sweep bookkeeping: a Hydra callback that writes the sweep's table when the multirun ends.

Every cell's run directory holds status.json (done / failed + error), metrics.json and
.hydra/overrides.yaml; the table has one row per cell: its overrides, its metrics and its status.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml
from hydra.experimental.callback import Callback


def collect(sweep_dir: Path) -> pd.DataFrame:
    import json

    rows = []
    for status_file in sorted(sweep_dir.glob("*/status.json")):
        cell = status_file.parent
        row = {"cell": cell.name}
        overrides = cell / ".hydra" / "overrides.yaml"
        if overrides.exists():
            for item in yaml.safe_load(overrides.read_text()) or []:
                key, _, value = item.partition("=")
                if key.lstrip("+~") not in ("sweep", "group", "output_root", "logger", "debug"):
                    row[key.lstrip("+~")] = value
        status = json.loads(status_file.read_text())
        row["status"] = status.get("status")
        row["error"] = " ".join((status.get("error") or "").split())[:300]
        if (cell / "metrics.json").exists():
            row.update(json.loads((cell / "metrics.json").read_text()))
        rows.append(row)
    return pd.DataFrame(rows)


QUALITY = ("adherence", "psnr", "ssim", "lpips", "clip_score", "fid", "fid_vs_full")
COST = ("macs_reduction", "speedup")


def trends(frame: pd.DataFrame) -> str:
    """The sweep's trends as Markdown: the mean of each metric over the finished cells for every value of
    every swept axis (the other axes averaged out), then quality by method and keep ratio together."""
    if "status" not in frame:
        return ""
    done = frame[frame.status == "done"]
    metrics = [c for c in QUALITY + COST if c in done and done[c].notna().any()]
    axes = [c for c in frame.columns if c not in metrics and c not in ("cell", "error", "status")
            and not pd.api.types.is_numeric_dtype(frame[c]) and frame[c].nunique() > 1]
    if done.empty or not metrics or not axes:
        return ""
    parts = [f"Means over the {len(done)} finished cells (of {len(frame)}).\n"]
    for axis in axes:
        table = done.groupby(axis)[metrics].mean()
        table.insert(0, "cells", done.groupby(axis).size())
        parts.append(f"### by {axis}\n\n" + table.to_markdown(floatfmt=".4g") + "\n")
    keep = next((a for a in axes if a.endswith("keep_ratio")), None)
    if "method" in axes and keep:
        for metric in [m for m in ("psnr", "ssim", "adherence") if m in metrics]:
            table = done.pivot_table(index="method", columns=keep, values=metric, aggfunc="mean")
            parts.append(f"### {metric} by method and {keep}\n\n" + table.to_markdown(floatfmt=".4g") + "\n")
    return "\n".join(parts)


def write_summary(sweep_dir: Path) -> pd.DataFrame:
    frame = collect(sweep_dir)
    if frame.empty:
        return frame
    frame.to_csv(sweep_dir / "summary.csv", index=False)
    (sweep_dir / "summary.md").write_text(frame.to_markdown(index=False, floatfmt=".4g") + "\n")
    text = trends(frame)
    if text:
        (sweep_dir / "trends.md").write_text(text)
    return frame


class SweepSummary(Callback):
    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        frame = write_summary(sweep_dir)
        if frame.empty:
            return
        cols = [c for c in frame.columns if c in ("status", "adherence", "adherence_full", "psnr", "ssim",
                                                   "clip_score", "fid", "macs_reduction", "speedup")]
        keys = [c for c in frame.columns if c not in cols and c not in ("cell", "error")
                and not pd.api.types.is_numeric_dtype(frame[c])]
        print(frame[keys + cols].to_string(index=False))
        if (sweep_dir / "trends.md").exists():
            print((sweep_dir / "trends.md").read_text())
        print(f"sweep table: {sweep_dir / 'summary.csv'} ({(frame.status == 'done').sum()} done, "
              f"{(frame.status == 'failed').sum()} failed)")
        logger = config.get("logger") or {}
        if logger.get("name") not in (None, "none"):
            from .sinks import make_sink

            sink = make_sink(dict(logger), "summary", config.get("group"), {}, sweep_dir)
            sink.table("sweep_summary", frame)
            sink.finish()

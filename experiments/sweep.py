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


def write_summary(sweep_dir: Path) -> pd.DataFrame:
    frame = collect(sweep_dir)
    if frame.empty:
        return frame
    frame.to_csv(sweep_dir / "summary.csv", index=False)
    (sweep_dir / "summary.md").write_text(frame.to_markdown(index=False, floatfmt=".4g") + "\n")
    return frame


class SweepSummary(Callback):
    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        frame = write_summary(sweep_dir)
        if frame.empty:
            return
        cols = [c for c in frame.columns if c in ("status", "adherence", "adherence_full", "psnr", "ssim",
                                                   "clip_score", "fid", "macs_reduction", "speedup")]
        keys = [c for c in frame.columns if c not in cols and c not in ("cell", "error") and frame[c].dtype == object]
        print(frame[keys + cols].to_string(index=False))
        print(f"sweep table: {sweep_dir / 'summary.csv'} ({(frame.status == 'done').sum()} done, "
              f"{(frame.status == 'failed').sum()} failed)")
        logger = config.get("logger") or {}
        if logger.get("name") not in (None, "none"):
            from .sinks import make_sink

            sink = make_sink(dict(logger), "summary", config.get("group"), {}, sweep_dir)
            sink.table("sweep_summary", frame)
            sink.finish()

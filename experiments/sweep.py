"""Sweep bookkeeping: a Hydra callback that writes the sweep's table when the multirun ends.

Every cell's run directory holds status.json (done / failed + error), metrics.json, config.yaml,
run_key.json and .hydra/overrides.yaml; the table has one row per cell: its overrides, the settings that
vary among the cells (results.SETTINGS), its metrics and its status.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from .identity import scrub_override
from .results import CONFIG, distinct, run_settings
from .sinks import read_json, write_text


MANIFEST = ".cells"  # the cells of the sweep's latest multirun, one directory name per line


def collect(sweep_dir: Path, cells: list[str] | None = None) -> pd.DataFrame:
    """One row per cell of the sweep directory (only `cells` when given: a directory keeps the cells of
    earlier runs with other configurations, which must not mix into this run's table). Each of
    results.SETTINGS is a column where it varies among the cells, or where it is also an override."""
    rows, swept = [], []
    for status_file in sorted(sweep_dir.glob("*/status.json")):
        cell = status_file.parent
        if cells is not None and cell.name not in cells:
            continue
        row = {"cell": cell.name}
        overrides = cell / ".hydra" / "overrides.yaml"
        if overrides.exists():
            for item in yaml.safe_load(overrides.read_text()) or []:
                key, _, value = scrub_override(item).partition("=")
                key = key.lstrip("+~")
                if key not in ("sweep", "group", "output_root", "logger", "debug"):
                    row[key] = value
                    swept.append(key)
        for key, value in run_settings(cell).items():  # what the run recorded, over what was asked
            if value is not None or key not in row:
                # as text, like the overrides: a setting reads the same whether swept or configured, and a
                # varying one is an axis of the sweep (trends, pairing); stale_code stays a flag
                row[key] = value if value is None or key == "stale_code" else str(value)
        status = read_json(status_file) or {"status": "failed", "error": "status.json is corrupt"}
        row["status"] = status.get("status")
        row["error"] = " ".join((status.get("error") or "").split())[:300]
        metrics = read_json(cell / "metrics.json") if row["status"] == "done" else None
        if row["status"] == "done" and not isinstance(metrics, dict):
            row["status"], row["error"] = "failed", "metrics.json is missing or corrupt"
        row.update(metrics or {})
        rows.append(row)
    return distinct(pd.DataFrame(rows), list(dict.fromkeys(swept)), "cell")


QUALITY = ("adherence", "psnr", "ssim", "lpips", "clip_score", "fid", "fid_vs_full")
COST = ("macs_reduction", "speedup")


def trends(frame: pd.DataFrame) -> str:
    """The sweep's trends as Markdown: the mean of each metric over the finished cells for every value of
    every swept axis (the other axes averaged out), then quality by method and each swept setting of the
    methods' configs together."""
    if "status" not in frame:
        return ""
    done = frame[frame.status == "done"]
    metrics = [c for c in QUALITY + COST if c in done and done[c].notna().any()]
    axes = []
    for c in frame.columns:  # run_key names runs that tie on every setting: no axis
        if c in metrics or c in ("cell", "error", "status", "run_key") or pd.api.types.is_numeric_dtype(frame[c]) \
                or frame[c].nunique() <= 1:
            continue
        # an axis that only renames an earlier one (the prompt set of a swept data.path, the guidance of a
        # swept model.guidance_scale) would repeat its table
        if not any(_same_groups(done[c], done[a]) for a in axes):
            axes.append(c)
    if done.empty or not metrics or not axes:
        return ""
    parts = [f"Means over the {len(done)} finished cells (of {len(frame)}).\n"]
    for axis in axes:
        table = done.groupby(axis)[metrics].mean()
        table.insert(0, "cells", done.groupby(axis).size())
        parts.append(f"### by {axis}\n\n" + table.to_markdown(floatfmt=".4g") + "\n")
    for setting in [a for a in axes if a.startswith(CONFIG)] if "method" in axes else []:
        for metric in [m for m in ("psnr", "ssim", "adherence") if m in metrics]:
            table = done.pivot_table(index="method", columns=setting, values=metric, aggfunc="mean")
            parts.append(f"### {metric} by method and {setting}\n\n" + table.to_markdown(floatfmt=".4g") + "\n")
    return "\n".join(parts)


def _same_groups(a: pd.Series, b: pd.Series) -> bool:
    """Whether two columns split the rows into the same groups (each value of one stands for one of the other)."""
    pairs = pd.DataFrame({"a": a.astype(str), "b": b.astype(str)}).drop_duplicates()
    return pairs.a.is_unique and pairs.b.is_unique


def current_cells(sweep_dir: Path) -> list[str] | None:
    path = Path(sweep_dir) / MANIFEST
    if not path.exists():
        return None
    return sorted({line.strip() for line in path.read_text().splitlines() if line.strip()})


def write_summary(sweep_dir: Path, cells: list[str] | None = None, reference: str | None = None,
                  contrast: dict | None = None) -> pd.DataFrame:
    """summary.csv/md, trends.md and paired.csv/md (each cell against `reference`: a method name or
    "column=value"; default: conf/config.yaml's `paired_reference`), the contrast report the sweep file
    declares (`contrast`, experiments/contrast.py), and the peers report for a peers sweep. A comparison
    sweep (task=compare) writes targets.csv/md instead of paired.csv/md: its pairs are keyed by target."""
    from .config_files import default_setting

    cells = cells if cells is not None else current_cells(sweep_dir)
    frame = collect(sweep_dir, cells)
    if frame.empty:
        return frame
    write_text(sweep_dir / "summary.csv", frame.to_csv(index=False))
    write_text(sweep_dir / "summary.md", frame.to_markdown(index=False, floatfmt=".4g") + "\n")
    text = trends(frame)
    if text:
        write_text(sweep_dir / "trends.md", text)
    from . import peers, targets

    reference = reference or str(default_setting("paired_reference"))
    compared = targets.write_report(sweep_dir, cells, reference if "=" not in reference else None)
    if not compared.empty:  # a comparison sweep: targets.md is its paired report, keyed by target
        return frame
    from .stats import paired_against

    paired = paired_against(frame, sweep_dir, reference=reference)
    if not paired.empty:
        ref = reference if "=" in reference else f"method={reference}"
        write_text(sweep_dir / "paired.csv", paired.to_csv(index=False))
        write_text(sweep_dir / "paired.md", f"Paired per-prompt differences against the cells with `{ref}` on the "
                   "same prompts and seeds (cell - reference), 95% bootstrap intervals; a verdict of 'no difference' "
                   "means the interval contains 0.\n\n"
                   + paired.drop(columns=["cell", "reference"]).to_markdown(index=False, floatfmt=".3g") + "\n")
        if contrast:
            from .checks import token_geometry
            from .contrast import Contrast, write_report

            spec = Contrast(**contrast)
            model = (yaml.safe_load((sweep_dir / frame.cell.iloc[0] / "config.yaml").read_text()) or {})["model"]
            _, rows, cols = token_geometry(model)
            write_report(paired, sweep_dir, spec, ref, title=f"{model['name']} ({rows * cols} image tokens): "
                         f"{ref.rpartition('=')[2]} - {spec.value}, paired over {int(paired['prompts'].max())} "
                         "prompts (95% band)")
    if peers.is_peers_sweep(frame):
        peers.write_report(frame, sweep_dir)
    return frame


class SweepSummary(Callback):
    """Writes the sweep's tables when the multirun ends; exits non-zero when a cell failed or the
    summary cannot be written (Hydra turns exceptions in callbacks into warnings, so this raises
    SystemExit, which it does not catch)."""

    def on_multirun_start(self, config, **kwargs) -> None:
        """Starts this run's list of cells (cells of earlier runs in the same directory are left out)."""
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        write_text(sweep_dir / MANIFEST, "")

    def on_job_end(self, config, job_return=None, **kwargs) -> None:
        """Each cell adds itself (launchers may run cells in other processes: appended under a lock)."""
        from filelock import FileLock

        try:
            from hydra.core.hydra_config import HydraConfig

            hydra = HydraConfig.get()
            if hydra.mode is None or str(hydra.mode) != "RunMode.MULTIRUN":
                return
            out = Path(hydra.runtime.output_dir)
        except Exception:  # not a Hydra job
            return
        with FileLock(str(out.parent / (MANIFEST + ".lock"))):
            with open(out.parent / MANIFEST, "a") as f:
                f.write(out.name + "\n")

    def on_multirun_end(self, config, **kwargs) -> None:
        import sys

        from omegaconf import OmegaConf

        from .identity import override_secrets, scrub_tree, secret_values

        sweep_dir = Path(config.hydra.sweep.dir)
        plain = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in config.items() if k != "hydra"}
        scrub_tree(sweep_dir, secret_values(plain) + override_secrets(list(config.hydra.overrides.task)))
        try:
            contrast = config.get("contrast")
            frame = write_summary(sweep_dir, reference=config.get("paired_reference"),
                                  contrast=OmegaConf.to_container(contrast) if contrast else None)
            self._report(config, sweep_dir, frame)
        except Exception as err:
            print(f"error: the sweep summary of {sweep_dir} could not be written: {type(err).__name__}: {err}",
                  file=sys.stderr)
            raise SystemExit(1) from err
        failed = 0 if frame.empty else int((frame.status != "done").sum())
        if frame.empty or failed:
            print(f"error: {failed if not frame.empty else 'all'} sweep cell(s) failed; see their status.json "
                  f"and {sweep_dir / 'summary.csv'}", file=sys.stderr)
            raise SystemExit(1)

    @staticmethod
    def _report(config, sweep_dir: Path, frame: pd.DataFrame) -> None:
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
        from .sinks import make_sink

        sink = make_sink(dict(config.get("logger") or {}), "summary", config.get("group"), {}, sweep_dir)
        if sink is not None:
            sink.table("sweep_summary", frame)
            sink.finish()

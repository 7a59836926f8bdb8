"""A sweep's paired differences: every finished cell against its reference cell (`paired_reference`) on the
same prompts and seeds, per metric with a 95% bootstrap interval (`paired.csv`, `paired.md`), and the
contrast report a sweep file declares on them (`experiments.reports.contrast`)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from ..base.config_files import default_setting
from ..base.files import write_text
from ..base.intervals import paired_ci, verdict
from ..base.models import token_geometry
from ..metrics.registry import ordered
from . import contrast as contrasts
from .sweeps import Sweep, sweep_report


def per_image(cell_dir, metric: str) -> dict[int, float]:
    """A sweep cell's per-prompt values of `metric` for its method's images (from records.jsonl)."""
    path = Path(cell_dir) / "records.jsonl"
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["index"]: r[metric] for r in rows if r.get("variant") != "full" and metric in r}


def paired_against(frame, sweep_dir, reference: str | None = None, metrics=None):
    """Paired per-prompt differences (cell - reference cell) with 95% intervals, for every finished
    cell that differs from the reference on one column and has a reference cell equal on every other
    swept axis. `reference` is a method name, or "column=value" (e.g. "method.config.legacy=[]");
    default: conf/config.yaml's `paired_reference`. `metrics`: their names (default: every registered
    per-image metric). Returns a DataFrame (empty when there is nothing to pair)."""
    reference = reference or str(default_setting("paired_reference"))
    metrics = metrics if metrics is not None else [m.name for m in ordered(per_image=True)]
    column, _, value = reference.rpartition("=") if "=" in reference else ("method", "", reference)
    if column not in frame or "status" not in frame:
        return pd.DataFrame()
    done = frame[frame.status == "done"]
    axes = [c for c in frame.columns if c not in ("cell", "error", "status", column)
            and not pd.api.types.is_numeric_dtype(frame[c]) and frame[c].nunique() > 1]
    is_ref = done[column].astype(str) == value
    refs = done[is_ref]
    rows = []
    for _, cell in done[~is_ref].iterrows():
        match = refs
        for axis in axes:
            match = match[match[axis].astype(str) == str(cell[axis])]
        if len(match) != 1:
            continue
        ref = match.iloc[0]
        row = {column: cell[column], **{a: cell[a] for a in axes}, "cell": cell.cell, "reference": ref.cell}
        for metric in metrics:
            a, b = per_image(Path(sweep_dir) / cell.cell, metric), per_image(Path(sweep_dir) / ref.cell, metric)
            common = sorted(set(a) & set(b))
            if len(common) < 2:
                continue
            mean, lo, hi = paired_ci([a[i] for i in common], [b[i] for i in common])
            row.update({f"d_{metric}": mean, f"d_{metric}_lo": lo, f"d_{metric}_hi": hi,
                        f"{metric}_verdict": verdict(lo, hi), "prompts": len(common)})
        rows.append(row)
    return pd.DataFrame(rows)


@sweep_report
def write_paired(sweep: Sweep) -> list[Path]:
    """paired.csv / paired.md of a sweep whose cells recorded per-image values (records.jsonl), and the
    contrast report its sweep file declares."""
    if not any((sweep.folder / cell / "records.jsonl").exists() for cell in sweep.frame.cell):
        return []
    paired = paired_against(sweep.frame, sweep.folder, reference=sweep.reference)
    if paired.empty:
        return []
    ref = sweep.reference if "=" in sweep.reference else f"method={sweep.reference}"
    written = [sweep.folder / "paired.csv", sweep.folder / "paired.md"]
    write_text(written[0], paired.to_csv(index=False))
    write_text(written[1], f"Paired per-prompt differences against the cells with `{ref}` on the same prompts and "
               "seeds (cell - reference), 95% bootstrap intervals; a verdict of 'no difference' means the interval "
               "contains 0.\n\n" + paired.drop(columns=["cell", "reference"]).to_markdown(index=False, floatfmt=".3g")
               + "\n")
    if sweep.contrast:
        spec = contrasts.Contrast(**sweep.contrast)
        model = (yaml.safe_load((sweep.folder / sweep.frame.cell.iloc[0] / "config.yaml").read_text()) or {})["model"]
        _, rows, cols = token_geometry(model)
        contrasts.write_report(paired, sweep.folder, spec, ref, title=f"{model['name']} ({rows * cols} image tokens): "
                               f"{ref.rpartition('=')[2]} - {spec.value}, paired over {int(paired['prompts'].max())} "
                               "prompts (95% band)")
        written += [sweep.folder / f"{spec.name}.md", sweep.folder / f"{spec.name}.png"]
    return written

"""The comparison's report: every method and variant at every compute target, paired with the reference
method (`paired_reference`, CAT).

Reads the cells of a `sweep=peers` run (task=compare, experiments/tasks/compare.py) and writes

- `targets.csv` / `targets.md`: one row per (method, variant, target) the method reaches: the setting (one
  setting, or two mixed per prompt), the executed-MACs reduction on the evaluation prompts, each metric the
  cells measured (PSNR / SSIM / adherence: `experiments.metrics`, `comparison=True`) with 95% intervals over
  prompts, and for each the paired difference with CAT at the same target and variant (`d_cat` for the
  objective, PSNR; `<metric>_d_cat` for the others; 95% interval) and its verdict
  (experiments.compare.matched: better / worse / equivalent / undetermined);
- with another reference (`python -m experiments.reports.targets SWEEP_DIR --reference cat_budget`):
  `targets_vs_<reference>.csv/md`, the differences named `d_<reference>` (a CAT variant against every peer);
- `figures/targets_<metric>.png`: each method's tuned variant along the targets (solid, 95% band), its
  authors' setting dashed.

Multiplicity: every PSNR test of one report (each method x variant x target against the reference, and each
leader against its runner-up) carries a two-sided bootstrap p-value from the resamples of its interval
(`p`); Holm's step-down over that family at family-wise 0.05 gives `p_holm` and `verdict_holm` (better / worse
only where Holm rejects; `equivalent` is the unadjusted equivalence verdict, kept as it is; else
undetermined). The other metrics' verdicts are not adjusted.

Against the full model: the metrics that score each image on its own (adherence) are also paired with the
full model's own images on the same prompts (`<metric>_full` with its interval, `<metric>_d_full` with the
paired interval, `<metric>_full_verdict`), from the cell's `cells/full.json`.

Leaders (`leaders.csv`, and a section of `targets.md`): per target, for the `tuned` variant, the best method by
PSNR, its margin over the runner-up paired on the same prompts (95% interval, raw and Holm verdicts, the test
counted in the family above), and the methods better than the reference by PSNR but worse by adherence (against
the reference or the full model).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..base.config_files import default_setting
from ..base.files import write_text
from ..base.intervals import holm
from ..compare.matched import AtTarget, Cell, at_target, compare, family_resamples, mixable, resamples
from ..metrics.registry import Metric, objective, ordered
from .sweeps import Sweep, sweep_report

ALPHA = 0.05  # the family-wise error rate Holm's step-down holds over one report's PSNR tests
LEADER_VARIANTS = ("tuned",)  # the variants whose leaders the report names
FULL = "full.json"  # a cell's full-model scores (experiments.compare.bench)


def _metrics(present) -> list[Metric]:
    """The per-image metrics among `present` (names), the objective first."""
    return [m for m in ordered(per_image=True) if m.name in present]


def _prefix(metric: Metric) -> str:
    """Columns of a metric's difference and verdict: bare for the objective (`d_cat`, `verdict`), named for
    the others (`ssim_d_cat`, `ssim_verdict`)."""
    return "" if metric.objective else f"{metric.name}_"


def load_cells(sweep_dir: Path, cells: list[str] | None = None) -> list[dict]:
    """The compare cells of a sweep: each {"method", "variant", "plan", "rows": {key: per-prompt values}}."""
    out = []
    for folder in sorted(Path(sweep_dir).iterdir()):
        plan_path = folder / "compare.json"
        if not plan_path.exists() or (cells is not None and folder.name not in cells):
            continue
        plan = json.loads(plan_path.read_text())
        rows = {}
        for key in plan.get("cells", []):
            path = folder / "cells" / f"{key}.json"
            if path.exists():
                rows[key] = json.loads(path.read_text())
        full = folder / "cells" / FULL
        out.append({"method": plan["method"], "variant": plan["variant"], "plan": plan, "rows": rows,
                    "full": json.loads(full.read_text()) if full.exists() else None, "folder": folder.name})
    return out


def _cell(row: dict, label: str) -> Cell:
    values = {m.name: row[m.name] for m in _metrics(row)}
    return Cell.of(label, row["reduction"], values)


def reach(entry: dict, target: float, tol: float = 0.01) -> AtTarget | None:
    """How one (method, variant) reaches `target` on the evaluation prompts: the cells its plan chose there.
    A single cell off the target by more than `tol` on these prompts, or a chosen pair that cannot be mixed to
    reach it on these prompts (`matched.mixable`: both must save MACs and bracket the target; a plan made before
    that rule may mix in a setting that saves nothing), gives way to the nearest evaluated cells of the same
    variant (`matched.at_target`; None when there are none on one side)."""
    chosen = entry["plan"]["targets"].get(f"{target:g}")
    if not chosen:
        return None
    cells = [_cell(entry["rows"][k], label) for k, label in zip(chosen["cells"], chosen["labels"]) if k in entry["rows"]]
    if len(cells) != len(chosen["cells"]):
        return None
    cells.sort(key=lambda c: c.reduction.mean())
    if len(cells) == 2 and mixable(cells[0], cells[1], target):
        return AtTarget(target, tuple(cells))
    if len(cells) == 1 and abs(cells[0].reduction.mean() - target) <= tol:
        return AtTarget(target, tuple(cells))
    labels = {k: lab for t in entry["plan"]["targets"].values() for k, lab in zip(t["cells"], t["labels"])}
    everything = [_cell(row, labels.get(k, k)) for k, row in entry["rows"].items()]
    return at_target(everything, target, tol)


def _own_metrics(present) -> list[Metric]:
    """The per-image metrics among `present` that score each image on its own (adherence), not against the
    full model: those the full model has values of."""
    return [m for m in _metrics(present) if not m.against_full]


def _full_model(entries: list[dict], prompts: tuple) -> AtTarget | None:
    """The full model's own per-prompt scores on the shared prompts (any cell's `cells/full.json`), as a cell."""
    for e in entries:
        full = e.get("full")
        if full and tuple(full.get("indices", ())) == prompts:
            values = {m.name: full[m.name] for m in _own_metrics(full)}
            return AtTarget(0.0, (Cell.of("full model", 0.0, values),)) if values else None
    return None


def report(entries: list[dict], targets: list[float], reference: str, tol: float = 0.01
           ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The report's two tables: one row per (method, variant, target) reached, paired with the reference
    method's same variant (`table`), and the leaders per target (`leaders`); the PSNR tests of both form one
    family for Holm's step-down (`p_holm`, `verdict_holm`)."""
    prompts = {tuple(row["indices"]) for e in entries for row in e["rows"].values()}
    if len(prompts) > 1:
        raise ValueError("the compare cells were evaluated on different prompts; pair only cells of one sweep")
    if not prompts:
        return pd.DataFrame(), pd.DataFrame()
    (shared,) = prompts
    # enough resamples that Holm over the family (at most every (method, variant) at every target, and each
    # target's leader test) can reject at all
    idx = resamples(len(shared), family_resamples(len({(e["method"], e["variant"]) for e in entries}) * len(targets)
                                                  + len(targets) * len(LEADER_VARIANTS), ALPHA))
    full = _full_model(entries, shared)
    full_means = {m: compare(full, None, m, idx) for m in full.cells[0].values} if full is not None else {}
    d = f"d_{reference}"
    by = {(e["method"], e["variant"]): e for e in entries}
    reached: dict[tuple, AtTarget] = {}
    rows = []
    for (method, variant), entry in sorted(by.items()):
        ref_entry = by.get((reference, variant))
        for target in targets:
            mine = reach(entry, target, tol)
            if mine is None:
                continue
            reached[(method, variant, target)] = mine
            ref = reach(ref_entry, target, tol) if ref_entry is not None and method != reference else None
            row = {"method": method, "variant": variant, "target": target, "setting": mine.setting,
                   "reduction": mine.reduction}
            for spec in _metrics(mine.cells[0].values):
                metric = spec.name
                if not all(metric in c.values for c in mine.cells):
                    continue
                has_ref = ref is not None and all(metric in c.values for c in ref.cells)
                res = compare(mine, ref if has_ref else None, metric, idx)
                prefix = _prefix(spec)
                row[metric], row[f"{metric}_lo"], row[f"{metric}_hi"] = res[metric], res[f"{metric}_lo"], res[f"{metric}_hi"]
                if has_ref:
                    row[f"{prefix}{d}"], row[f"{prefix}{d}_lo"], row[f"{prefix}{d}_hi"] = res["d"], res["d_lo"], res["d_hi"]
                    row[f"{prefix}verdict"] = res["verdict"]
                    if spec.objective:
                        row["p"], row["within_margin"] = res["p"], res["within_margin"]
                if metric in full_means and not spec.against_full:
                    vs_full, own = compare(mine, full, metric, idx), full_means[metric]
                    row[f"{metric}_full"], row[f"{metric}_full_lo"], row[f"{metric}_full_hi"] = (
                        own[metric], own[f"{metric}_lo"], own[f"{metric}_hi"])
                    row[f"{metric}_d_full"], row[f"{metric}_d_full_lo"], row[f"{metric}_d_full_hi"] = (
                        vs_full["d"], vs_full["d_lo"], vs_full["d_hi"])
                    row[f"{metric}_full_verdict"] = vs_full["verdict"]
            rows.append(row)
    frame = pd.DataFrame(rows)
    leaders = _leaders(frame, reached, idx, reference)
    return _with_holm(frame, leaders)


def table(entries: list[dict], targets: list[float], reference: str, tol: float = 0.01) -> pd.DataFrame:
    """One row per (method, variant, target) reached; paired with the reference method's same variant (the
    differences in `d_<reference>`, `<metric>_d_<reference>`: `d_cat` against CAT), with the Holm-adjusted PSNR
    verdict and, for adherence, the difference with the full model (see `report`)."""
    return report(entries, targets, reference, tol)[0]


def _leaders(frame: pd.DataFrame, reached: dict, idx: np.ndarray, reference: str) -> pd.DataFrame:
    """Per target and variant of LEADER_VARIANTS: the best method by the objective, its paired difference with
    the runner-up (same resamples), and the methods better than the reference by the objective but worse by a
    metric that scores the image on its own (against the reference or the full model)."""
    goal = objective()
    if frame.empty or goal.name not in frame:
        return pd.DataFrame()
    own = _own_metrics(frame.columns)
    rows = []
    for (variant, target), part in frame[frame.variant.isin(LEADER_VARIANTS)].groupby(["variant", "target"]):
        part = part[part[goal.name].notna()].sort_values(goal.name, ascending=goal.lower_is_better)
        if part.empty:
            continue
        first = part.iloc[0]
        row = {"target": target, "variant": variant, "leader": first.method, "leader_setting": first.setting,
               goal.name: first[goal.name], f"{goal.name}_lo": first[f"{goal.name}_lo"],
               f"{goal.name}_hi": first[f"{goal.name}_hi"]}
        if len(part) > 1:
            second = part.iloc[1]
            res = compare(reached[(first.method, variant, target)], reached[(second.method, variant, target)],
                          goal.name, idx)
            row.update({"runner_up": second.method, "runner_up_setting": second.setting,
                        f"runner_up_{goal.name}": second[goal.name], "margin": res["d"], "margin_lo": res["d_lo"],
                        "margin_hi": res["d_hi"], "p": res["p"], "verdict": res["verdict"],
                        "within_margin": res["within_margin"]})
        row["disagree"] = "; ".join(f"{r.method} ({', '.join(worse)})" for r, worse in disagreements(part, own, reference))
        rows.append(row)
    return pd.DataFrame(rows)


def disagreements(part: pd.DataFrame, own: list[Metric], reference: str) -> list[tuple[pd.Series, list[str]]]:
    """The rows of `part` better than the reference by the objective (raw verdict) but worse by a metric that
    scores each image on its own, against the reference or the full model: (row, ["adherence vs cat", ...])."""
    out = []
    for _, r in part.iterrows():
        if r.get("verdict") != "better":
            continue
        worse = [f"{m.short} vs {against}" for m in own
                 for against, column in ((reference, f"{_prefix(m)}verdict"), ("full model", f"{m.name}_full_verdict"))
                 if r.get(column) == "worse"]
        if worse:
            out.append((r, worse))
    return out


def holm_verdict(verdict: str, rejected: bool, within_margin: bool = False) -> str:
    """A paired verdict under Holm's correction: better / worse only where the adjusted test rejects; else
    equivalent where the 90% interval lies within the margin (`within_margin`; the equivalence verdict is not
    adjusted, and a raw `better` whose 90% interval is also within the margin is equivalent once Holm does not
    reject it); else undetermined."""
    if rejected and verdict in ("better", "worse"):
        return verdict
    return "equivalent" if verdict == "equivalent" or within_margin else "undetermined"


def _with_holm(frame: pd.DataFrame, leaders: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Holm's step-down over every PSNR test of the report (the rows against the reference and the leaders'
    margins): `p_holm` and `verdict_holm` in both tables."""
    parts = [t for t in (frame, leaders) if "p" in t]
    if not parts:
        return frame, leaders
    adjusted, rejected = holm(np.concatenate([t["p"].to_numpy(dtype=float) for t in parts]), ALPHA)
    start = 0
    for t in parts:
        n = len(t)
        t["p_holm"] = adjusted[start:start + n]
        within = t["within_margin"] if "within_margin" in t else [False] * n
        t["verdict_holm"] = [holm_verdict(v, r, bool(pd.notna(w) and w)) if pd.notna(p) else np.nan
                             for v, r, p, w in zip(t["verdict"], rejected[start:start + n], t["p"], within)]
        start += n
    return frame, leaders


def _fmt(v, lo, hi, nd: int, sign: bool = False) -> str:
    if pd.isna(v):
        return ""
    f = f"{{:{'+' if sign else ''}.{nd}f}}"
    return f"{f.format(v)} [{f.format(lo)}, {f.format(hi)}]"


def markdown(frame: pd.DataFrame, title: str, reference: str, leaders: pd.DataFrame | None = None) -> str:
    """targets.md: the full model's own scores, then per target a table of methods and variants with each metric's
    mean and interval, its paired difference with the reference method (`d_<reference>`), the verdict (for PSNR
    also Holm's) and, for the metrics that score each image on its own, the difference with the full model; then
    the leaders."""
    d, who = f"d_{reference}", reference
    metrics = _metrics(frame.columns)
    own = [m for m in _own_metrics(frame.columns) if f"{m.name}_d_full" in frame]
    margins = ", ".join(f"{m.short} {m.margin:g}" + (f" {m.unit}" if m.unit else "") for m in metrics)
    family = int(frame["p"].notna().sum()) + (int(leaders["p"].notna().sum()) if leaders is not None and "p" in leaders else 0) \
        if "p" in frame else 0
    lines = [f"# {title}", "",
             f"Every method at matched executed-MACs reductions (counted on the evaluated batches), paired with {who} "
             f"at the same target and variant over the same prompts and seeds. `{d}` = method - {who} with its "
             "95% bootstrap interval; verdict: better / worse when that interval excludes 0, equivalent when the "
             f"90% interval lies within the margin ({margins}), else undetermined. "
             "A setting `a (x%) + b (y%)` is a per-prompt mixture of two real settings that spends the target's "
             "MACs; it is never a setting of its own.", ""]
    if family:
        lines += [f"Verdict (Holm): the {family} PSNR tests of this report (every method x variant x target against "
                  f"{who}, and each leader against its runner-up, below) are one family; each test's two-sided "
                  "bootstrap p-value (from the resamples of its interval) goes through Holm's step-down at "
                  f"family-wise {ALPHA:g}: better / worse only where it rejects, equivalent as above (not adjusted), "
                  "else undetermined. The other metrics' verdicts are not adjusted.", ""]
    unpaired = [m.short for m in _own_metrics(frame.columns) if m not in own]
    if unpaired:
        lines += [f"Full model: its own {', '.join(unpaired)} is not in this sweep (its cells have no `cells/full.json`, "
                  "which comparisons made before the full model's scores were kept lack), so no row is paired with "
                  "the full model.", ""]
    for m in own:
        first = frame[f"{m.name}_full"].dropna()
        if len(first):
            r = frame.loc[first.index[0]]
            lines += [f"Full model: {m.short} {_fmt(r[f'{m.name}_full'], r[f'{m.name}_full_lo'], r[f'{m.name}_full_hi'], m.digits)} "
                      f"(its own images, the same prompts and seeds); `{m.short} d_full` = method - full model, paired, "
                      "with its verdict.", ""]
    header = ["method", "variant", "setting", "reduction"]
    for m in metrics:
        header += [m.short + (f" ({m.unit})" if m.unit else ""), f"{d} {m.short}", "verdict"]
        if m.objective and "verdict_holm" in frame:
            header.append("verdict (Holm)")
        if m in own:
            header += [f"{m.short} d_full", "verdict"]
    lines += glance(frame, leaders, reference)
    first = metrics[0] if metrics else None
    for target, part in frame.groupby("target"):
        lines += [f"## {100 * target:.0f}% fewer executed MACs", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        rows = part.sort_values(["variant", first.name], ascending=[True, first.lower_is_better]) if first else part
        for _, r in rows.iterrows():
            get = lambda k: r.get(k, np.nan)  # noqa: E731
            text = lambda k: "" if pd.isna(get(k)) else str(get(k))  # noqa: E731
            cells = [str(r.method), r.variant, str(r.setting).replace("|", "/"), f"{100 * r.reduction:.1f}%"]
            for m in metrics:
                diff = f"{_prefix(m)}{d}"
                cells += [_fmt(get(m.name), get(f"{m.name}_lo"), get(f"{m.name}_hi"), m.digits),
                          _fmt(get(diff), get(f"{diff}_lo"), get(f"{diff}_hi"), m.digits),
                          text(f"{_prefix(m)}verdict")]
                if m.objective and "verdict_holm" in frame:
                    cells.append(text("verdict_holm"))
                if m in own:
                    full = f"{m.name}_d_full"
                    cells += [_fmt(get(full), get(f"{full}_lo"), get(f"{full}_hi"), m.digits),
                              text(f"{m.name}_full_verdict")]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if leaders is not None and not leaders.empty:
        lines += leaders_markdown(leaders, frame, reference)
    return "\n".join(lines)


def glance(frame: pd.DataFrame, leaders: pd.DataFrame | None, reference: str, variant: str = "tuned") -> list[str]:
    """The section of targets.md the README's table is made of: the variant's methods by target, each cell the
    objective with, in brackets, method - reference (95% paired interval, Holm's verdict where the report has it),
    methods ordered by the objective at the middle target; then the leader's margin over the runner-up."""
    goal = objective()
    part = frame[frame.variant == variant] if goal.name in frame else frame.iloc[:0]
    if part.empty:
        return []
    targets = sorted(part.target.unique())
    d = f"{_prefix(goal)}d_{reference}"
    verdict = "verdict_holm" if "verdict_holm" in part else f"{_prefix(goal)}verdict"
    nd = goal.digits

    def cell(r) -> str:
        value = f"{r[goal.name]:.{nd}f}"
        if pd.isna(r.get(d, np.nan)):
            return value
        return f"{value} ({_fmt(r[d], r[f'{d}_lo'], r[f'{d}_hi'], nd, sign=True)} {r.get(verdict, '')})"

    middle = targets[len(targets) // 2]
    ranked = part.sort_values(goal.name, ascending=goal.lower_is_better)
    order = list(dict.fromkeys([*ranked[ranked.target == middle].method, *ranked.method]))
    unit = f" ({goal.unit})" if goal.unit else ""
    lines = [f"## At a glance ({variant})", "",
             f"{goal.short}{unit} of each method at each target and, in brackets, method - {reference} with its 95% paired "
             f"interval and {'Holm' if verdict == 'verdict_holm' else 'its'} verdict; ordered by {goal.short} at "
             f"{100 * middle:.0f}%; the last row, the leader's margin over the runner-up (Holm).", "",
             "| method | " + " | ".join(f"{100 * t:.0f}%" for t in targets) + " |", "|" + "---|" * (len(targets) + 1)]
    for method in order:
        rows = part[part.method == method].drop_duplicates("target").set_index("target")
        lines.append(f"| {method} | " + " | ".join(cell(rows.loc[t]) if t in rows.index else "not reached"
                                                   for t in targets) + " |")
    if leaders is not None and not leaders.empty and "leader" in leaders:
        mine = leaders[leaders.variant == variant].set_index("target")
        row = []
        for t in targets:
            if t not in mine.index:
                row.append("")
                continue
            r = mine.loc[t]
            if pd.isna(r.get("margin", np.nan)):
                row.append(f"{r.leader} alone")
                continue
            p = f", p {r['p_holm']:.2g}" if pd.notna(r.get("p_holm", np.nan)) else ""
            row.append(f"{r.leader} - {r.runner_up} {_fmt(r['margin'], r['margin_lo'], r['margin_hi'], nd, sign=True)} "
                       f"{r.get('verdict_holm', r.get('verdict', ''))}{p}")
        lines.append("| **leader - runner-up** | " + " | ".join(row) + " |")
    return lines + [""]


def leaders_markdown(leaders: pd.DataFrame, frame: pd.DataFrame, reference: str) -> list[str]:
    """The leaders section of targets.md: per target the best method by the objective and its margin over the
    runner-up, then where the objective and the own-image metrics (adherence) disagree."""
    goal = objective()
    unit = f" ({goal.unit})" if goal.unit else ""
    lines = []
    for variant, part in leaders.groupby("variant"):
        lines += [f"## Leaders ({variant})", "",
                  f"The best method by {goal.short} at each target and its margin over the runner-up (leader - runner-up, "
                  "paired on the same prompts and seeds, 95% interval), with its raw verdict and Holm's (the test is "
                  "one of the report's family).", "",
                  f"| target | leader | {goal.short}{unit} | runner-up | {goal.short}{unit} | margin{unit} | p | p (Holm) | "
                  "verdict | verdict (Holm) |", "|" + "---|" * 10]
        for _, r in part.sort_values("target").iterrows():
            get = lambda k: r.get(k, np.nan)  # noqa: E731
            has = pd.notna(get("margin"))
            lines.append("| " + " | ".join([
                f"{100 * r.target:.0f}%", f"{r.leader} ({r.leader_setting})".replace("|", "/"),
                _fmt(r[goal.name], r[f"{goal.name}_lo"], r[f"{goal.name}_hi"], goal.digits),
                f"{r.runner_up} ({r.runner_up_setting})".replace("|", "/") if has else "-",
                f"{get(f'runner_up_{goal.name}'):.{goal.digits}f}" if has else "",
                _fmt(get("margin"), get("margin_lo"), get("margin_hi"), goal.digits, sign=True),
                f"{get('p'):.3g}" if has else "", f"{get('p_holm'):.3g}" if has else "",
                str(get("verdict")) if has else "", str(get("verdict_holm")) if has else ""]) + " |")
        lines.append("")
        own = _own_metrics(frame.columns)
        names = ", ".join(m.short for m in own) or "the other metrics"
        lines += [f"### {goal.short} and {names} disagree ({variant})", "",
                  f"Methods better than {reference} by {goal.short} (raw verdict; Holm's in brackets) but worse by "
                  f"{names} against {reference} or against the full model:", ""]
        found = [(r, worse) for target in sorted(part.target)
                 for r, worse in disagreements(frame[(frame.variant == variant) & (frame.target == target)], own, reference)]
        for r, worse in found:
            d = f"d_{reference}"
            text = [f"- {100 * r.target:.0f}% {r.method} ({', '.join(worse)}): {goal.short} "
                    f"{_fmt(r[d], r[f'{d}_lo'], r[f'{d}_hi'], goal.digits, sign=True)} [{r.get('verdict_holm', '')}]"]
            for m in own:
                diff, full = f"{m.name}_{d}", f"{m.name}_d_full"
                text.append(f"{m.short} vs {reference} {_fmt(r.get(diff), r.get(f'{diff}_lo'), r.get(f'{diff}_hi'), m.digits, sign=True)}")
                if full in r:
                    text.append(f"vs the full model {_fmt(r[full], r[f'{full}_lo'], r[f'{full}_hi'], m.digits, sign=True)}")
            lines.append("; ".join(text))
        lines += (["none"] if not found else []) + [""]
    return lines


def figure(frame: pd.DataFrame, metric: str, path: Path, title: str) -> Path | None:
    """Each method's tuned variant along the targets (solid line, 95% band), its authors' setting dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if frame.empty or metric not in frame:
        return None
    fig, ax = plt.subplots(figsize=(9.5, 4.8))
    methods = sorted(frame.method.unique())
    palette = plt.get_cmap("tab20")  # the ten strong hues first, then their light shades: no colour is reused
    colors = {m: palette((2 * i) % 20 + (2 * i) // 20 % 2) for i, m in enumerate(methods)}
    for method, part in frame.groupby("method"):
        for variant, style in (("tuned", "-"), ("authors", "--")):
            rows = part[part.variant == variant].sort_values("reduction")
            if rows.empty or rows[metric].isna().all():
                continue
            x = 100 * rows.reduction.to_numpy()
            ax.plot(x, rows[metric], style, marker="o", ms=3, color=colors[method], label=f"{method} ({variant})")
            if variant == "tuned":
                ax.fill_between(x, rows[f"{metric}_lo"], rows[f"{metric}_hi"], color=colors[method], alpha=0.12)
    ax.set_xlabel("executed-MACs reduction (%)")
    ax.set_ylabel(next((m.axis_label for m in ordered() if m.name == metric), metric))
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=1, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the plot, not over it
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def write_report(sweep_dir: Path, cells: list[str] | None = None, reference: str | None = None) -> pd.DataFrame:
    """targets.csv, targets.md and figures/targets_*.png of a comparison sweep (empty frame: not one), every
    method paired with `reference` (default: conf/config.yaml's `paired_reference`); with another reference,
    targets_vs_<reference>.csv/md and no figures (they do not depend on the reference)."""
    default = str(default_setting("paired_reference"))
    reference = reference or default
    entries = load_cells(sweep_dir, cells)
    if not entries:
        return pd.DataFrame()
    targets = sorted({float(t) for e in entries for t in e["plan"]["targets"]})
    frame, leaders = report(entries, targets, reference)
    if frame.empty:
        return frame
    n = len(next(iter(next(e for e in entries if e["rows"])["rows"].values()))["indices"])
    title = f"{sweep_title(sweep_dir, entries)}: {n} evaluation prompts, paired with {reference}"
    suffix = "" if reference == default else f"_vs_{reference}"
    write_text(Path(sweep_dir) / f"targets{suffix}.csv", frame.to_csv(index=False))
    write_text(Path(sweep_dir) / f"targets{suffix}.md", markdown(frame, title, reference, leaders) + "\n")
    if not leaders.empty:
        write_text(Path(sweep_dir) / f"leaders{suffix}.csv", leaders.to_csv(index=False))
    if reference != default:
        return frame
    for metric in _metrics(frame.columns):
        figure(frame, metric.name, Path(sweep_dir) / "figures" / f"targets_{metric.name}.png", title)
    return frame


@sweep_report
def write_targets(sweep: Sweep) -> list[Path]:
    """The report of a comparison sweep (its cells hold compare.json), paired with `paired_reference` when that
    is a method; none for another sweep."""
    frame = write_report(sweep.folder, sweep.cells, sweep.reference if "=" not in sweep.reference else None)
    if frame.empty:
        return []
    leaders = [sweep.folder / "leaders.csv"] if (sweep.folder / "leaders.csv").exists() else []
    return [sweep.folder / "targets.csv", sweep.folder / "targets.md", *leaders,
            *sorted((sweep.folder / "figures").glob("targets_*.png"))]


def sweep_title(sweep_dir: Path, entries: list[dict]) -> str:
    import yaml

    cfg = yaml.safe_load((Path(sweep_dir) / entries[0]["folder"] / "config.yaml").read_text()) or {}
    model = cfg.get("model", {})
    shift = (model.get("scheduler") or {}).get("shift")
    return f"{model.get('name', '?')} ({model.get('steps', '?')} steps{f', shift {shift}' if shift else ''})"


def main(argv=None) -> None:
    """`python -m experiments.reports.targets SWEEP_DIR [--reference METHOD]`: the report of a finished (or
    partly finished) comparison sweep, against CAT or another method of the sweep."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("sweep_dir", type=Path)
    p.add_argument("--reference", default=None, help="a method of the sweep (default: paired_reference, cat)")
    args = p.parse_args(argv)
    if not args.sweep_dir.is_dir():
        raise SystemExit(f"{args.sweep_dir}: not a folder (a sweep=peers output folder is expected)")
    entries = load_cells(args.sweep_dir)
    methods = sorted({e["method"] for e in entries})
    if not entries:
        raise SystemExit(f"{args.sweep_dir}: no compare cells (compare.json) in it")
    if args.reference is not None and args.reference not in methods:
        raise SystemExit(f"--reference {args.reference}: not a method of this sweep; its methods: {', '.join(methods)}")
    frame = write_report(args.sweep_dir, reference=args.reference)
    print(f"{len(frame)} rows written to {args.sweep_dir}")


if __name__ == "__main__":
    main()

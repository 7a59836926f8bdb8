"""The comparison's figures in the README and docs/results.md are the committed reports' own: every cell of
their tuned tables (PSNR, its interval where shown, the paired difference to CAT with its interval and verdict,
the leader's margin over the runner-up with its Holm p) matches the report's targets.csv and leaders.csv to the
precision shown. A table written by hand after a rerun, or a report replaced without its table, fails here."""

import csv
import json
import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/results.md")

# A tuned table's label (its first header cell, or the italic label that opens the paragraph above it)
# -> the folder of the report its figures come from. A new tuned table needs its entry here.
SOURCES = {
    "tuned, default model": "results/peers",
    "*Embedded default model*": "results/peers",
    "*PixArt model*": "results/peers/tiny_pixart_shapes",
    "*Scene model, previous protocol*": "results/peers/tiny_sd3_scenes",
}
ALIASES = {"random tokens": "cat_random", "fewer steps": "steps"}
VERDICTS = {"better": "better", "worse": "worse", "undet.": "undetermined", "undetermined": "undetermined",
            "equiv.": "equivalent", "equivalent": "equivalent"}
TARGETS = {"40%": 0.4, "50%": 0.5, "60%": 0.6}
NUM = r"[+-]?\d+\.\d+"
CELL = re.compile(rf"^(?P<psnr>{NUM})(?: \[(?P<plo>{NUM}), (?P<phi>{NUM})\])?"
                  rf"(?: \((?P<d>{NUM}) \[(?P<lo>{NUM}), (?P<hi>{NUM})\] (?P<v>[a-z.]+)\))?$")
LEADER = re.compile(rf"^(?P<a>.+?) - (?P<b>.+?) (?P<m>{NUM}) \[(?P<lo>{NUM}), (?P<hi>{NUM})\], "
                    rf"(?P<v>[a-z.]+) \((?:Holm )?p (?P<p>\d+(?:\.\d+)?)\)$")


def method_key(name: str) -> str:
    name = re.sub(r" \((this project|CAT's budget)\)$", "", name.replace("`", "").strip()).lower()
    return ALIASES.get(name, name)


def doc_tables(doc: str):
    """(bold label, italic label, header cells, rows of cells) of every table of `doc`, the labels those that
    last opened a line above it (`**label**`, without its asterisks; `*label*`, with them)."""
    lines = (ROOT / doc).read_text().splitlines()
    bold = italic = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if m := re.match(r"^\*\*(.+?)\*\*", line):
            bold = m.group(1)
        elif m := re.match(r"^(\*[^*]+?\*)", line):
            italic = m.group(1)
        if line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header = [c.strip() for c in line.strip("|").split("|")]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            yield bold, italic, header, rows
            continue
        i += 1


def tuned_tables(doc: str):
    """(label, header cells, rows of cells) of every table of `doc` whose first header cell starts with "tuned";
    its label is that cell, or the italic label above it where the cell is just "tuned"."""
    for _, italic, header, rows in doc_tables(doc):
        if header[0].startswith("tuned"):
            yield (header[0] if header[0] != "tuned" else italic), header, rows


def report(folder: str):
    with open(ROOT / folder / "targets.csv", newline="") as f:
        targets = {(r["method"], round(float(r["target"]), 2)): r for r in csv.DictReader(f)
                   if r["variant"] == "tuned"}
    leaders = {}
    if (ROOT / folder / "leaders.csv").is_file():
        with open(ROOT / folder / "leaders.csv", newline="") as f:
            leaders = {round(float(r["target"]), 2): r for r in csv.DictReader(f) if r["variant"] == "tuned"}
    return targets, leaders


def agrees(shown: str, value) -> bool:
    """`shown` is `value` rounded to the digits shown."""
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    return value not in ("", None) and abs(float(shown) - float(value)) <= 0.5 * 10 ** -decimals + 1e-9


def check_table(label, header, rows) -> list[str]:
    targets, leaders = report(SOURCES[label])
    wrong = []
    for row in rows:
        name = row[0].replace("*", "")
        for column, cell in zip(header[1:], row[1:]):
            target = TARGETS[column]
            cell = cell.replace("*", "")
            where = f"{label}, {name}, {column}: {cell!r}"
            if "leader - runner-up" in name:
                m, r = LEADER.match(cell), leaders.get(target)
                if m is None or r is None:
                    wrong.append(f"{where}: not a leader cell, or no leaders.csv row")
                    continue
                ok = (method_key(m["a"]) == r["leader"] and method_key(m["b"]) == r["runner_up"]
                      and all(agrees(m[k], r[c]) for k, c in (("m", "margin"), ("lo", "margin_lo"),
                                                              ("hi", "margin_hi"), ("p", "p_holm")))
                      and VERDICTS[m["v"]] == r["verdict_holm"])
                if not ok:
                    wrong.append(f"{where} != leaders.csv {r['leader']} - {r['runner_up']} {r['margin']} "
                                 f"[{r['margin_lo']}, {r['margin_hi']}] {r['verdict_holm']} p {r['p_holm']}")
                continue
            r = targets.get((method_key(name), target))
            if cell in ("-", "not reached"):
                if r is not None and r["psnr"] not in ("", "nan"):
                    wrong.append(f"{where}: targets.csv has {r['psnr']}")
                continue
            m = CELL.match(cell)
            if m is None or r is None:
                wrong.append(f"{where}: unparsed, or no tuned row for {method_key(name)!r}")
                continue
            verdict = r.get("verdict_holm") or r.get("verdict")
            checks = [("psnr", "psnr"), ("plo", "psnr_lo"), ("phi", "psnr_hi"),
                      ("d", "d_cat"), ("lo", "d_cat_lo"), ("hi", "d_cat_hi")]
            ok = all(m[k] is None or agrees(m[k], r[c]) for k, c in checks)
            ok = ok and (m["v"] is None or VERDICTS.get(m["v"]) == verdict)
            if not ok:
                wrong.append(f"{where} != targets.csv {r['psnr']} ({r['d_cat']} [{r['d_cat_lo']}, "
                             f"{r['d_cat_hi']}] {verdict})")
    return wrong


TABLES = [(doc, *table) for doc in DOCS for table in tuned_tables(doc)]


def test_the_tuned_tables_are_found_and_each_has_a_report():
    assert len(TABLES) >= 4
    assert sorted({label for _, label, _, _ in TABLES}) == sorted(SOURCES)
    for _, _, header, rows in TABLES:
        assert header[1:] == list(TARGETS) and len(rows) >= 10


@pytest.mark.parametrize("doc,label,header,rows", TABLES, ids=[f"{d}:{t[0]}" for d, *t in TABLES])
def test_every_figure_of_a_tuned_table_is_its_report_s(doc, label, header, rows):
    assert check_table(label, header, rows) == []


def test_a_figure_edited_by_hand_is_caught():
    doc, label, header, rows = TABLES[0]
    row = next(r for r in rows if CELL.match(r[2].replace("*", "")) and "(" in r[2])
    psnr = CELL.match(row[2].replace("*", ""))["psnr"]
    edited = [r if r is not row else [r[0], r[1], r[2].replace(psnr, f"{float(psnr) + 0.2:.1f}", 1), r[3]]
              for r in rows]
    assert len(check_table(label, header, edited)) == 1
    swapped = [r if "leader" not in r[0] else [r[0], *(c.replace("better", "undet.") for c in r[1:])]
               for r in rows]
    assert any("leaders.csv" in w for w in check_table(label, header, swapped))
    assert not math.isnan(float(psnr))


# forecast_search's ablation (docs/results.md): a table's opening bold label -> its report; each arm's row label
# -> the arm(s) its figures are; the rows after "with `forecast_steps` tuned" are the `_fewer` arms.
ABLATIONS = {
    "`forecast_search`: what each part is worth": "results/forecast_ablation",
    "The same ablation on the PixArt model": "results/forecast_ablation/tiny_pixart_shapes",
}
ARMS = {
    "searched, forecast only": ["fs_searched_none"],
    "interval, forecast only": ["fs_interval_none"],
    "interval, every skipped step corrected with CAT's tokens": ["fs_interval_topk"],
    "interval, every skipped step corrected by cluster propagation": ["fs_interval_cluster"],
    "searched, corrected steps allowed (CAT's tokens)": ["fs_searched_topk"],
    "searched, corrected steps allowed (cluster propagation)": ["fs_searched_cluster"],
    "searched, corrected steps allowed (CAT's tokens or cluster propagation)": ["fs_searched_topk",
                                                                                "fs_searched_cluster"],
}
REFERENCE = "fs_searched_none"
ARM_CELL = re.compile(rf"^(?P<psnr>{NUM})(?: \((?:(?P<d>{NUM}) \[(?P<lo>{NUM}), (?P<hi>{NUM})\] (?P<v>[a-z.]+)"
                      rf"|(?P<same>identical|as forecast only))\))?$")


def ablation_tables():
    for bold, _, header, rows in doc_tables("docs/results.md"):
        if header[0].startswith("arm (schedule"):
            yield bold, header, rows


def check_ablation(label, header, rows) -> list[str]:
    with open(ROOT / ABLATIONS[label] / f"targets_vs_{REFERENCE}.csv", newline="") as f:
        arms = {(r["method"], round(float(r["target"]), 2)): r for r in csv.DictReader(f) if r["variant"] == "tuned"}
    wrong, suffix = [], ""
    for row in rows:
        name = re.sub(r" \((`[^)]*|no search)\)$", "", row[0].replace("*", ""))
        if name.startswith("with `forecast_steps` tuned"):
            suffix = "_fewer"
            if any(row[1:]):  # "identical to the arm at 28 steps": every _fewer arm is its base arm
                wrong += [f"{label}: {arm}_fewer at {t} differs from {arm}" for (arm, t), r in arms.items()
                          if not arm.endswith("_fewer") and arms[(arm + "_fewer", t)]["psnr"] != r["psnr"]]
            continue
        for arm in ARMS[name]:
            for column, cell in zip(header[1:], row[1:]):
                target, cell = TARGETS[column], cell.replace("*", "")
                r, m = arms.get((arm + suffix, target)), ARM_CELL.match(cell)
                where = f"{label}, {arm + suffix}, {column}: {cell!r}"
                if r is None or m is None:
                    wrong.append(f"{where}: unparsed, or no row")
                    continue
                d = f"d_{REFERENCE}"
                ok = agrees(m["psnr"], r["psnr"])
                if m["same"]:  # the same images as the forecast alone in the same section
                    ok = ok and r["psnr"] == arms[(REFERENCE + suffix, target)]["psnr"]
                    ok = ok and (suffix or float(r[d]) == 0.0)
                elif m["d"] is not None:
                    ok = ok and all(agrees(m[k], r[c]) for k, c in (("d", d), ("lo", d + "_lo"), ("hi", d + "_hi")))
                    ok = ok and VERDICTS.get(m["v"]) == r["verdict_holm"]
                else:
                    ok = ok and arm + suffix == REFERENCE
                if not ok:
                    wrong.append(f"{where} != {r['psnr']} ({r[d]} [{r[d + '_lo']}, {r[d + '_hi']}] "
                                 f"{r['verdict_holm']})")
    return wrong


ABLATION_TABLES = list(ablation_tables())


def test_the_ablation_tables_are_found_and_each_has_a_report():
    assert sorted(label for label, _, _ in ABLATION_TABLES) == sorted(ABLATIONS)


@pytest.mark.parametrize("label,header,rows", ABLATION_TABLES, ids=[t[0][:30] for t in ABLATION_TABLES])
def test_every_figure_of_an_ablation_table_is_its_report_s(label, header, rows):
    assert check_ablation(label, header, rows) == []


def test_an_ablation_figure_edited_by_hand_is_caught():
    label, header, rows = ABLATION_TABLES[0]
    edited = [[c.replace("-1.50 [", "-1.40 [") for c in r] for r in rows]
    assert edited != rows and len(check_ablation(label, header, edited)) == 1


# The CAT ablations (policy - cat) and the clustering sweeps (cat - no_cluster, so the report's
# no_cluster - cat negated) in docs/results.md: a table's opening bold label -> its paired report and the
# sign of the reported difference; the rows are policies or keep ratios, the columns settings.
PAIRED = {
    "The ablation sweep": ("results/ablation", 1),
    "The same ablation at 1024 tokens": ("results/ablation/tiny_sd3_scenes", 1),
    "The same ablation on the PixArt architecture": ("results/ablation/tiny_pixart_shapes", 1),
    "Does clustering help? (256 tokens)": ("results/clustering/tiny_sd3_shapes", -1),
    "Does clustering help? (1024 tokens)": ("results/clustering/tiny_sd3_scenes", -1),
}
POLICIES = {"no clustering": "cat_no_cluster", "no staleness": "cat_no_staleness", "noise only": "cat_noise_only",
            "random tokens": "cat_random"}
PAIRED_CELL = re.compile(rf"^(?P<d>{NUM}) \[(?P<lo>{NUM}), (?P<hi>{NUM})\]$")


def paired_tables():
    for bold, _, header, rows in doc_tables("docs/results.md"):
        if header[0] in ("policy - cat", "keep ratio", "PSNR (dB)", "SSIM (x 1000)") and bold in PAIRED:
            yield bold, header, rows


def check_paired(label, header, rows) -> list[str]:
    folder, sign = PAIRED[label]
    with open(ROOT / folder / "paired.csv", newline="") as f:
        paired = {(r["method"], float(r["method.config.keep_ratio"]), int(r["method.config.num_clusters"])): r
                  for r in csv.DictReader(f)}
    metric, scale = ("ssim", 1000) if header[0].startswith("SSIM") else ("psnr", 1)
    wrong = []
    for row in rows:
        for column, cell in zip(header[1:], row[1:]):
            if header[0] == "policy - cat":
                keep, clusters = re.match(r"keep ([\d.]+), (\d+) clusters", column).groups()
                method = POLICIES[row[0]]
            else:
                keep, clusters = re.search(r"[\d.]+", row[0]).group(), column.split()[0]
                method = "cat_no_cluster"
            r = paired.get((method, float(keep), int(clusters)))
            m = PAIRED_CELL.match(cell.replace("*", ""))
            where = f"{label}, {header[0]}, {row[0]}, {column}: {cell!r}"
            if r is None or m is None:
                wrong.append(f"{where}: unparsed, or no row")
                continue
            d, lo, hi = (sign * scale * float(r[f"d_{metric}{s}"]) for s in ("", "_lo", "_hi"))
            lo, hi = min(lo, hi), max(lo, hi)
            ok = agrees(m["d"], d) and agrees(m["lo"], lo) and agrees(m["hi"], hi)
            ok = ok and cell.startswith("**") == (r[f"{metric}_verdict"] != "no difference")
            if not ok:
                wrong.append(f"{where} != {d:+.4f} [{lo:+.4f}, {hi:+.4f}] {r[f'{metric}_verdict']}")
    return wrong


PAIRED_TABLES = list(paired_tables())


def test_the_paired_tables_are_found():
    assert sorted({label for label, _, _ in PAIRED_TABLES}) == sorted(PAIRED) and len(PAIRED_TABLES) == 6


@pytest.mark.parametrize("label,header,rows", PAIRED_TABLES,
                         ids=[f"{t[0][:30]}:{t[1][0]}" for t in PAIRED_TABLES])
def test_every_figure_of_a_paired_table_is_its_report_s(label, header, rows):
    assert check_paired(label, header, rows) == []


def test_the_default_run_s_figures_are_its_committed_metrics():
    """README's and docs/results.md's default run is results/default_run/metrics.json."""
    m = json.loads((ROOT / "results/default_run/metrics.json").read_text())
    results = (ROOT / "docs/results.md").read_text()
    table = results[results.index("| | full model | CAT |"):]
    table = table[:table.index("\n\n")]
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.strip("|").split("|")[1:]] for r in table.splitlines()}
    adherence = rows["adherence (judge, 0 to 1)"]
    for cell, key in zip(adherence, ("adherence_full", "adherence")):
        value, lo, hi = re.match(r"([\d.]+) \[([\d.]+), ([\d.]+)\]", cell).groups()
        assert agrees(value, m[key]) and agrees(lo, m[key + "_lo"]) and agrees(hi, m[key + "_hi"]), cell
    psnr, lo, hi, ssim = re.match(r"([\d.]+) dB \[([\d.]+), ([\d.]+)\] / ([\d.]+)",
                                  rows["PSNR / SSIM against the full model"][1]).groups()
    assert agrees(psnr, m["psnr"]) and agrees(lo, m["psnr_lo"]) and agrees(hi, m["psnr_hi"]) and agrees(ssim, m["ssim"])
    full, method = rows["transformer MACs per image"]
    assert float(full) == float(f"{m['transformer_macs_full']:.2e}")
    assert method.startswith(f"{m['transformer_macs']:.2e}".replace("e+0", "e"))
    assert f"({100 * m['macs_reduction']:.1f}%" in method
    full, method = next(v for k, v in rows.items() if k.startswith("end-to-end latency"))
    assert full == f"{m['latency_full_s']:.2f} s" and method.startswith(f"{m['latency_s']:.2f} s ({m['speedup']:.2f}x")
    assert rows["CAT's caches (`cache_bytes`)"][1] == f"{m['cache_bytes'] / 2 ** 20:.1f} MiB"
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert (f"{m['psnr']:.1f} dB [{m['psnr_lo']:.1f}, {m['psnr_hi']:.1f}] PSNR / {m['ssim']:.3f} SSIM" in readme)
    assert f"{100 * m['macs_reduction']:.1f}% fewer transformer MACs** ({m['speedup']:.2f}x end to end" in readme
    assert f"({m['adherence']:.3f} against {m['adherence_full']:.3f})" in readme


def test_the_pixart_default_run_s_figures_are_its_committed_metrics():
    """README's and docs/models.md's `python run.py model=tiny_pixart_shapes` is
    results/default_run/tiny_pixart_shapes/metrics.json (and the SD3 default's adherence beside it, its own)."""
    m = json.loads((ROOT / "results/default_run/tiny_pixart_shapes/metrics.json").read_text())
    sd3 = json.loads((ROOT / "results/default_run/metrics.json").read_text())
    models = " ".join((ROOT / "docs/models.md").read_text().split())
    readme = " ".join((ROOT / "README.md").read_text().split())
    psnr = f"**{m['psnr']:.1f} dB [{m['psnr_lo']:.1f}, {m['psnr_hi']:.1f}]**"
    reduction = f"{100 * m['macs_reduction']:.1f}% fewer"
    assert f"PSNR {psnr} to the full model (SSIM {m['ssim']:.3f}), {reduction} transformer MACs, " \
           f"{m['speedup']:.2f}x end to end" in models
    assert f"adherence {m['adherence']:.3f} against the full model's {m['adherence_full']:.3f}" in models
    assert f"(adherence {m['adherence_full']:.2f}; SD3 default {sd3['adherence_full']:.2f})" in readme
    assert f"keeps {psnr} with {reduction} MACs ({m['speedup']:.2f}x)" in readme


def test_the_readme_s_speed_range_holds_every_recorded_run():
    """The README quotes CAT's eager and compiled speedups as ranges over the benchmark's runs; every run recorded
    in results/speed/ (`bench_speed.py --out`) lies inside them, at the README's precision."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    eager = re.search(r"give \*\*(\d\.\d+)-(\d\.\d+)x\*\* in wall clock", readme).groups()
    compiled = re.search(r"(\d\.\d+)-(\d\.\d+)x compiled", readme).groups()
    runs = [json.loads(p.read_text()) for p in sorted((ROOT / "results/speed").glob("*.json"))]
    assert runs
    for run in runs:
        r = run["result"]
        assert run["command"][:3] == ["scripts/bench_speed.py", "--compile", "--schedule-repeats"]
        for (low, high), value in ((eager, r["speedup_eager"]), (compiled, r["speedup_compiled"])):
            assert float(low) - 0.005 <= value <= float(high) + 0.005, (low, high, value)
        assert f"{r['macs_speedup_schedule']:.2f}x fewer MACs" in readme

"""`scripts/sweep_status.py`: a sweep in flight's cells and their state, read from what Hydra and the run
lifecycle leave in the sweep folder, and the sweep's report over its done cells in `interim/`."""

import datetime as dt
import json
import os
import shutil
import time

import pandas as pd
import pytest
import yaml

from experiments.reports.results import find_runs
from scripts import make_tables, sweep_status

MULTIRUN = {
    "hydra": {"sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                          "max_batch_size": None, "params": {"+note": "a,b,c,d,e"}},
              "overrides": {"task": ["data.limit=2", "reuse_other_code=true", "+note=a,b,c,d"]}},
    "paired_reference": None, "contrast": None,
}


def cell(sweep, name, overrides, status=None, log=(), old=False):
    folder = sweep / name
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    if status:
        (folder / "status.json").write_text(json.dumps(status))
    (folder / "run.log").write_text("".join(f"[{t:%Y-%m-%d %H:%M:%S},000][x][INFO] - line\n" for t in log))
    if old:  # left by an earlier run of the sweep
        past = time.time() - 7200
        os.utime(folder, (past, past))
    return folder


def test_cells_are_the_sweepers_crossing_and_each_has_its_state(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(MULTIRUN))
    now = dt.datetime.now().replace(microsecond=0)
    common = ("data.limit=2", "reuse_other_code=True")  # as Hydra hands it to the job (true -> True)
    cell(sweep, "a-1", ("+note=a", *common), {"status": "done"}, log=[now, now + dt.timedelta(seconds=75)])
    cell(sweep, "a-0", ("+note=a", *common), {"status": "done"}, old=True)  # the same cell by other code
    cell(sweep, "b-1", ("+note=b", *common), {"status": "failed", "error": "RuntimeError: boom"})
    cell(sweep, "c-1", ("+note=c", *common), log=[now])  # running, or stopped by a kill
    cell(sweep, "d-0", ("+note=d", *common), old=True)  # an earlier run's unfinished folder
    (sweep / ".cells").write_text("a-1\nb-1\n")
    cells, _, planned = sweep_status.status(sweep)
    assert planned
    # the command line's +note (a..d) replaces the sweep file's (a..e), as Hydra's basic sweeper does
    assert [c.overrides[0] for c in cells] == ["+note=a", "+note=b", "+note=c", "+note=d"]
    assert [c.state for c in cells] == ["done", "failed", "unfinished", "not started"]
    assert cells[0].folder.name == "a-1" and [f.name for f in cells[0].earlier] == ["a-0"]
    assert cells[0].seconds == 75 and cells[1].error == "RuntimeError: boom"
    assert [f.name for f in cells[3].earlier] == ["d-0"]
    sweep_status.main([str(sweep)])
    out = capsys.readouterr().out
    assert "4 cells planned" in out and "1 done, 1 failed, 1 unfinished, 1 not started" in out
    assert "every cell: data.limit=2 reuse_other_code=True" in out and "0:01:15" in out


def test_the_interim_report_covers_the_done_cells_and_stays_out_of_the_tables(tiny_run, tmp_path, capsys):
    sweep = tmp_path / "outputs" / "sweeps" / "s"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(MULTIRUN))
    for note in "ab":
        folder = sweep / f"{note}-1"
        shutil.copytree(tiny_run.run_dir, folder)
        (folder / ".hydra").mkdir(exist_ok=True)
        (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"+note={note}", "data.limit=2",
                                                                          "reuse_other_code=True"]))
    (sweep / ".cells").write_text("a-1\nb-1\n")
    sweep_status.main([str(sweep), "--report"])
    assert "interim report of 2 done cell(s)" in capsys.readouterr().out
    interim = sweep / "interim"
    assert sorted(pd.read_csv(interim / "summary.csv").cell) == ["a-1", "b-1"]
    assert (interim / "summary.md").read_text().startswith("> **Interim report**: 2 of 4 cells")
    assert "a-1" in (interim / "INTERIM.md").read_text()
    # the runs are found once, in the sweep; make_tables makes no table of the interim report
    assert sorted(p.name for p in find_runs(tmp_path / "outputs")) == ["a-1", "b-1"]
    with pytest.raises(SystemExit, match="no table written"):  # the sweep's own summary is not written yet
        make_tables.main([str(tmp_path / "outputs"), "--out", str(tmp_path / "tables")])
    assert not list((tmp_path / "tables").glob("sweep_interim*"))
    # a second report replaces the first: a cell no longer done leaves it
    (sweep / ".cells").write_text("a-1\n")
    sweep_status.main([str(sweep), "--report"])
    assert "b-1" not in (sweep / "interim" / "INTERIM.md").read_text()
    assert not (sweep / "interim" / "b-1").exists()


def test_the_time_left_is_the_cells_not_done_at_the_mean_of_those_computed_whole_in_this_run(tmp_path):
    now = dt.datetime.now().replace(microsecond=0)
    stamp = lambda t, text="line": f"[{t:%Y-%m-%d %H:%M:%S},000][x][INFO] - {text}\n"  # noqa: E731
    whole, resumed, reused = (tmp_path / name for name in ("whole", "resumed", "reused"))
    for folder, lines in ((whole, [stamp(now), stamp(now + dt.timedelta(seconds=90))]),
                          (resumed, [stamp(now - dt.timedelta(hours=1)), stamp(now + dt.timedelta(seconds=9))]),
                          (reused, [stamp(now, "x is already done (same configuration, same code)")])):
        folder.mkdir()
        (folder / "run.log").write_text("".join(lines))
    assert sweep_status.read_log(whole, now) == (90, True)
    assert sweep_status.read_log(resumed, now) == (0, False)  # its own lines in this run only, and not whole
    assert sweep_status.read_log(reused, now) == (0, False)
    Cell = sweep_status.Cell
    cells = [Cell(("a",), "done", seconds=60, whole=True), Cell(("b",), "done", seconds=180, whole=True),
             Cell(("c",), "done", seconds=5), Cell(("d",), "failed", seconds=1, whole=True),
             Cell(("e",), "unfinished", seconds=30), Cell(("f",), "not started")]
    assert sweep_status.remaining(cells).startswith("  about 0:03:30 left for 2 cell(s) at the mean of the 2 done")
    assert sweep_status.remaining(cells[1:]) is None  # one cell is no mean


def test_a_sweep_whose_parameters_cannot_be_expanded_lists_its_folders(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    odd = {"hydra": {"sweeper": {"_target_": MULTIRUN["hydra"]["sweeper"]["_target_"],
                                 "params": {"+note": "${no_such_resolver:x}"}}, "overrides": {"task": []}}}
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(odd))
    cell(sweep, "a-1", ("+note=a",), {"status": "done"})
    (sweep / ".cells").write_text("a-1\n")
    cells, _, planned = sweep_status.status(sweep)
    assert not planned and [(c.overrides, c.state) for c in cells] == [(("+note=a",), "done")]
    assert "could not be expanded" in capsys.readouterr().err


def test_a_cell_folder_whose_overrides_are_unreadable_is_named_and_the_others_listed(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(MULTIRUN))
    cell(sweep, "a-1", ("+note=a", "data.limit=2", "reuse_other_code=True"))
    for name, text in (("cut", "- [+note=b\n"), ("nested", "- [+note=b, x]\n")):
        (sweep / name / ".hydra").mkdir(parents=True)
        (sweep / name / ".hydra" / "overrides.yaml").write_text(text)
    sweep_status.main([str(sweep)])
    out, err = capsys.readouterr()
    assert "0 done, 0 failed, 1 unfinished, 3 not started" in out and "Traceback" not in err
    assert f"{sweep / 'cut' / '.hydra' / 'overrides.yaml'} is unreadable (ParserError" in err
    assert "nested/.hydra/overrides.yaml is unreadable (not a list of overrides)" in err


@pytest.mark.parametrize("text", ["hydra: [oops\n", "- a\n- b\n"])
def test_an_unreadable_multirun_file_lists_the_folders_and_makes_no_report(tmp_path, capsys, text):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text(text)
    with pytest.raises(SystemExit, match="multirun.yaml is unreadable .*: no interim report written"):
        sweep_status.main([str(sweep), "--report"])
    out, err = capsys.readouterr()
    assert "0 cell folders (the sweeper's parameters could not be expanded)" in out
    assert len(err.strip().splitlines()) == 1 and not (sweep / "interim").exists()


def test_a_new_interim_report_leaves_none_of_the_last_ones_figures(tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "interim" / "figures").mkdir(parents=True)
    (sweep / "interim" / "figures" / "pareto_psnr.png").write_text("old")
    (sweep / "interim" / "summary.md").write_text("old")
    sweep_status.interim_report(sweep, [sweep_status.Cell(("+note=a",))], None, None)
    assert sorted(p.name for p in (sweep / "interim").iterdir()) == ["INTERIM.md"]
    assert "0 of 1 cells done" in (sweep / "interim" / "INTERIM.md").read_text()


def test_the_folder_of_the_sweeps_names_the_sweeps_in_it(tmp_path):
    for name in ("peers-m", "ablation-m"):
        (tmp_path / "sweeps" / name).mkdir(parents=True)
        (tmp_path / "sweeps" / name / "multirun.yaml").write_text(yaml.safe_dump(MULTIRUN))
    with pytest.raises(SystemExit, match="no multirun.yaml .*; the sweeps in it: ablation-m, peers-m$"):
        sweep_status.main([str(tmp_path / "sweeps")])


def test_an_ended_cell_without_a_readable_status_says_so(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(MULTIRUN))
    folder = cell(sweep, "a-1", ("+note=a", "data.limit=2", "reuse_other_code=True"))
    (folder / "status.json").write_text('{"status": "do')
    (sweep / ".cells").write_text("a-1\n")
    cells, _, _ = sweep_status.status(sweep)
    assert (cells[0].state, cells[0].error) == ("failed", "no readable status.json")

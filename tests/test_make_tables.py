"""`scripts/make_tables.py` on results it cannot tabulate: a path that is no folder, runs none of which is done, a
truncated metrics.json, an empty or unreadable sweep summary. Each is named in one line; no table is written
from zero rows, and no row is written without its metrics. Fake run folders, no model runs."""

import json

import pytest
import yaml

from scripts import make_tables


def run(folder, status="done", metrics='{"psnr": 30.0, "num_images": 2}'):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "m", "steps": 4}, "data": {"name": "d"},
                                                        "method": {"name": "cat"}}))
    if status:
        (folder / "status.json").write_text(json.dumps({"status": status}))
    (folder / "metrics.json").write_text(metrics)
    return folder


def tables(root, out, capsys):
    with pytest.raises(SystemExit) as stop:
        make_tables.main([str(root), "--out", str(out)])
    return str(stop.value), capsys.readouterr().err


@pytest.mark.parametrize("what", ["missing", "file"])
def test_a_root_that_is_no_folder_is_named(tmp_path, capsys, what):
    root = tmp_path / "root"
    if what == "file":
        root.write_text("x")
    said, _ = tables(root, tmp_path / "out", capsys)
    assert said.startswith(f"{root}: not a folder") and not (tmp_path / "out").exists()


def test_runs_none_of_which_is_done_write_no_table_and_say_why(tmp_path, capsys):
    run(tmp_path / "runs" / "a", status="failed")
    run(tmp_path / "runs" / "b", status=None)
    said, err = tables(tmp_path / "runs", tmp_path / "out", capsys)
    assert "no table written" in said and not (tmp_path / "out").exists()
    assert "2 of 2 run(s) left out, not done (failed: 1, no readable status.json: 1)" in err


def test_a_run_whose_records_are_truncated_is_named_and_is_no_row(tmp_path, capsys):
    run(tmp_path / "runs" / "good")
    run(tmp_path / "runs" / "cut", metrics='{"psnr": 3')
    (run(tmp_path / "runs" / "cut-config") / "config.yaml").write_text("model: [m\n")
    (run(tmp_path / "runs" / "list-config") / "config.yaml").write_text("- m\n")
    said, err = tables(tmp_path / "runs", tmp_path / "out", capsys)
    assert "3 run(s) or sweep(s) unreadable or empty" in said and "Traceback" not in err
    assert f"{tmp_path / 'runs' / 'cut'}: metrics.json is truncated or not JSON; the run is left out" in err
    assert "cut-config: config.yaml is unreadable (ParserError)" in err and "list-config: config.yaml is not a" in err
    assert (tmp_path / "out" / "main.csv").read_text().count("\n") == 2  # the header and the good run
    (tmp_path / "runs" / "good" / "metrics.json").write_text("")
    said, _ = tables(tmp_path / "runs", tmp_path / "out", capsys)
    assert said == f"{tmp_path / 'runs'}: none of its 4 run(s) can be read (named above)"


@pytest.mark.parametrize("text", ["", "cell,method,psnr\n"])
def test_an_empty_sweep_summary_makes_no_sweep_table(tmp_path, capsys, text):
    run(tmp_path / "runs" / "good")
    (tmp_path / "sweeps" / "s").mkdir(parents=True)
    (tmp_path / "sweeps" / "s" / "summary.csv").write_text(text)
    said, err = tables(tmp_path, tmp_path / "out", capsys)
    assert "1 run(s) or sweep(s) unreadable or empty" in said and "summary.csv" in err and "Traceback" not in err
    assert (tmp_path / "out" / "main.csv").exists() and not (tmp_path / "out" / "sweep_s.csv").exists()


def test_an_out_that_is_a_file_is_refused_before_anything_is_read(tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    for out in (tmp_path / "a-file", tmp_path / "a-file" / "tables"):
        said, _ = tables(tmp_path / "nothing", out, capsys)
        assert said.startswith(f"--out {out}: ") and "a file; give a folder for the tables" in said


def test_sweeps_that_share_a_folder_name_each_get_their_own_table(tmp_path, capsys):
    """results/<group>/<model>/summary.csv: two groups on one model wrote one sweep_<model> table over the other,
    and the extra reports of both into the same names."""
    for group, cells in (("clustering", 3), ("fixes", 2)):
        (tmp_path / group / "m").mkdir(parents=True)
        (tmp_path / group / "m" / "summary.csv").write_text("cell,psnr\n" + "c,30\n" * cells)
        (tmp_path / group / "m" / "trends.md").write_text(group)
    (tmp_path / "peers").mkdir()
    (tmp_path / "peers" / "summary.csv").write_text("cell,psnr\nc,30\n")
    run(tmp_path / "runs" / "good")
    make_tables.main([str(tmp_path), "--out", str(tmp_path / "out")])
    out = tmp_path / "out"
    assert (out / "sweep_clustering_m.csv").read_text().count("\n") == 4 and (out / "sweep_peers.csv").exists()
    assert (out / "sweep_fixes_m_trends.md").read_text() == "fixes" and not (out / "sweep_m.csv").exists()

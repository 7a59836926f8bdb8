"""`scripts/make_figures.py` on results it cannot draw: an unknown quality, a path that is no folder, runs without
the MACs a quality figure plots against, a run whose images are gone. Each is named in one line; no figure is
drawn from zero points (a blank axis looks like a real figure). Fake run folders, no model runs."""

import json

import pytest
import yaml

from scripts import make_figures


def run(folder, metrics):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "m", "steps": 4}, "data": {"name": "d"},
                                                        "method": {"name": "cat"}}))
    (folder / "status.json").write_text(json.dumps({"status": "done"}))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def figures(tmp_path, capsys, *args):
    with pytest.raises(SystemExit) as stop:
        make_figures.main([*map(str, args), "--out", str(tmp_path / "out")])
    return str(stop.value), capsys.readouterr().err


@pytest.mark.parametrize("args, said", [(["--quality", "psnrr"], "--quality 'psnrr' is unknown; allowed: psnr"),
                                        (["--grid-prompts", "0"], "--grid-prompts 0 is invalid")])
def test_an_unknown_option_value_is_refused_before_anything_is_read(tmp_path, capsys, args, said):
    assert figures(tmp_path, capsys, tmp_path / "nothing", *args)[0].startswith(said)


def test_a_root_that_is_no_folder_is_named(tmp_path, capsys):
    assert figures(tmp_path, capsys, tmp_path / "nothing")[0].startswith(f"{tmp_path / 'nothing'}: not a folder")


def test_runs_without_macs_draw_no_blank_quality_figure(tmp_path, capsys):
    run(tmp_path / "runs" / "a", {"psnr": 30.0})  # no MACs counted
    run(tmp_path / "runs" / "b", {"psnr": 31.0, "transformer_macs": 1.0})  # no full model's count
    said, _ = figures(tmp_path, capsys, tmp_path / "runs")
    assert "no figure made" in said and not (tmp_path / "out").exists()


def test_a_run_whose_full_model_images_are_gone_is_named_not_a_traceback(tmp_path, capsys):
    folder = run(tmp_path / "runs" / "a", {"psnr": 30.0, "transformer_macs": 1.0, "transformer_macs_full": 2.0})
    (folder / "images" / "cat").mkdir(parents=True)
    said, err = figures(tmp_path, capsys, tmp_path / "runs")
    assert "1 run(s) or figure(s) left out" in said and "its grid is left out" in err
    assert (tmp_path / "out" / "quality_vs_macs_psnr.png").exists()


def test_a_run_folder_as_root_names_its_figures_by_the_run(tmp_path, capsys, monkeypatch):
    folder = run(tmp_path / "r1", {"psnr": 30.0})
    (folder / "selection.npz").write_bytes(b"")
    drawn = []
    monkeypatch.setattr(make_figures, "selection_figure", lambda npz, path, pdf: drawn.append(path.name) or path)
    make_figures.main([str(folder), "--out", str(tmp_path / "out")])
    assert drawn == ["selection_r1.png"]


def test_an_out_that_is_a_file_is_refused_before_anything_is_read(tmp_path, capsys):
    (tmp_path / "out").write_text("x")
    said, _ = figures(tmp_path, capsys, tmp_path / "nothing")
    assert said == f"--out {tmp_path / 'out'}: a file; give a folder for the figures"

"""`scripts/feature_change.py`: what it cannot measure is refused before any model loads, and its figure is drawn
only from the csv files it can read (one it cannot is named, not a traceback after the model has run)."""

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "feature_change", Path(__file__).resolve().parents[1] / "scripts" / "feature_change.py")
feature_change = importlib.util.module_from_spec(spec)
spec.loader.exec_module(feature_change)


def composed(*overrides):
    from hydra import compose, initialize_config_dir

    from experiments.base.config_files import CONF

    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("override, said", [
    ("model.steps=1", "model.steps=1 is invalid; allowed: an integer >= 2"),
    ("data.limit=0", "data.limit=0 is invalid; allowed: a positive count, -1 (every prompt) or null"),
    ("data.limit=-4", "data.limit=-4 is invalid"),
])
def test_what_cannot_be_measured_is_one_line(override, said):
    with pytest.raises(SystemExit, match=said.replace("(", r"\(").replace(")", r"\)")):
        feature_change.check(composed(override))


def test_data_limit_is_read_as_run_py_reads_it():
    """-1 is every prompt (it was 1 prompt); null keeps the default of 8."""
    assert feature_change.prompt_count(-1) is None and feature_change.prompt_count(None) == 8


def test_the_figure_leaves_out_and_names_a_csv_it_cannot_draw(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(feature_change, "OUT", tmp_path)
    (tmp_path / "good-4.csv").write_text("model,step,output_change,block_change,sigma\nm,0,,,1.0\nm,1,0.2,0.1,0.9\n")
    (tmp_path / "old-4.csv").write_text("model,step,sigma\nm,0,1.0\n")
    (tmp_path / "empty-4.csv").write_text("")
    assert [f.model.iloc[0] for f in feature_change.curves()] == ["m"]
    err = capsys.readouterr().err
    assert "old-4.csv lacks output_change, block_change" in err and "empty-4.csv is unreadable (EmptyDataError" in err
    feature_change.figure()
    assert (tmp_path / "feature_change.png").exists()


def test_no_readable_csv_draws_no_empty_figure(tmp_path, monkeypatch):
    monkeypatch.setattr(feature_change, "OUT", tmp_path)
    feature_change.figure()
    assert not (tmp_path / "feature_change.png").exists()

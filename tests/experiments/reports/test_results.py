"""Tables tell runs apart: the settings that vary among the rows are columns (prompt set by content, seed,
guidance, batch size, resolution, effective dtype, device, code), and the same run found twice is one row.
Built on fake run folders (config.yaml, run_key.json, status.json, metrics.json), no model runs."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from experiments.reports import levels
from experiments.reports.paired import paired_against
from experiments.reports.results import SETTINGS, load_runs, run_settings
from experiments.reports.sweeps import collect, trends
from experiments.run.keys import digest
from scripts import make_figures
from scripts.make_tables import main_table


A, B = "a1" * 32, "b2" * 32  # prompt-list digests
CODE, OTHER = "c0de" * 16, "01d" * 21 + "0"


def make_run(folder: Path, *, prompts=A, path="a.txt", seed=0, guidance=4.5, batch_size=4, height=256, width=256,
             dtype="auto", model_dtype="float16", device="cpu", method="cat", code=None, reused_from=None,
             overrides=(), metrics=None) -> Path:
    cfg = {"task": "generate", "seed": seed, "batch_size": batch_size, "dtype": dtype, "device": device,
           "model": {"name": "tiny", "steps": 20, "guidance_scale": guidance, "height": height, "width": width,
                     "dtype": model_dtype},
           "data": {"name": "shapes", "path": path},
           "method": {"name": method, "knob": "keep_ratio", "config": {"keep_ratio": 0.3}}}
    material = {"task": "generate", "model": cfg["model"], "method": cfg["method"],
                "data": {"name": "shapes", "prompts_sha256": prompts}, "seed": seed, "dtype": dtype,
                "device": device, "batch_size": batch_size}
    if code:
        material["code"] = {"sha256": code, "torch": "2", "diffusers": "0", "transformers": "4"}
    record, status = {"key": digest(material), "material": material, "provenance": {}}, {"status": "done"}
    if reused_from:
        record["reused_code_from"] = status["reused_code_from"] = reused_from
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    (folder / "run_key.json").write_text(json.dumps(record))
    (folder / "status.json").write_text(json.dumps(status))
    (folder / "metrics.json").write_text(json.dumps(metrics or {"psnr": 30.0, "num_images": 4}))
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    return folder


def settings_shown(table: pd.DataFrame) -> list[str]:
    return [c for c in (*SETTINGS, "run_key") if c in table]


def test_runs_on_two_prompt_files_are_two_rows_told_apart_by_the_prompt_set(tmp_path):
    make_run(tmp_path / "runs" / "x" / "r1", prompts=A, path="a.txt", metrics={"psnr": 38.76})
    make_run(tmp_path / "runs" / "x" / "r2", prompts=B, path="b.txt", metrics={"psnr": 34.87})
    table = main_table(load_runs(tmp_path))
    assert len(table) == 2 and settings_shown(table) == ["prompt_set"]
    assert dict(zip(table.prompt_set, table.psnr)) == {"shapes:a1a1a1a1": 38.76, "shapes:b2b2b2b2": 34.87}


@pytest.mark.parametrize("change, column, values", [
    ({"seed": 1}, "seed", {0, 1}),
    ({"guidance": 7.0}, "guidance", {4.5, 7.0}),
    ({"batch_size": 1}, "batch_size", {4, 1}),
    ({"height": 512}, "resolution", {"256x256", "512x256"}),
    ({"dtype": "float16"}, "dtype", {"float32", "float16"}),  # auto on the CPU ran in float32
    ({"device": "cuda"}, "dtype", {"float32", "float16"}),  # auto on an accelerator: the model's dtype
])
def test_a_setting_is_a_column_only_where_it_varies(tmp_path, change, column, values):
    make_run(tmp_path / "r1")
    make_run(tmp_path / "r2", **change, metrics={"psnr": 31.0})
    table = main_table(load_runs(tmp_path))
    assert len(table) == 2 and column in settings_shown(table)
    assert set(table[column]) == values
    assert set(settings_shown(table)) <= {column, "device"}


def test_the_recorded_dtype_is_the_effective_one(tmp_path):
    assert run_settings(make_run(tmp_path / "cpu", dtype="auto", model_dtype="bfloat16"))["dtype"] == "float32"
    assert run_settings(make_run(tmp_path / "gpu", dtype="auto", model_dtype="bfloat16", device="cuda"))["dtype"] \
        == "bfloat16"
    assert run_settings(make_run(tmp_path / "set", dtype="float16", device="cuda"))["dtype"] == "float16"


def test_a_run_without_records_has_empty_settings(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "metrics.json").write_text('{"psnr": 30.0}')
    settings = run_settings(tmp_path / "old")
    assert settings.pop("stale_code") is False and set(settings.values()) == {None}


def test_code_is_a_column_where_it_varies_and_stale_code_where_a_run_is_stale(tmp_path):
    make_run(tmp_path / "r1", code=CODE)
    make_run(tmp_path / "r2", code=CODE, seed=1)
    assert settings_shown(main_table(load_runs(tmp_path))) == ["seed"]
    make_run(tmp_path / "r3", code=OTHER, seed=2)
    make_run(tmp_path / "r4", seed=3)  # an older run: no code recorded
    table = main_table(load_runs(tmp_path)).set_index("seed").sort_index()
    assert "stale_code" not in table
    assert list(table.code.fillna("")) == [CODE[:8], CODE[:8], OTHER[:8], ""]
    make_run(tmp_path / "r5", code=CODE, reused_from=OTHER, seed=4)
    table = main_table(load_runs(tmp_path)).set_index("seed").sort_index()
    assert list(table.stale_code) == [False, False, False, False, True]


def test_the_same_run_found_twice_is_one_row_and_a_log_line(tmp_path, caplog):
    make_run(tmp_path / "outputs" / "runs" / "x" / "r1")
    make_run(tmp_path / "outputs" / "runs" / "x" / "r2", seed=1)
    shutil.copytree(tmp_path / "outputs", tmp_path / "outputs_copy")
    (tmp_path / "outputs_copy" / "runs" / "x" / "r2" / "metrics.json").write_text('{"psnr": 29.0}')
    with caplog.at_level(logging.WARNING):
        table = main_table(load_runs(tmp_path))
    assert len(table) == 2 and list(table.psnr) == [30.0, 30.0]
    setting_cols = [c for c in table.columns if c not in ("psnr", "num_images")]
    assert not table[setting_cols].astype(str).duplicated().any()
    lines = [r.getMessage() for r in caplog.records if "same run twice" in r.getMessage()]
    assert len(lines) == 2
    assert all(f"keeping {tmp_path / 'outputs' / 'runs'}" in m and "leaving out " in m and "outputs_copy" in m
               for m in lines)
    assert sum("their metrics differ" in m for m in lines) == 1


def test_runs_that_tie_on_every_column_but_differ_in_their_key_keep_both_rows(tmp_path, caplog):
    make_run(tmp_path / "r1")
    make_run(tmp_path / "r2", method="cat")  # same columns...
    record = json.loads((tmp_path / "r2" / "run_key.json").read_text())
    record["key"] = "f" * 64  # ...but a key that differs in something no column shows
    (tmp_path / "r2" / "run_key.json").write_text(json.dumps(record))
    table = main_table(load_runs(tmp_path))
    assert len(table) == 2 and settings_shown(table) == ["run_key"] and "f" * 12 in set(table.run_key)
    assert not caplog.records


def test_the_sweep_summary_gets_the_same_columns(tmp_path):
    sweep = tmp_path / "sweep"
    for prompts, path in ((A, "a.txt"), (B, "b.txt")):
        for method in ("cat", "cat_random"):
            make_run(sweep / f"{method}-{path}", prompts=prompts, path=path, method=method, code=CODE,
                     reused_from=OTHER if method == "cat_random" else None,
                     overrides=[f"method={method}", f"data.path={path}"])
    frame = collect(sweep)
    assert len(frame) == 4
    assert settings_shown(frame) == ["prompt_set", "stale_code"]
    assert set(zip(frame["data.path"], frame.prompt_set)) == {("a.txt", "shapes:a1a1a1a1"),
                                                              ("b.txt", "shapes:b2b2b2b2")}
    assert dict(zip(frame.method, frame.stale_code)) == {"cat": False, "cat_random": True}
    text = trends(frame)  # the prompt set only renames the swept data.path: no table of its own
    assert "### by data.path" in text and "### by method" in text and "### by prompt_set" not in text


def test_a_swept_setting_reads_as_its_effective_value(tmp_path):
    sweep = tmp_path / "sweep"
    make_run(sweep / "auto", dtype="auto", overrides=["dtype=auto"])
    make_run(sweep / "f16", dtype="float16", overrides=["dtype=float16"])
    frame = collect(sweep)
    assert list(frame.columns[:2]) == ["cell", "dtype"] and list(frame.dtype) == ["float32", "float16"]


def test_a_prompt_set_that_changed_under_the_same_overrides_is_an_axis_and_pairs_stay_on_it(tmp_path):
    rng = np.random.default_rng(0)
    sweep = tmp_path / "sweep"
    base = {A: rng.normal(35, 3, 16), B: rng.normal(25, 3, 16)}
    for prompts, tag in ((A, "old"), (B, "new")):  # the prompt file was edited between the two runs
        for method, shift in (("cat", 0.0), ("cat_random", -2.0)):
            cell = make_run(sweep / f"{method}-{tag}", prompts=prompts, method=method, overrides=[f"method={method}"])
            values = base[prompts] + shift + rng.normal(0, 0.1, 16)
            (cell / "records.jsonl").write_text("".join(json.dumps({"index": i, "variant": method, "psnr": v}) + "\n"
                                                        for i, v in enumerate(values)))
    frame = collect(sweep)
    assert settings_shown(frame) == ["prompt_set"] and "### by prompt_set" in trends(frame)
    paired = paired_against(frame, sweep, metrics=("psnr",)).set_index("cell")
    assert dict(paired.reference) == {"cat_random-new": "cat-new", "cat_random-old": "cat-old"}
    assert paired.d_psnr.to_numpy() == pytest.approx([-2, -2], abs=0.2)


def test_a_copied_sweep_cell_is_one_row(tmp_path, caplog):
    sweep = tmp_path / "sweep"
    make_run(sweep / "cat", overrides=["method=cat"])
    make_run(sweep / "random", method="cat_random", overrides=["method=cat_random"])
    shutil.copytree(sweep / "cat", sweep / "cat_copy")
    with caplog.at_level(logging.WARNING):
        frame = collect(sweep)
    assert list(frame.cell) == ["cat", "random"]
    assert any("same run twice" in r.getMessage() and r.getMessage().endswith("keeping cat, leaving out cat_copy")
               for r in caplog.records)


def test_settings_that_do_not_vary_leave_a_level_sweep_a_level_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    for method in ("cat", "fora"):
        for level in range(2):
            make_run(sweep / f"{method}{level}", method=method, code=CODE, overrides=[f"method={method}",
                     f"level={level}"], metrics={"psnr": 30.0 - level, "macs_reduction": 0.3 + 0.2 * level})
    (sweep / "failed").mkdir()  # failed before its config was written: no settings recorded
    (sweep / "failed" / "status.json").write_text('{"status": "failed", "error": "ConfigError: no"}')
    frame = collect(sweep)
    assert settings_shown(frame) == [] and len(frame) == 5
    assert levels.is_level_sweep(frame)


def test_the_quality_figure_never_joins_runs_on_two_prompt_sets(tmp_path, monkeypatch):
    for prompts in (A, B):
        for keep, macs in ((0.3, 3.0), (0.5, 2.0)):
            make_run(tmp_path / f"{prompts[:2]}-{keep}", prompts=prompts, metrics={
                "psnr": 30.0 + keep, "transformer_macs": macs, "transformer_macs_full": 4.0})
    monkeypatch.setattr(make_figures, "save", lambda fig, path, pdf: fig)
    fig = make_figures.quality_vs_macs(load_runs(tmp_path), "psnr", tmp_path)
    lines = [line for line in fig.axes[0].get_lines() if line.get_label().startswith("method=")]
    assert sorted(line.get_label() for line in lines) == ["method=cat, prompt_set=shapes:a1a1a1a1",
                                                         "method=cat, prompt_set=shapes:b2b2b2b2"]
    assert all(len(line.get_xdata()) == 2 for line in lines)

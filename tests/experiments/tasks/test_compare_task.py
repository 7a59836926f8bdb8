"""`task=compare` end to end in process on a random-weight model: settings are chosen on calibration prompts
only, evaluated with executed MACs counted per prompt on the evaluated batches, and a rerun reuses them."""

import json

import pytest

from experiments.base.config_files import ConfigError
from experiments.lifecycle import launch

TINY = ("debug=tiny", "task=compare", "data.limit=4", "batch_size=2", "compare.calibration_prompts=2")

pytestmark = pytest.mark.usefixtures("one_thread")


def read(run_dir, name):
    return json.loads((run_dir / name).read_text())


@pytest.mark.slow  # end to end, about 5-17 s: CI's second step
def test_a_continuous_knob_is_set_to_each_target_and_tuned_on_calibration_prompts_only(tmp_path):
    run_dir, metrics = launch.run(*TINY, "method=ras", "compare.variant=tuned", "compare.targets=[0.2,0.35]",
                                  "+method.tune.high_ratio=[0.0]", f"output_root={tmp_path}")
    plan = read(run_dir, "compare.json")
    assert metrics["targets_reached"] == 2 and set(plan["targets"]) == {"0.2", "0.35"}
    assert (metrics["calibration_prompts"], metrics["evaluation_prompts"]) == (2, 4)  # in the sweep's summary
    evaluated = {i for key in plan["cells"] for i in read(run_dir / "cells", f"{key}.json")["indices"]}
    calibrated = {i for path in (run_dir / "calibration").glob("*.json") for i in read(path.parent, path.name)["indices"]}
    assert evaluated == {0, 1, 2, 3} and calibrated and not calibrated & evaluated  # the calibration split
    for target, chosen in plan["targets"].items():
        assert chosen["how"].startswith(("best calibration PSNR", "the only one of"))  # the grid was searched
        (key,) = chosen["cells"]
        row = read(run_dir / "cells", f"{key}.json")
        assert len(row["reduction"]) == len(row["psnr"]) == 4  # per prompt
        assert abs(sum(row["reduction"]) / 4 - float(target)) <= 0.01  # counted on the evaluated batches
        assert (run_dir / "cells" / key / "00000.png").exists()
    full = read(run_dir / "cells", "full.json")  # the full model's own adherence, for the report's comparison
    assert full["indices"] == [0, 1, 2, 3] and len(full["adherence"]) == 4
    again_dir, again = launch.run(*TINY, "method=ras", "compare.variant=tuned", "compare.targets=[0.2,0.35]",
                                  "+method.tune.high_ratio=[0.0]", f"output_root={tmp_path}")
    assert again_dir == run_dir and again == metrics


def test_a_discrete_knob_is_bracketed_by_two_real_settings(tmp_path):
    run_dir, metrics = launch.run(*TINY, "method=steps", "method.levels=[8,6,4]", "compare.variant=authors",
                                  "compare.targets=[0.45]",
                                  f"output_root={tmp_path}")
    chosen = read(run_dir, "compare.json")["targets"]["0.45"]
    assert len(chosen["cells"]) == 2 and all(label.startswith("num_steps=") for label in chosen["labels"])
    low, high = chosen["evaluation_reductions"]
    assert low < 0.45 < high


def test_a_method_field_set_against_the_authors_setting_is_refused_unless_kept(tmp_path):
    args = (*TINY, "data.limit=2", "method=toca", "method.config.interval=2", "compare.variant=authors",
            "compare.targets=[0.37]", f"output_root={tmp_path}")  # fresh_ratio 0-0.9998: 39-36% fewer MACs
    with pytest.raises(ConfigError, match=r"method.config.interval=2 \(the authors': 4\).*compare.keep=\[interval\]"):
        launch.run(*args)  # never the authors' 4 run under the name interval=2
    run_dir, _ = launch.run(*args, "compare.keep=[interval]")
    (key, *_) = read(run_dir, "compare.json")["cells"]
    assert read(run_dir / "cells", f"{key}.json")["config"]["interval"] == 2
    with pytest.raises(ConfigError, match=r"compare.keep=\['fresh'\] is invalid; allowed: a list of fields"):
        launch.run(*TINY, "method=toca", "compare.keep=[fresh]", f"output_root={tmp_path}")


@pytest.mark.slow  # two compare cells, about 10 s
def test_a_second_cell_reads_the_full_models_scores_the_first_one_kept(tmp_path):
    """Two cells of one sweep (the same output root and prompts): the second finds the full model's own scores
    beside the shared images and copies them into its own cells/ before it has evaluated anything."""
    args = (*TINY, "compare.variant=authors", "compare.targets=[0.3]", f"output_root={tmp_path}")
    first, _ = launch.run(*args, "method=fbcache")
    second, _ = launch.run(*args, "method=steps", "method.levels=[8,6,4]")
    assert read(second / "cells", "full.json") == read(first / "cells", "full.json")


def test_a_method_that_decides_while_it_runs_is_counted_on_the_calibration_batches(tmp_path):
    run_dir, _ = launch.run(*TINY, "method=fbcache", "compare.variant=authors", "compare.targets=[0.3]",
                            f"output_root={tmp_path}")
    assert list((run_dir / "calibration").glob("*.json"))  # its reductions were measured, not known offline
    plan = read(run_dir, "compare.json")
    for chosen in plan["targets"].values():
        for key in chosen["cells"]:
            row = read(run_dir / "cells", f"{key}.json")
            # per prompt: its batch's count over the batch's size (batches of 2 here)
            assert row["transformer_macs"][0] == row["transformer_macs"][1]


@pytest.mark.parametrize("override, message", [
    ("compare.variant=best", "compare.variant='best' is invalid; allowed: authors, tuned, shared_warmup"),
    ("compare.targets=[0.5,1.2]", "compare.targets=[0.5, 1.2] is invalid"),
    ("level=1", "level=1 is not allowed with task=compare"),
    ("+method.tune.no_such_field=[1]", "`no_such_field` (its knob or a tuned field) is not a field of RASConfig"),
])
def test_bad_comparison_settings_are_refused_before_any_model_loads(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        launch.run(*TINY, "method=ras", override, f"output_root={tmp_path}")


class Killed(Exception):
    pass


@pytest.mark.slow  # end to end, about 5-17 s: CI's second step
def test_a_cell_interrupted_part_way_resumes_where_it_stopped(tmp_path, monkeypatch):
    """A compare cell killed twice, each time just after a batch's images and MAC count are written: in the
    middle of the knob search, then after a setting's row was written and the next one's images were (its row
    not). Run again, it generates no batch it had and ends with the plan and per-prompt values of an
    uninterrupted run. Its calibration prompts make two batches: the search measures a setting on the first
    alone (read back from the scored setting's row after the second kill), and a setting it scores generates
    only the second."""
    from experiments.compare import bench

    real, made, stop = bench.generate, [], [10]

    def counting(pipe, work, folder, *args, **kwargs):
        def batch_done(number, batch, images):
            made.append((folder, number))
            if len(made) == stop[0]:
                raise Killed(folder)

        return real(pipe, work, folder, *args, on_batch=batch_done, **kwargs)

    monkeypatch.setattr(bench, "generate", counting)
    args = (*TINY, "data.limit=2", "compare.calibration_prompts=4", "method=fbcache", "compare.variant=tuned",
            "compare.targets=[0.3]", "method.tune.warmup_steps=[1,2]")
    history = []
    for kill_at in (10, 9):  # batches into each run: mid-search; then the second scored setting's last batch
        made.clear()
        stop[0] = kill_at
        with pytest.raises(Killed):
            launch.run(*args, f"output_root={tmp_path / 'resumed'}")
        history += made
    (full,) = [p for p in (tmp_path / "resumed" / "full_images").iterdir() if len(list(p.glob("*.png"))) == 4]
    assert list(full.with_name(full.name + "-settings").glob("*.json"))  # a scored row, read back by the search
    made.clear()
    stop[0] = 0
    run_dir, metrics = launch.run(*args, f"output_root={tmp_path / 'resumed'}")
    assert len(set(history)) == len(history) and not set(made) & set(history)  # no batch is made twice
    clean_dir, clean = launch.run(*args, f"output_root={tmp_path / 'clean'}")
    assert metrics == clean and clean["calibration_first_batch_only"] > 0 and clean["calibration_runs"] > 0
    (full,) = [p for p in (tmp_path / "clean" / "full_images").iterdir() if len(list(p.glob("*.png"))) == 4]
    shared = full.with_name(full.name + "-settings")  # the calibration prompts' settings
    counts = [len(list(folder.glob("*.png"))) for folder in shared.iterdir() if folder.is_dir()]
    assert set(counts) == {2, 4}  # searched only: the first batch; scored: both
    assert len(list((clean_dir / "calibration").glob("*.json"))) == clean["calibration_runs"]  # the scored ones
    assert read(run_dir, "compare.json") == read(clean_dir, "compare.json")
    for folder in ("cells", "calibration"):
        rows = sorted(p.name for p in (clean_dir / folder).glob("*.json"))
        assert sorted(p.name for p in (run_dir / folder).glob("*.json")) == rows
        for name in rows:
            assert read(run_dir / folder, name) == read(clean_dir / folder, name), name

"""Executed MACs are counted on the very batches that make the evaluated images (runs in process on random-weight
models): a method whose decisions depend on the batch reports what it did on the evaluated batch, not on a
probe; every image carries its count in records.jsonl; a lost count regenerates its batch, whole, to the
same images; the full model's count lives with the shared cache of its images."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cat
from cat import testing
from experiments.lifecycle import launch
from experiments.run.macs import BATCH_RECORDS, MacsMeter, read_batch_records, write_batch_records

TINY = ("debug=tiny", "metrics.latency.enabled=false")
PROMPTS = ["a red circle", "a blue square"]

# First-Block Cache on tiny_random, 10 steps: the first block's relative change at the fifth call is 0.2631 in
# the batch of the first 4 prompts and 0.2710 in the batch of the first 2, so at this threshold the first skips
# that call and the second computes it; their later decisions part too (2 calls skipped against 3).
FBC_THRESHOLD = 0.265

pytestmark = pytest.mark.usefixtures("one_thread")


def run_here(output_root: Path, *overrides: str):
    return launch.run(*TINY, *overrides, f"output_root={output_root}")


def records_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]


def images_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def resumable(run_dir: Path) -> None:
    """What a kill after generation leaves: the later phases' files missing, the run marked running."""
    for name in ("metrics.json", "records.jsonl"):
        (run_dir / name).unlink()
    (run_dir / "status.json").write_text('{"status": "running"}')


def same(a: dict, b: dict) -> bool:
    """Equal metrics (NaN equal to NaN: PSNR's interval of identical images)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def drop_line(folder: Path, batch: int) -> None:
    write_batch_records(folder, [r for n, r in read_batch_records(folder).items() if n != batch])


def spy_batches(monkeypatch) -> list[tuple[str, list[int]]]:
    """Every batch the run generates: ('full' or 'method', its prompt indices)."""
    from cat.engine.handle import APPLIED
    from experiments.run import generate

    calls, original = [], generate.run_batch

    def run_batch(pipe, batch, seed, call_kwargs, progress=None):
        calls.append(("method" if vars(pipe.transformer).get(APPLIED) else "full", [p.index for p in batch]))
        return original(pipe, batch, seed, call_kwargs, progress)

    monkeypatch.setattr(generate, "run_batch", run_batch)
    return calls


def test_counting_changes_no_output_and_counts_per_batch():
    pipe = testing.tiny_sd3_pipeline()
    hooks = (dict(pipe.transformer._forward_pre_hooks), dict(pipe.transformer._forward_hooks))

    def call():
        return pipe(PROMPTS, num_inference_steps=6, guidance_scale=5.0, height=32, width=32, output_type="latent",
                    max_sequence_length=8, generator=[torch.Generator().manual_seed(i) for i in range(2)]).images

    plain = call()
    with cat.apply(pipe, cat.FBCacheConfig(threshold=FBC_THRESHOLD)):
        plain_method = call()
    with MacsMeter(pipe.transformer) as meter:
        counted = call()
        full = meter.take()
        assert meter.take() == 0  # counted since the last take
        call()
        assert meter.take() == full
        with cat.apply(pipe, cat.FBCacheConfig(threshold=FBC_THRESHOLD)) as handle:
            counted_method = call()
            skipped = len(handle.stats.skipped_calls)
        method = meter.take()
        with pytest.raises(RuntimeError):  # a call that fails leaves no counter active
            pipe.transformer(hidden_states=torch.zeros(1, 3, 32, 32))
        assert torch.utils._python_dispatch._get_current_dispatch_mode() is None
    assert torch.equal(counted, plain) and torch.equal(counted_method, plain_method)  # bit for bit
    assert skipped > 0 and 0 < method < full
    assert (dict(pipe.transformer._forward_pre_hooks), dict(pipe.transformer._forward_hooks)) == hooks


def test_compiled_blocks_are_not_counted_and_a_compiled_run_refuses_macs():
    """Under a flop counter torch.compile runs the compiled blocks eagerly (the counted images would be the
    eager ones, and the blocks stay eager afterwards): a meter refuses them, and so does validation."""
    from hydra import compose, initialize_config_dir

    from experiments.base.config_files import CONF, ConfigError
    from experiments.tasks.validation import validate

    pipe = testing.tiny_sd3_pipeline()
    undo = cat.compile_blocks(pipe.transformer, backend="eager")
    try:
        with pytest.raises(RuntimeError, match="torch.compile'd modules"):
            MacsMeter(pipe.transformer).__enter__()
    finally:
        for fn in reversed(undo):
            fn()
    with MacsMeter(pipe.transformer):  # compilation undone: counted again
        pass
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, "compile=true"])
    with pytest.raises(ConfigError, match=r"compile=true with metrics.macs=true is refused: .* Set metrics.macs=false"):
        validate(cfg)


def test_a_batch_dependent_method_reports_the_macs_of_its_evaluated_batch(tmp_path):
    """First-Block Cache skips a call when the batch's first-block residual changed little: the run (4 prompts
    in one batch) reports the MACs of that batch, which its own skip count explains, not those of a probe on
    fewer prompts, which skips another number of calls."""
    from hydra import compose, initialize_config_dir

    from experiments.base.config_files import CONF
    from experiments.run.generate import call_kwargs, run_batch, run_prompts

    overrides = ("data.limit=4", "batch_size=4", "method=fbcache", f"method.config.threshold={FBC_THRESHOLD}")
    run_dir, metrics = run_here(tmp_path, *overrides)
    (line,) = read_batch_records(run_dir / "images" / "fbcache").values()
    (full_line,) = read_batch_records(run_dir / "images" / "full").values()
    assert line["indices"] == full_line["indices"] == [0, 1, 2, 3]
    assert metrics["transformer_macs"] == line["transformer_macs_per_prompt"] == line["transformer_macs"] / 4
    assert metrics["transformer_macs_full"] == full_line["transformer_macs"] / 4
    assert metrics["macs_reduction"] == pytest.approx(1 - line["transformer_macs"] / full_line["transformer_macs"])

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, *overrides])
    pipe, prompts, kwargs = testing.tiny_sd3_pipeline(), run_prompts(cfg), call_kwargs(cfg)

    def count(batch, threshold):
        with cat.apply(pipe, cat.FBCacheConfig(threshold=threshold)) as handle, MacsMeter(pipe.transformer) as meter:
            images = run_batch(pipe, batch, cfg.seed, kwargs)
            stats = handle.stats
            return meter.take(), len(stats.skipped_calls), stats.transformer_calls, images

    macs, skipped, calls, images = count(prompts, FBC_THRESHOLD)  # the evaluated batch once more
    assert macs == line["transformer_macs"]
    for prompt, image in zip(prompts, images):
        saved = Image.open(run_dir / "images" / "fbcache" / f"{prompt.index:05d}.png")
        assert np.array_equal(np.asarray(saved), np.asarray(image))  # the very batch of the images
    # The method's own record of that batch: `skipped` calls at the cost of a skipped call, the others full.
    per_call = full_line["transformer_macs"] // calls
    assert per_call * calls == full_line["transformer_macs"]
    every, all_skipped, _, _ = count(prompts, 10.0)  # every call after the first skipped: a skipped call's cost
    assert 0 < skipped < all_skipped
    skipped_calls_cost = every - (calls - all_skipped) * per_call  # all_skipped x the cost of a skipped call
    assert macs * all_skipped == (calls - skipped) * per_call * all_skipped + skipped * skipped_calls_cost
    # A separate probe on the first two prompts, as the run once counted, decides otherwise.
    probe, probe_skipped, _, _ = count(prompts[:2], FBC_THRESHOLD)
    assert probe_skipped != skipped and probe / 2 != metrics["transformer_macs"]


@pytest.mark.slow  # end to end, about 5-17 s: CI's second step
def test_every_image_has_its_count_and_a_lost_count_regenerates_its_batch_to_the_same_images(tmp_path,
                                                                                             monkeypatch):
    args = ("data.limit=5", "batch_size=2", "model.steps=4")  # batches {0, 1}, {2, 3}, {4}
    run_dir, metrics = run_here(tmp_path, *args)
    method_dir, full_dir = run_dir / "images" / "cat", run_dir / "images" / "full"
    lines, full_lines = read_batch_records(method_dir), read_batch_records(full_dir)
    assert sorted(lines) == sorted(full_lines) == [0, 1, 2]
    share = {i: r["transformer_macs"] / len(r["indices"]) for r in lines.values() for i in r["indices"]}
    full_share = {i: r["transformer_macs"] / len(r["indices"]) for r in full_lines.values() for i in r["indices"]}
    rows = records_of(run_dir)
    for row in rows:
        if row["variant"] == "full":
            assert row["transformer_macs"] == full_share[row["index"]] and "macs_reduction" not in row
        else:
            assert row["transformer_macs"] == share[row["index"]]
            assert row["macs_reduction"] == pytest.approx(1 - share[row["index"]] / full_share[row["index"]])
    assert metrics["transformer_macs"] == pytest.approx(sum(share.values()) / 5)
    assert metrics["transformer_macs_full"] == pytest.approx(sum(full_share.values()) / 5)
    assert "macs_prompts" not in metrics
    text, images = (method_dir / BATCH_RECORDS).read_text(), images_of(method_dir)

    drop_line(method_dir, 1)  # a crash between batch 1's images and its line
    resumable(run_dir)
    calls = spy_batches(monkeypatch)
    again_dir, again = run_here(tmp_path, *args)
    assert again_dir == run_dir and same(again, metrics)
    assert calls == [("method", [2, 3])]  # that batch alone, whole
    assert images_of(method_dir) == images  # the same images, bit for bit
    assert (method_dir / BATCH_RECORDS).read_text() == text and records_of(run_dir) == rows

    first_batch = (run_dir / "first_batch.json").read_text()
    (run_dir / "first_batch.json").unlink()  # what the method reports of the first batch is lost too
    drop_line(method_dir, 2)
    resumable(run_dir)
    calls.clear()
    assert same(run_here(tmp_path, *args)[1], metrics)
    assert calls == [("method", [0, 1]), ("method", [4])]
    assert (run_dir / "first_batch.json").read_text() == first_batch and images_of(method_dir) == images
    assert (method_dir / BATCH_RECORDS).read_text() == text


@pytest.mark.slow  # end to end, about 5-17 s: CI's second step
def test_the_full_models_count_lives_with_its_shared_images_and_survives_a_resumed_run(tmp_path, monkeypatch):
    args = ("data.limit=4", "batch_size=2", "model.steps=4")
    first_dir, first = run_here(tmp_path, *args)
    (cache,) = (tmp_path / "full_images").iterdir()
    assert (cache / BATCH_RECORDS).read_text() == (first_dir / "images" / "full" / BATCH_RECORDS).read_text()
    cached = images_of(cache)

    calls = spy_batches(monkeypatch)
    second_dir, second = run_here(tmp_path, *args, "method=fbcache")  # another method, the same full model
    assert {kind for kind, _ in calls} == {"method"}
    assert second["transformer_macs_full"] == first["transformer_macs_full"]

    drop_line(cache, 1)  # the shared cache lost batch 1's count: the resumed run counts that batch again
    resumable(second_dir)
    calls.clear()
    again_dir, again = run_here(tmp_path, *args, "method=fbcache")
    assert again_dir == second_dir and same(again, second)
    assert calls == [("full", [2, 3])]
    assert images_of(cache) == cached and sorted(read_batch_records(cache)) == [0, 1]

    (cache / BATCH_RECORDS).unlink()  # images without counts (an older cache): generated again when counting
    calls.clear()
    _, uncounted = run_here(tmp_path, *args, "method=cat_random", "metrics.macs=false")
    assert calls == [("method", [0, 1]), ("method", [2, 3])] and "transformer_macs" not in uncounted
    calls.clear()
    _, counted = run_here(tmp_path, *args, "method=cat_random")
    assert calls == [("full", [0, 1]), ("full", [2, 3]), ("method", [0, 1]), ("method", [2, 3])]
    assert counted["transformer_macs_full"] == first["transformer_macs_full"] and images_of(cache) == cached

"""MACs, counted by a tool: `torch.utils.flop_counter.FlopCounterMode`. MACs = FLOPs / 2.

Executed MACs (every `task=generate` run with `metrics.macs`): a counter is active inside every transformer
call (`MacsMeter`) while the full model and the method generate the very batches whose images are
evaluated, so whatever a method skipped, forecast or pruned is simply not counted, and a method whose
decisions depend on the batch is counted on the batches that made its images. Each batch's count is one
line of `macs.jsonl` next to its images (`BATCH_RECORDS`; experiments/run/generate.py writes them, `executed`
reads them back for the run's metrics and per-image records).

Offline MACs (`task=macs`), on `meta`-device models built from the real configs (no weights, no memory):
the method's config gives its schedule (`offline_schedule`: image tokens recomputed per step); the
transformer is counted once per distinct entry of it, by running the method on the meta model up to the
first step of that kind, and the counts are summed over the schedule. Attention products are counted: on
`meta` SDPA is decomposed into matmuls; for CPU tensors the CPU flash kernel is mapped to the SDPA formula.
`task=macs` (experiments/tasks/macs.py) and `python scripts/count_macs.py` report them for a config.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

import cat
from cat.families import family_for

from ..base.files import write_lines

log = logging.getLogger(__name__)


def _cpu_flash_flop(query, key, value, *args, out_val=None, **kwargs) -> int:
    shape = lambda t: getattr(t, "shape", t)  # noqa: E731  (tensors or, as FlopCounterMode passes them, shapes)
    return sdpa_flop_count(shape(query), shape(key), shape(value))


_CUSTOM = {}
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    _CUSTOM[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_flash_flop


def count_macs(fn, *args, **kwargs) -> int:
    """MACs of one call of fn (matmuls, convolutions and attention products)."""
    with FlopCounterMode(display=False, custom_mapping=_CUSTOM) as counter:
        fn(*args, **kwargs)
    return counter.get_total_flops() // 2


class MacsMeter:
    """Counts the MACs of every call of `module` (a transformer) while installed: a flop counter is active
    inside each call (forward pre and post hooks), so whatever a method skipped, forecast or pruned is
    simply not counted, and dynamic methods report what they realised, counted by the same tool as
    everyone else. Counting does not change the outputs (tests/experiments/run/test_executed_macs.py).

        with MacsMeter(pipe.transformer) as meter:
            pipe(...)                 # one batch
            batch_macs = meter.take()  # MACs since the last take

    Not under torch.compile: an active dispatch mode makes dynamo run compiled code eagerly (the counted
    outputs would not be the compiled ones, and the code stays eager afterwards); `MacsMeter` refuses a
    module with compiled blocks (`compiled_inside`).
    """

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self._counter = FlopCounterMode(display=False, custom_mapping=_CUSTOM)
        self._flops = 0  # since the last take
        self._depth = 0  # a nested call of the module is counted by the outer one
        self._handles: list = []

    def __enter__(self) -> "MacsMeter":
        if compiled_inside(self.module):
            raise RuntimeError(f"MacsMeter cannot count {type(self.module).__name__}: it holds torch.compile'd "
                               "modules, which a flop counter would make run eagerly")
        self._handles = [self.module.register_forward_pre_hook(self._pre),
                         self.module.register_forward_hook(self._post, always_call=True)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._depth:  # left from inside a call (an exception in a hook): close the counter
            self._depth = 0
            self._counter.__exit__(None, None, None)

    def _pre(self, module, args) -> None:
        self._depth += 1
        if self._depth == 1:
            self._counter.__enter__()  # starts from zero

    def _post(self, module, args, output) -> None:
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth == 0:
            self._counter.__exit__(None, None, None)
            self._flops += self._counter.get_total_flops()

    def take(self) -> int:
        """MACs counted since the last `take` (or since installed)."""
        flops, self._flops = self._flops, 0
        return flops // 2


def compiled_inside(module: torch.nn.Module) -> bool:
    """Whether `module` or one of its submodules runs torch.compile'd code (`Module.compile`)."""
    return any(vars(m).get("_compiled_call_impl") is not None for m in module.modules())


def realised_transformer_macs(pipe, call) -> int:
    """Transformer MACs that actually ran during `call()` (`MacsMeter` on `pipe.transformer`)."""
    with MacsMeter(pipe.transformer) as meter:
        call()
        return meter.take()


@dataclass
class MacsReport:
    """Per-image MACs of one model, method, step count and resolution."""

    transformer_macs: int  # whole schedule, both CFG halves
    transformer_macs_full: int
    macs_reduction: float
    step_macs: list[int] = field(default_factory=list)
    full_steps: int = 0  # the reference's step count (the method may run fewer)
    cache_bytes: int = 0  # the method's caches once every kind of step ran (whole batch: both CFG halves)
    text_encoder_macs: int | None = None
    vae_decode_macs: int | None = None

    def as_metrics(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("step_macs", "full_steps") and v is not None}
        out["transformer_macs_per_step_full"] = self.transformer_macs_full // max(1, self.full_steps)
        return out


def build_on_meta(class_name: str, config: dict) -> torch.nn.Module:
    import diffusers

    with torch.device("meta"):
        return getattr(diffusers, class_name).from_config(dict(config)).eval()


def transformer_inputs(transformer: torch.nn.Module, batch: int, height: int, width: int, text_tokens: int,
                       vae_scale: int = 8) -> dict:
    """Meta inputs of one denoising call, shaped like the family's pipeline makes them (`cat.families`)."""
    family = family_for(transformer, "the MAC counter")
    return family.example_inputs(transformer.config, batch, height // vae_scale, width // vae_scale, text_tokens,
                                 device="meta")


def transformer_macs(transformer: torch.nn.Module, inputs: dict, steps: int, method: cat.MethodConfig | None,
                     cfg_pairs: bool, full: int | None = None) -> tuple[list[int], list[int], int]:
    """Per-step MACs of the method and of the full model over a schedule of `steps` steps, and the bytes the
    method's caches hold once its schedule has run every kind of step (one generation of this batch; shapes
    on `meta`). `full`: the full model's count of one step when already known (counted here otherwise). Without
    autograd, as a pipeline runs (the forward's MACs are the same; the pass is cheaper). ValueError when the
    method has no offline schedule."""
    with torch.no_grad():
        return _transformer_macs(transformer, inputs, steps, method, cfg_pairs, full)


def _transformer_macs(transformer, inputs, steps, method, cfg_pairs, full):
    h, w = family_for(transformer, "the MAC counter").grid(transformer, (), inputs)
    n = h * w
    schedule = [n] * steps if method is None else method.offline_schedule(steps, n)
    if schedule is None:
        raise ValueError(f"{type(method).__name__} has no offline schedule; its MACs are counted while it runs")
    full = count_macs(transformer, **inputs) if full is None else full
    per_tokens, cache = {n: full}, 0
    todo = set(schedule) - {n}
    if todo:
        with cat.apply(transformer, method) as handle:
            handle.call_overrides(reference_steps=steps)  # a method that runs fewer steps plans them from it
            handle.reset(cfg_pairs=cfg_pairs, num_steps=len(schedule))  # the steps it runs
            for tokens in schedule:  # up to the first step of every kind
                if tokens in todo:
                    per_tokens[tokens] = count_macs(transformer, **inputs)
                    todo.discard(tokens)
                    if not todo:
                        break
                else:
                    transformer(**inputs)
            cache = handle.cache_bytes()
    return [per_tokens[t] for t in schedule], [full] * steps, cache


def text_encoder_macs(encoders: list[dict]) -> int:
    """MACs of the prompt encoders for one prompt: each {'class': transformers class, 'config': {...}, 'tokens': n}."""
    import transformers

    total = 0
    for spec in encoders:
        cls = getattr(transformers, spec["class"])
        with torch.device("meta"):
            model = cls(getattr(transformers, spec["config_class"])(**spec["config"])).eval()
            ids = torch.zeros(1, spec["tokens"], dtype=torch.long)
        total += count_macs(model, input_ids=ids)
    return total


def vae_decode_macs(config: dict, height: int, width: int) -> int:
    vae = build_on_meta("AutoencoderKL", config)
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    latents = torch.empty(1, vae.config.latent_channels, height // scale, width // scale, device="meta")
    return count_macs(vae.decode, latents)


@functools.lru_cache(maxsize=4096)  # sweep cells repeat the same counts
def _transformer_report(class_name: str, config_json: str, height: int, width: int, text_tokens: int, steps: int,
                        guidance: bool, method: cat.MethodConfig | None, vae_scale: int) -> tuple[list[int], list[int], int]:
    # the full model's step, counted once per model and shape (a knob search counts many settings of one model)
    full = None if method is None else _transformer_report(class_name, config_json, height, width, text_tokens, 1,
                                                           guidance, None, vae_scale)[1][0]
    transformer = build_on_meta(class_name, json.loads(config_json))
    batch = 2 if guidance else 1
    inputs = transformer_inputs(transformer, batch, height, width, text_tokens, vae_scale)
    return transformer_macs(transformer, inputs, steps, method, cfg_pairs=guidance, full=full)


def report_from_config(class_name: str, config: dict, **kwargs) -> "MacsReport":
    """`report` for a transformer given by class name and config (counts are memoised)."""
    text_encoders, vae_config = kwargs.pop("text_encoders", None), kwargs.pop("vae_config", None)
    method_steps, full_steps, cache = _transformer_report(class_name, json.dumps(config, sort_keys=True, default=list),
                                                   kwargs["height"], kwargs["width"], kwargs["text_tokens"],
                                                   kwargs["steps"], kwargs["guidance"], kwargs["method"],
                                                   kwargs.get("vae_scale", 8))
    return _make_report(method_steps, full_steps, text_encoders, vae_config, kwargs["height"], kwargs["width"], cache)


def _make_report(method_steps, full_steps, text_encoders, vae_config, height, width, cache=0) -> "MacsReport":
    total, total_full = sum(method_steps), sum(full_steps)
    return MacsReport(
        cache_bytes=cache,
        transformer_macs=total,
        transformer_macs_full=total_full,
        macs_reduction=1.0 - total / total_full,
        step_macs=list(method_steps),
        full_steps=len(full_steps),
        text_encoder_macs=text_encoder_macs(text_encoders) if text_encoders else None,
        vae_decode_macs=vae_decode_macs(vae_config, height, width) if vae_config else None,
    )


def report_for_model(model_cfg: dict, method: cat.MethodConfig | None, steps: int | None = None) -> MacsReport:
    """MACs from a model config of `conf/model/` (its `transformer`, `macs` blocks), without weights."""
    arch = model_cfg["transformer"]
    macs_cfg = model_cfg.get("macs", {})
    return report_from_config(
        arch["class"], arch["config"], height=model_cfg["height"], width=model_cfg["width"],
        text_tokens=macs_cfg.get("text_tokens", 77), steps=steps or model_cfg["steps"],
        guidance=model_cfg.get("guidance_scale", 0) > 1 and model_cfg.get("cfg_batch", True), method=method,
        vae_scale=macs_cfg.get("vae_scale", 8), text_encoders=macs_cfg.get("text_encoders"),
        vae_config=macs_cfg.get("vae"),
    )


BATCH_RECORDS = "macs.jsonl"  # one line per generated batch, in the folder of its images


def batch_record(number: int, indices: list[int], macs: int) -> dict:
    """The line of one generated batch: its number in the run, its prompts' indices, the transformer MACs
    of its pipeline call (all its images, both CFG halves), and those per prompt."""
    return {"batch": number, "indices": list(indices), "transformer_macs": int(macs),
            "transformer_macs_per_prompt": macs / len(indices)}


def append_batch_record(folder: Path, record: dict) -> None:
    """Appends a batch's line to `folder/macs.jsonl` in one `write` on a file opened for appending: the
    processes of a launch, each writing its own batches, never interleave or lose each other's lines; a
    line torn by a crash is ignored when read (its batch is generated again)."""
    path = Path(folder) / BATCH_RECORDS
    line = json.dumps(record, sort_keys=True) + "\n"
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = "\n" + line  # after a torn line: start a line of our own
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_batch_records(folder: Path) -> dict[int, dict]:
    """The lines of `folder/macs.jsonl` by batch number (a batch generated again: its last line); torn or
    foreign lines are skipped."""
    try:
        text = (Path(folder) / BATCH_RECORDS).read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        try:
            record = json.loads(line)
            out[int(record["batch"])] = record
        except (ValueError, TypeError, KeyError):
            continue
    return out


def counted(records: dict[int, dict], number: int, indices: list[int]) -> bool:
    """Whether `records` hold the count of batch `number` made of exactly these prompts."""
    record = records.get(number)
    return record is not None and record.get("indices") == list(indices) and "transformer_macs" in record


def write_batch_records(folder: Path, records: list[dict]) -> None:
    """Writes `folder/macs.jsonl` anew (atomically): these lines, by batch number."""
    write_lines(Path(folder) / BATCH_RECORDS, sorted(records, key=lambda r: r["batch"]))


def executed(run_batches: list, sources: dict[str, Path], folders: dict[str, Path], steps: int,
             rows: list[dict]) -> dict:
    """The run's executed transformer MACs, from the lines its batches left (`macs.jsonl`): per image the
    mean over the evaluated prompts of each prompt's share of its batch (batch MACs / batch size), for the
    full model (`transformer_macs_full`) and the method (`transformer_macs`), and `macs_reduction` =
    1 - method / full. Every record (one per image) gets its prompt's `transformer_macs`, and the method's
    its `macs_reduction`.

    `sources`: the folder whose `macs.jsonl` holds each variant's lines (the shared cache for the full
    model's images); `folders`: the run's image folders, which get a copy of the run's lines (one per batch,
    by number), so a run folder is complete on its own. RuntimeError when a batch has no line.
    """
    per_prompt: dict[str, dict[int, float]] = {}
    for name, source in sources.items():
        found = read_batch_records(source)
        mine = []
        for number, batch in run_batches:
            indices = [p.index for p in batch]
            if not counted(found, number, indices):
                raise RuntimeError(f"no executed-MACs line for batch {number} (prompts {indices}) in "
                                   f"{Path(source) / BATCH_RECORDS}")
            mine.append(found[number])
        write_batch_records(folders[name], mine)
        per_prompt[name] = {i: r["transformer_macs_per_prompt"] for r in mine for i in r["indices"]}
    full = per_prompt.pop("full")
    mean_full = sum(full.values()) / len(full)
    out = {"transformer_macs_full": mean_full, "transformer_macs_per_step_full": mean_full / steps}
    method, done = next(iter(per_prompt.items()), (None, {}))  # the method's variant, if the run has one
    if method is not None:
        mean = sum(done.values()) / len(done)
        out.update({"transformer_macs": mean, "macs_reduction": 1.0 - mean / mean_full})
    for row in rows:
        if row["variant"] == "full":
            row["transformer_macs"] = full[row["index"]]
        elif row["variant"] == method:
            row["transformer_macs"] = done[row["index"]]
            row["macs_reduction"] = 1.0 - done[row["index"]] / full[row["index"]]
    return out

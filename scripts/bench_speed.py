"""Does a method's MAC reduction turn into wall-clock speed? The full model against the method in the same run.

    python scripts/bench_speed.py            # CPU defaults: about 7 minutes on 2 cores
    python scripts/bench_speed.py --peer fora --peer-set interval=2   # with a peer timed in the same turns
    python scripts/bench_speed.py --device cuda --model sd3_medium --repeats 10 --compile   # a real checkpoint
    python scripts/bench_speed.py --device cuda --dtype bfloat16 --grid 64 --layers 24 --heads 24   # SD3-medium's size, random weights

A mid-size SD3-architecture transformer with random weights (12 layers, hidden 768, 1024 image tokens,
77 text tokens, CFG batch of 2) runs a 28-step schedule with and without the method: by default the
paired reference of conf/config.yaml (`paired_reference`, CAT) at its library defaults for the step
count; `--method <name> --set field=value` picks another (one with an offline schedule). Printed: the
MACs ratio (counted with FlopCounterMode on a meta copy), the wall-clock ratio of an accelerated step and
of the whole schedule, their quotient (speedup efficiency), the overhead of the method's own per-step
work (for methods on the token engine) as a fraction of a full step, and the memory its caches take. A
variant of CAT (e.g. `--method cat_budget --set forecast=0.5`) is also timed against plain CAT at the same
keep ratio in the same turns: its extra time per pruned step (schedule, forecast) as a share of a full step,
added to the selection overhead, and both speedup efficiencies. A step cache whose skipped steps run none of
the step-cached modules (e.g. `--default-geometry --method forecast_search`, its schedule searched on the
embedded default's calibration) prints its own time per step as a share of a full step (`overhead_per_step`:
forecasts, factor refreshes, hooks), full and skipped steps apart.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import cat
from cat.engine import GenerationState
from cat.families import family_for
from experiments.base.config_files import default_setting
from experiments.run.macs import build_on_meta, count_macs, transformer_macs


def library_config(name: str, steps: int, changes: list[str] = ()) -> cat.MethodConfig:
    """Method `name` (a key of cat.METHODS) at its library defaults for `steps` steps (`for_steps`), with
    `field=value` changes (values read as YAML)."""
    import yaml

    cls = cat.METHODS[name]
    fields = dict(change.split("=", 1) for change in changes)
    return cls(**{**cls.for_steps(steps), **{k: yaml.safe_load(v) for k, v in fields.items()}})


def check_methods(parser: argparse.ArgumentParser, args) -> None:
    """One line (argparse's error, exit status 2) for a method name the chosen mode does not know: a conf/method
    file with --model or --default-geometry, a key of cat.METHODS otherwise (and for --peer), or a --set that is
    not FIELD=VALUE."""
    from experiments.base.config_files import CONF

    conf = sorted(path.stem for path in (CONF / "method").glob("*.yaml"))
    known = conf if args.model or args.default_geometry else sorted(cat.METHODS)
    for flag, name, allowed in (("--method", args.method, known), ("--peer", args.peer, sorted(cat.METHODS))):
        if name is not None and name not in allowed:
            parser.error(f"{flag} {name!r} is invalid; allowed: {', '.join(allowed)}")
    for change in args.changes + args.peer_changes:
        if "=" not in change:
            parser.error(f"--set {change!r} is invalid; allowed: FIELD=VALUE, e.g. --set warmup_steps=4")


def conf_config(steps: int, overrides: list[str] = ()) -> cat.MethodConfig:
    """The method as run.py builds it from conf/ (the default run's model and method unless overridden) at
    `steps` steps."""
    from hydra import compose, initialize_config_dir

    from experiments.base.config_files import CONF
    from experiments.lifecycle import resolvers  # noqa: F401  (registers the config resolvers)
    from experiments.tasks.validation import method_config

    with initialize_config_dir(str(CONF), version_base="1.3"):
        return method_config(compose("config", overrides=[f"model.steps={steps}", *overrides]))


def transformer_config(layers: int, heads: int, grid: int, head_dim: int = 64, channels: int = 16) -> dict:
    hidden = heads * head_dim
    return dict(sample_size=grid * 2, patch_size=2, in_channels=channels, num_layers=layers, attention_head_dim=head_dim,
                num_attention_heads=heads, joint_attention_dim=hidden, caption_projection_dim=hidden,
                pooled_projection_dim=hidden, out_channels=channels, pos_embed_max_size=grid * 2)


def inputs(model: torch.nn.Module, batch: int, text: int, device: str = "cpu", dtype=torch.float32) -> dict:
    """The family's example inputs (seeded): a latent of the model's sample size, `text` text tokens."""
    side = model.config.sample_size
    x = family_for(model).example_inputs(model.config, batch, side, side, text, torch.Generator().manual_seed(0))
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) if torch.is_tensor(v) else v
            for k, v in x.items()}


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def sync(device) -> None:
    """Waits for the device's queued work (timings on an accelerator measure work done, not work queued)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(fn, device="cpu") -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def median_time(fn, repeats: int, device="cpu") -> float:
    return statistics.median(timed(fn, device) for _ in range(repeats))


def in_turns(variants: dict, repeats: int) -> dict:
    """Seconds of each variant per turn, timed in turns (A B A B ...): a machine that drifts (clock
    frequency, caches, a neighbour) then weighs on every variant alike, not on whichever runs first.
    `variants` maps a name to a function that sets its variant up, times it and returns seconds."""
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(fn())
    return times


def paired_speedup(times: dict, base: str, other: str) -> float:
    """Median over turns of base / other, each ratio from two neighbouring timings."""
    from experiments.run.latency import paired_ratio

    return paired_ratio(times[base], times[other])


def accelerated_from(schedule: list[int], num_tokens: int) -> int:
    """The first step of the schedule that recomputes fewer than all tokens."""
    return next(i for i, tokens in enumerate(schedule) if tokens < num_tokens)


def selection_time(method: cat.MethodConfig, grid: int, channels: int, first: int, repeats: int = 20,
                   prompts: int = 1, steps: int | None = None, device="cpu", dtype=torch.float32) -> float | None:
    """Per-step time of the method's own work outside the transformer (for a token-engine method: output
    caching, scores, selection), from its first accelerated step `first` on; None for other methods."""
    if not hasattr(method, "timeline"):
        return None
    timeline = method.timeline()
    n = grid * grid
    steps = max(steps or 0, first + 2 + repeats)  # a schedule long enough for the timed steps
    state = GenerationState(cfg_pairs=True, num_steps=steps)
    outs = [torch.randn(2 * prompts, n, channels, generator=torch.Generator().manual_seed(i)).to(device, dtype)
            for i in range(3)]
    for step in range(first + 2):
        timeline.begin_step(state, method, (grid, grid))
        timeline.end_step(state, method, outs[step % 3])
    times = []
    for step in range(repeats):
        def one(step=step):
            timeline.begin_step(state, method, (grid, grid))
            timeline.end_step(state, method, outs[step % 3])

        times.append(timed(one, device))
    return statistics.median(times)


class Replay(torch.nn.Module):
    """Stands in for a step-cached module: hands back an output it computed before, running nothing."""

    def __init__(self, output):
        super().__init__()
        self.output = output

    def forward(self, *args, **kwargs):
        return self.output


def remainder_time(model, x: dict, repeats: int, device="cpu") -> float:
    """Time of a transformer call whose step-cached modules (the family's `STEP_CACHED`) run nothing: what a
    step cache's skipped step still computes (embeddings, norms, modulation, the output layer)."""
    from cat.engine.patching import swap_in
    from cat.families import STEP_CACHED

    found = family_for(model).find(model, STEP_CACHED)
    outputs, undo = {}, []
    hooks = [module.register_forward_hook(lambda m, a, out, name=name: outputs.__setitem__(name, out))
             for name, module in found]
    model(**x)
    for hook in hooks:
        hook.remove()
    try:
        for name, _ in found:
            swap_in(model, name, Replay(outputs[name]), undo)
        return median_time(lambda: model(**x), repeats, device)
    finally:
        while undo:
            undo.pop()()


def step_overhead(model, x: dict, method: cat.MethodConfig, steps: int, full_step: float, repeats: int,
                  device="cpu") -> dict | None:
    """For a step cache (its offline schedule has steps that compute no image token: none of the step-cached
    modules runs): the method's own time per step as a share of a full step. Each call of `repeats` schedules
    (after an untimed one) is timed; a full step's own time is its median over the full model's step, a skipped
    step's over the call with the step-cached modules replaced by their outputs (`remainder_time`): forecasts,
    factor refreshes, hooks and the step's bookkeeping. `overhead_per_step` weighs them by the schedule's full
    and skipped steps (steps computing some of the tokens, corrected or pruned, are left out). None for other
    methods."""
    n = model.config.sample_size ** 2 // model.config.patch_size ** 2
    schedule = method.offline_schedule(steps, n)
    if schedule is None or 0 not in schedule:
        return None
    remainder = remainder_time(model, x, repeats, device)
    calls = [[] for _ in range(steps)]
    with cat.apply(model, method) as handle:
        for turn in range(repeats + 1):
            handle.reset(cfg_pairs=True, num_steps=steps)
            for step in range(steps):
                seconds = timed(lambda: model(**x), device)
                if turn:  # the first schedule allocates the method's caches
                    calls[step].append(seconds)
    full = [statistics.median(calls[s]) - full_step for s in range(steps) if schedule[s] == n]
    skipped = [statistics.median(calls[s]) - remainder for s in range(steps) if schedule[s] == 0]
    return {"overhead_per_step": statistics.mean(full + skipped) / full_step,
            "overhead_full_step": statistics.mean(full) / full_step,  # step 0 is always full
            "overhead_skipped_step": statistics.mean(skipped) / full_step}


def overhead_per_step(times: dict, method: str, base: str, pruned: int, steps: int) -> list[float]:
    """Per turn: the method's extra time over `base` per pruned step, as a share of a full step (the full
    schedule's time of the same turn over its steps)."""
    return [(m - b) / pruned / (f / steps) for m, b, f in zip(times[method], times[base], times["full"])]


def peak_mb(device="cpu") -> float:
    """Peak memory: the device's allocations on CUDA, the process's resident set elsewhere."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compiled_variants(model, x, method, steps: int, mode: str = "default", device="cpu") -> tuple[dict, dict]:
    """The full model and the method with the same blocks compiled, as variants to time in turns (each a
    whole schedule), after warm-ups that compile both; and dynamo's counts over the method's first two
    schedules: graphs compiled in the first, recompiles in the second, graph breaks."""
    from torch._dynamo.utils import counters

    from experiments.run.pipelines import compiled_blocks

    def full():
        with compiled_blocks(model, True, mode):
            return timed(lambda: [model(**x) for _ in range(steps)], device)

    def accelerated():
        with cat.apply(model, method, compile=True, compile_mode=mode) as handle:
            return timed(lambda: schedule(handle), device)

    def schedule(handle):
        handle.reset(cfg_pairs=True, num_steps=steps)
        for _ in range(steps):
            model(**x)

    torch._dynamo.reset()
    counters.clear()
    with cat.apply(model, method, compile=True, compile_mode=mode) as handle:
        schedule(handle)  # compiles
        graphs_first = counters["stats"]["unique_graphs"]
        schedule(handle)
        recompiles = counters["stats"]["unique_graphs"] - graphs_first
    breaks = sum(counters["graph_break"].values())
    full()  # compiles the full model's graph
    return ({"full_compiled": full, "method_compiled": accelerated},
            {"graphs": graphs_first, "recompiles": recompiles, "graph_breaks": breaks})


def ratio_range(times: dict, base: str, other: str) -> str:
    turns = [b / o for b, o in zip(times[base], times[other])]
    return f"{min(turns):.3f}-{max(turns):.3f}"


def run(layers: int = 12, heads: int = 12, grid: int = 32, text: int = 77, steps: int = 28, repeats: int = 3,
        threads: int | None = None, method: cat.MethodConfig | None = None, compile: bool = False,
        peer: cat.MethodConfig | None = None, head_dim: int = 64, channels: int = 16, prompts: int = 1,
        schedule_repeats: int = 1, device: str = "cpu", dtype: str = "float32") -> dict:
    if threads:
        torch.set_num_threads(threads)
    precision = DTYPES[dtype]
    method = method or library_config(str(default_setting("paired_reference")), steps)
    config = transformer_config(layers, heads, grid, head_dim, channels)
    torch.manual_seed(0)
    from diffusers import SD3Transformer2DModel

    with torch.device(device):
        model = SD3Transformer2DModel(**config).to(precision).eval()
    x = inputs(model, 2 * prompts, text, device, precision)  # CFG: [uncond..., cond...]
    n = grid * grid

    meta = build_on_meta("SD3Transformer2DModel", config)
    x_meta = {k: v.to("meta", torch.float32) if torch.is_tensor(v) and v.is_floating_point() else
              v.to("meta") if torch.is_tensor(v) else v for k, v in x.items()}
    step_macs, full_macs, _ = transformer_macs(meta, x_meta, steps, method, cfg_pairs=True)
    macs_full, macs_accelerated, macs_method = full_macs[0], min(step_macs), sum(step_macs)
    first = accelerated_from(method.offline_schedule(steps, n), n)

    with torch.inference_mode():
        model(**x)  # warm-up
        full_step = median_time(lambda: model(**x), repeats, device)
        with cat.apply(model, method) as handle:
            handle.reset(cfg_pairs=True, num_steps=steps)
            for _ in range(first):
                model(**x)
            accelerated_step = median_time(lambda: model(**x), repeats, device)
            for _ in range(steps - first - 1):
                model(**x)
            extra = handle.cache_bytes()

        def method_schedule():
            with cat.apply(model, method) as handle:
                handle.reset(cfg_pairs=True, num_steps=steps)
                return timed(lambda: [model(**x) for _ in range(steps)], device)

        def full_schedule_time():
            return timed(lambda: [model(**x) for _ in range(steps)], device)

        variants = {"full": full_schedule_time, "method": method_schedule}
        extra_lean = None
        if getattr(method, "cache_dtype", "absent") is None:  # the method can store its caches in bfloat16
            import dataclasses

            with cat.apply(model, dataclasses.replace(method, cache_dtype="bfloat16")) as handle:
                handle.reset(cfg_pairs=True, num_steps=steps)
                for _ in range(steps):
                    model(**x)
                extra_lean = handle.cache_bytes()
        peer_macs = None
        if peer is not None:
            with cat.apply(model, peer) as handle:
                handle.reset(cfg_pairs=True, num_steps=steps)
                peer_macs = sum(count_macs(model, **x) for _ in range(steps))

            def peer_schedule():
                with cat.apply(model, peer) as handle:
                    handle.reset(cfg_pairs=True, num_steps=steps)
                    return timed(lambda: [model(**x) for _ in range(steps)], device)

            variants["peer"] = peer_schedule
        baseline = method.base()  # a variant is timed against the method it varies
        if baseline is not None:
            def base_schedule():
                with cat.apply(model, baseline) as handle:
                    handle.reset(cfg_pairs=True, num_steps=steps)
                    return timed(lambda: [model(**x) for _ in range(steps)], device)

            variants["base"] = base_schedule
            baseline_steps, _, _ = transformer_macs(meta, x_meta, steps, baseline, cfg_pairs=True)
            baseline_macs = sum(baseline_steps)
        counts = {}
        if compile:
            compiled, counts = compiled_variants(model, x, method, steps, device=device)
            variants.update(compiled)
        times = in_turns(variants, schedule_repeats)  # eager and compiled alike, in the same turns
        own = step_overhead(model, x, method, steps, full_step, repeats, device)
    select = selection_time(method, grid, 4 * channels, first, prompts=prompts, steps=steps, device=device,
                            dtype=precision)
    macs_speedup = macs_full * steps / macs_method
    wall_speedup = paired_speedup(times, "full", "method")
    out = {}
    if compile:
        # the compiled method against the compiled full model (the same blocks compiled), and against eager;
        # compiled minus eager speedup per turn: both ratios from the same turn of timings
        gain = [fc / cc - f / c for f, c, fc, cc in zip(times["full"], times["method"], times["full_compiled"],
                                                        times["method_compiled"])]
        out.update(counts, speedup_compiled=paired_speedup(times, "full_compiled", "method_compiled"),
                   speedup_compiled_range=ratio_range(times, "full_compiled", "method_compiled"),
                   speedup_compiled_vs_eager_full=paired_speedup(times, "full", "method_compiled"),
                   compiled_minus_eager=statistics.median(gain),
                   compiled_minus_eager_range=f"{min(gain):+.3f} to {max(gain):+.3f}",
                   time_schedule_compiled_s=statistics.median(times["method_compiled"]),
                   time_full_schedule_compiled_s=statistics.median(times["full_compiled"]))
    if peer is not None:
        out.update(peer_name=peer.name, peer_speedup=paired_speedup(times, "full", "peer"),
                   peer_macs_speedup=macs_full * steps / peer_macs)
    if select is not None:
        out["selection_overhead"] = select / full_step
    if own is not None:
        out.update(own)
    if baseline is not None:
        # what the variant adds over CAT at the same keep ratio (its schedule, its forecast), per pruned step
        pruned = sum(1 for tokens in method.offline_schedule(steps, n) if tokens < n)
        added = overhead_per_step(times, "method", "base", pruned, steps)
        cat_speedup = paired_speedup(times, "full", "base")
        out.update(overhead_vs_cat=statistics.median(added), overhead_vs_cat_range=f"{min(added):+.4f} to {max(added):+.4f}",
                   overhead_total=statistics.median(added) + out.get("selection_overhead", 0.0),
                   cat_macs_speedup=macs_full * steps / baseline_macs, cat_speedup_eager=cat_speedup,
                   cat_speedup_efficiency=cat_speedup / (macs_full * steps / baseline_macs))
    if extra_lean is not None:
        out["cache_mb_lean"] = extra_lean / 2**20
    return {**out,
        "method_name": method.name,
        "speedup_eager": wall_speedup, "speedup_eager_range": ratio_range(times, "full", "method"),
        "peak_mb": peak_mb(device), "device": str(device), "dtype": dtype,
        "macs_full_step": macs_full, "macs_pruned_step": macs_accelerated,
        "macs_ratio_step": macs_accelerated / macs_full, "macs_speedup_schedule": macs_speedup,
        "time_full_step_s": full_step, "time_pruned_step_s": accelerated_step,
        "wall_speedup_step": full_step / accelerated_step, "wall_speedup_schedule": wall_speedup,
        "efficiency_step": (full_step / accelerated_step) / (macs_full / macs_accelerated),
        "speedup_efficiency": wall_speedup / macs_speedup,
        "cache_mb": extra / 2**20,
        "weights_mb": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
        "threads": torch.get_num_threads(),
    }


def run_model(name: str, device: str = "auto", warmup: int = 2, repeats: int = 10, compile: bool = False,
              compile_mode: str = "default", overrides: list[str] = ()) -> dict:
    """A shipped model config (conf/model/<name>.yaml; real checkpoints need their weights): one prompt at
    the model's resolution, steps and guidance, full model against the method as run.py builds it for that
    model (conf's default method unless `overrides` say `method=...`) in the same run, eager and, with
    `compile`, compiled; `warmup` untimed and `repeats` timed pipeline calls each, with device
    synchronisation; medians, spreads and peak memory."""
    from experiments.base.devices import pick_device, pick_dtype
    from experiments.base.models import load_model_config
    from experiments.run.latency import compare
    from experiments.run.pipelines import load_pipeline

    from experiments.base.config_files import Unavailable

    model = load_model_config(name)
    dev = pick_device(device)
    try:
        pipe = load_pipeline(model, dev, pick_dtype("auto", model["dtype"], dev))
    except Unavailable as err:  # weights not here and not fetchable now: how to get them, in one line
        raise SystemExit(f"error: {err}") from None
    method = conf_config(model["steps"], [f"model={name}", *overrides])
    kwargs = {"num_inference_steps": model["steps"], "guidance_scale": model["guidance_scale"],
              "height": model["height"], "width": model["width"], **(model.get("call_kwargs") or {})}

    def call(**overrides):
        pipe(["a photo of a red fox in the snow"], generator=[torch.Generator().manual_seed(0)],
             **{**kwargs, **overrides})

    out = {"model": name, "device": str(dev), "method_name": method.name}
    eager = compare(pipe, call, method, dev, warmup, repeats, reference_steps=model["steps"])
    out.update(speedup_eager=eager["speedup"], latency_full_s=eager["latency_full_s"], latency_s=eager["latency_s"],
               latency_full_spread_s=eager["latency_full_spread_s"], latency_spread_s=eager["latency_spread_s"],
               peak_mb=eager.get("peak_memory_mb"), peak_full_mb=eager.get("peak_memory_full_mb"), repeats=repeats,
               speedup_eager_spread=eager["speedup_spread"], speedup_eager_noisy=eager["speedup_noisy"])
    if compile:
        compiled = compare(pipe, call, method, dev, warmup, repeats, compile=True, compile_mode=compile_mode,
                           reference_steps=model["steps"])
        out.update(speedup_compiled=compiled["speedup"], latency_compiled_s=compiled["latency_s"],
                   latency_full_compiled_s=compiled["latency_full_s"],
                   speedup_compiled_vs_eager_full=eager["latency_full_s"] / compiled["latency_s"])
    return {k: v for k, v in out.items() if v is not None}  # peak memory: CUDA only


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--heads", type=int, default=12, help="64 channels each: 12 -> hidden 768")
    p.add_argument("--grid", type=int, default=32, help="image tokens per side: 32 -> 1024 tokens")
    p.add_argument("--text", type=int, default=77)
    p.add_argument("--head-dim", type=int, default=64, help="channels per head")
    p.add_argument("--channels", type=int, default=16, help="latent channels (the embedded default: 4)")
    p.add_argument("--prompts", type=int, default=1, help="prompts per call (the CFG batch is twice this)")
    p.add_argument("--schedule-repeats", type=int, default=None,
                   help="whole schedules timed per variant, in turns with the full model; speedups are the median of the turns' ratios (default 1; 7 with --default-geometry)")
    p.add_argument("--default-geometry", action="store_true",
                   help="the embedded default's transformer and batch: 6 layers, 3 heads of 32, 256 image tokens, "
                        "16 text tokens, 4 latent channels, 16 prompts per call as the default run times them "
                        "(and its method as the default run configures it, e.g. CAT with 8 clusters)")
    p.add_argument("--method", default=None,
                   help="a method of cat.METHODS (default: conf/config.yaml's paired_reference); with --model or "
                        "--default-geometry, a conf/method file")
    p.add_argument("--set", dest="changes", action="append", default=[], metavar="FIELD=VALUE",
                   help="a field of the method's config (repeatable; with --model or --default-geometry written "
                        "method.config.FIELD=VALUE)")
    p.add_argument("--peer", default=None, help="a method of cat.METHODS timed in the same turns (default: none)")
    p.add_argument("--peer-set", dest="peer_changes", action="append", default=[], metavar="FIELD=VALUE",
                   help="a field of the peer's config (repeatable)")
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compile", action="store_true", help="also time the method with torch.compile'd blocks")
    p.add_argument("--model", default=None, help="time a model of conf/model/ end to end instead (e.g. sd3_medium)")
    p.add_argument("--device", default="auto", help="auto (cuda when there is one), cpu, cuda, ...")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                   help="the random-weight transformer's dtype (with --model: the model config's)")
    p.add_argument("--warmup", type=int, default=2, help="with --model: untimed calls per variant")
    p.add_argument("--compile-mode", default="default", help="default, max-autotune, reduce-overhead (CUDA graphs)")
    p.add_argument("--out", default=None, metavar="FILE.json",
                   help="also write every figure of the run, its command line, the machine and the code to this file")
    args = p.parse_args(argv)
    if args.out and Path(args.out).suffix != ".json":
        p.error(f"--out {args.out}: a .json file")
    check_methods(p, args)
    conf_overrides = ([f"method={args.method}"] if args.method else []) + args.changes
    if args.model:
        r = run_model(args.model, args.device, args.warmup, max(args.repeats, 1), args.compile, args.compile_mode,
                      conf_overrides)
        for key, value in r.items():
            print(f"{key}={value:.5g}" if isinstance(value, float) else f"{key}={value}")
        record(args.out, argv, r)
        return
    if args.default_geometry:
        args.layers, args.heads, args.head_dim, args.grid, args.text, args.channels = 6, 3, 32, 16, 16, 4
        args.prompts = 16 if args.prompts == 1 else args.prompts
        args.schedule_repeats = args.schedule_repeats or 7
        method = conf_config(args.steps, conf_overrides)
    else:
        method = library_config(args.method or str(default_setting("paired_reference")), args.steps, args.changes)
        missing = method.missing_calibration("SD3Transformer2DModel")
        if missing:  # random weights: nothing to calibrate on
            p.error(f"--method {method.name} {missing}; --default-geometry reads the embedded default's calibration "
                    "at --steps, or --set the fields that need none")
    peer = library_config(args.peer, args.steps, args.peer_changes) if args.peer else None
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    r = run(args.layers, args.heads, args.grid, args.text, args.steps, args.repeats, args.threads, method=method,
            compile=args.compile, peer=peer, head_dim=args.head_dim, channels=args.channels, prompts=args.prompts,
            schedule_repeats=args.schedule_repeats or 1, device=device, dtype=args.dtype)
    print(f"SD3-architecture transformer: {args.layers} layers, hidden {args.head_dim * args.heads}, {args.grid ** 2} image "
          f"tokens, {args.text} text tokens, CFG batch {2 * args.prompts}, {args.steps} steps, {method!r}, "
          f"{r['threads']} threads, {device}, {args.dtype}")
    rows = [
        ("MACs per step, full / accelerated", f"{r['macs_full_step'] / 1e9:.1f} G / {r['macs_pruned_step'] / 1e9:.1f} G"),
        ("MACs ratio, accelerated step", f"{r['macs_ratio_step']:.3f}"),
        ("MACs speedup, whole schedule", f"{r['macs_speedup_schedule']:.3f}x"),
        ("time per step, full / accelerated", f"{r['time_full_step_s']:.3f} s / {r['time_pruned_step_s']:.3f} s"),
        ("wall-clock speedup, accelerated step", f"{r['wall_speedup_step']:.3f}x"),
        ("wall-clock speedup, whole schedule", f"{r['wall_speedup_schedule']:.3f}x"),
        ("efficiency, accelerated step (wall / MACs)", f"{r['efficiency_step']:.3f}"),
        ("method's cache memory (weights)", f"{r['cache_mb']:.1f} MB ({r['weights_mb']:.1f} MB)"),
    ]
    if "selection_overhead" in r:
        rows.append(("selection overhead / full step", f"{100 * r['selection_overhead']:.2f}%"))
    if "overhead_per_step" in r:
        rows.append(("method's own time per step / full step", f"{100 * r['overhead_per_step']:.2f}% (full steps "
                     f"{100 * r['overhead_full_step']:+.2f}%, skipped {100 * r['overhead_skipped_step']:+.2f}%)"))
    if "overhead_vs_cat" in r:
        rows += [("extra time over CAT per pruned step / full step", f"{100 * r['overhead_vs_cat']:+.2f}% "
                  f"(turns {r['overhead_vs_cat_range']})"),
                 ("selection + the variant's extra / full step", f"{100 * r['overhead_total']:.2f}%"),
                 ("efficiency, method / CAT (wall / MACs)", f"{r['speedup_efficiency']:.3f} / {r['cat_speedup_efficiency']:.3f}")]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    keys = ["speedup_eager", "speedup_eager_range", "speedup_efficiency", "speedup_compiled", "speedup_compiled_range",
            "speedup_compiled_vs_eager_full", "compiled_minus_eager", "compiled_minus_eager_range", "graphs",
            "recompiles", "graph_breaks",
            "selection_overhead", "overhead_per_step", "overhead_full_step", "overhead_skipped_step", "overhead_vs_cat", "overhead_vs_cat_range", "overhead_total", "cat_speedup_eager",
            "cat_macs_speedup", "cat_speedup_efficiency", "cache_mb", "cache_mb_lean", "peak_mb", "peer_name", "peer_speedup",
            "peer_macs_speedup"]
    for key in keys:
        if key in r:
            value = r[key]
            print(f"{key}={value:.5g}" if isinstance(value, float) else f"{key}={value}")
    record(args.out, argv, r)


def record(out: str | None, argv, result: dict) -> None:
    """Writes the run's figures (all of them, not only the printed keys) with its command line, the machine
    (CPU, cores, threads, load average before and after are in `result` where timed) and the code, so a
    figure quoted in the docs can be traced to the run that printed it."""
    if not out:
        return
    import datetime as dt
    import os
    import platform
    import sys

    from experiments.base.files import write_json
    from experiments.run.provenance import provenance

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else None
    def plain(v):
        return v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
    write_json(Path(out), {"command": ["scripts/bench_speed.py", *(sys.argv[1:] if argv is None else argv)],
                           "when": dt.datetime.now().isoformat(timespec="seconds"), "cpu": cpu,
                           "cores": os.cpu_count(), "load_after": os.getloadavg(), "provenance": provenance(),
                           "result": {k: plain(v) for k, v in result.items()}})
    print(f"written: {out}")


if __name__ == "__main__":
    main()

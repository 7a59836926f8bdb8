"""Does CAT's MAC reduction turn into wall-clock speed? Full model against CAT in the same run.

    python scripts/bench_speed.py            # CPU defaults: about 7 minutes on 2 cores
    python scripts/bench_speed.py --device cuda --model sd3_medium --repeats 10 --compile   # a real checkpoint

A mid-size SD3-architecture transformer with random weights (12 layers, hidden 768, 1024 image tokens,
77 text tokens, CFG batch of 2) runs a 28-step schedule with and without CAT (paper defaults). Printed:
the MACs ratio (counted with FlopCounterMode on a meta copy), the wall-clock ratio of a pruned step and
of the whole schedule, their quotient (speedup efficiency), the selection overhead as a fraction of a
full step, and the memory CAT's caches take. The last line is `speedup_efficiency=<value>`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cat  # noqa: E402
from cat.engine import GenerationState  # noqa: E402
from cat.methods.cat import begin_step, end_step  # noqa: E402
from experiments.macs import build_on_meta, count_macs  # noqa: E402


def transformer_config(layers: int, heads: int, grid: int, head_dim: int = 64, channels: int = 16) -> dict:
    hidden = heads * head_dim
    return dict(sample_size=grid * 2, patch_size=2, in_channels=channels, num_layers=layers, attention_head_dim=head_dim,
                num_attention_heads=heads, joint_attention_dim=hidden, caption_projection_dim=hidden,
                pooled_projection_dim=hidden, out_channels=channels, pos_embed_max_size=grid * 2)


def inputs(config: dict, batch: int, text: int, device: str = "cpu") -> dict:
    gen = torch.Generator().manual_seed(0)
    side = config["sample_size"]
    dim = config["joint_attention_dim"]
    return dict(hidden_states=torch.randn(batch, config["in_channels"], side, side, generator=gen).to(device),
                encoder_hidden_states=torch.randn(batch, text, dim, generator=gen).to(device),
                pooled_projections=torch.randn(batch, config["pooled_projection_dim"], generator=gen).to(device),
                timestep=torch.full((batch,), 500.0, device=device), return_dict=False)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_time(fn, repeats: int) -> float:
    return statistics.median(timed(fn) for _ in range(repeats))


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
    from experiments.latency import paired_ratio

    return paired_ratio(times[base], times[other])


def selection_time(method: cat.CATConfig, grid: int, channels: int, repeats: int = 20, prompts: int = 1) -> float:
    """Per-step time of CAT's own work outside the transformer (output caching, staleness, selection)."""
    n = grid * grid
    state = GenerationState(cfg_pairs=True)
    outs = [torch.randn(2 * prompts, n, channels, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    for step in range(method.warmup_steps + 2):
        begin_step(state, method, (grid, grid))
        end_step(state, method, outs[step % 3])
    times = []
    for step in range(repeats):
        start = time.perf_counter()
        begin_step(state, method, (grid, grid))
        end_step(state, method, outs[step % 3])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def dataclasses_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cache_bytes(handle) -> int:
    state = handle.runtime.last_state()
    tensors = [t for c in state.caches.values() for t in (c.key, c.value, c.out) if t is not None]
    tensors += [t for t in (state.prev_out, state.ref, state.freq, state.labels) if t is not None]
    return sum(t.numel() * t.element_size() for t in tensors)


def compiled_variants(model, x, method, steps: int, mode: str = "default") -> tuple[dict, dict]:
    """The full model and CAT with the same blocks compiled, as variants to time in turns (each a whole
    schedule), after warm-ups that compile both; and dynamo's counts over CAT's first two schedules:
    graphs compiled in the first, recompiles in the second, graph breaks."""
    from torch._dynamo.utils import counters

    from experiments.latency import compiled_blocks

    def full():
        with compiled_blocks(model, True, mode):
            return timed(lambda: [model(**x) for _ in range(steps)])

    def pruned():
        with cat.apply(model, method, compile=True, compile_mode=mode) as handle:
            return timed(lambda: schedule(handle))

    def schedule(handle):
        handle.reset(cfg_pairs=True)
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
    return ({"full_compiled": full, "cat_compiled": pruned},
            {"graphs": graphs_first, "recompiles": recompiles, "graph_breaks": breaks})


def ratio_range(times: dict, base: str, other: str) -> str:
    turns = [b / o for b, o in zip(times[base], times[other])]
    return f"{min(turns):.3f}-{max(turns):.3f}"


def run(layers: int = 12, heads: int = 12, grid: int = 32, text: int = 77, steps: int = 28, repeats: int = 3,
        threads: int | None = None, method: cat.CATConfig | None = None, compile: bool = False,
        peer: cat.MethodConfig | None = None, head_dim: int = 64, channels: int = 16, prompts: int = 1,
        schedule_repeats: int = 1) -> dict:
    if threads:
        torch.set_num_threads(threads)
    method = method or cat.CATConfig(warmup_steps=max(2, round(8 * steps / 28)))
    config = transformer_config(layers, heads, grid, head_dim, channels)
    torch.manual_seed(0)
    from diffusers import SD3Transformer2DModel

    model = SD3Transformer2DModel(**config).eval()
    x = inputs(config, 2 * prompts, text)  # CFG: [uncond..., cond...]

    meta = build_on_meta("SD3Transformer2DModel", config)
    x_meta = {k: v.to("meta") if torch.is_tensor(v) else v for k, v in x.items()}
    macs_full = count_macs(meta, **x_meta)
    with cat.apply(meta, method) as h:
        h.reset(cfg_pairs=True)
        for _ in range(method.warmup_steps):
            meta(**x_meta)
        macs_pruned = count_macs(meta, **x_meta)
    schedule = cat.token_schedule(method, steps, grid * grid)
    macs_cat = sum(macs_full if t == grid * grid else macs_pruned for t in schedule)

    with torch.inference_mode():
        model(**x)  # warm-up
        full_step = median_time(lambda: model(**x), repeats)
        with cat.apply(model, method) as handle:
            handle.reset(cfg_pairs=True)
            for _ in range(method.warmup_steps):
                model(**x)
            pruned_step = median_time(lambda: model(**x), repeats)
            for _ in range(steps - method.warmup_steps - 1):
                model(**x)
            extra = cache_bytes(handle)

        def cat_schedule():
            with cat.apply(model, method) as handle:
                handle.reset(cfg_pairs=True)
                return timed(lambda: [model(**x) for _ in range(steps)])

        def full_schedule_time():
            return timed(lambda: [model(**x) for _ in range(steps)])

        variants = {"full": full_schedule_time, "cat": cat_schedule}
        lean = dataclasses_replace(method, cache_dtype="bfloat16")
        with cat.apply(model, lean) as handle:
            handle.reset(cfg_pairs=True)
            for _ in range(steps):
                model(**x)
            extra_lean = cache_bytes(handle)
        peer_macs = None
        if peer is not None:
            from experiments.macs import count_macs as _count

            with cat.apply(model, peer) as handle:
                handle.reset(num_steps=steps)
                peer_macs = sum(_count(model, **x) for _ in range(steps))

            def peer_schedule():
                with cat.apply(model, peer) as handle:
                    handle.reset(num_steps=steps)
                    return timed(lambda: [model(**x) for _ in range(steps)])

            variants["peer"] = peer_schedule
        counts = {}
        if compile:
            compiled, counts = compiled_variants(model, x, method, steps)
            variants.update(compiled)
        times = in_turns(variants, schedule_repeats)  # eager and compiled alike, in the same turns
    select = selection_time(method, grid, 4 * channels, prompts=prompts)
    macs_speedup = macs_full * steps / macs_cat
    wall_speedup = paired_speedup(times, "full", "cat")
    out = {}
    if compile:
        # compiled CAT against the compiled full model (the same blocks compiled), and against eager;
        # compiled minus eager speedup per turn: both ratios from the same turn of timings
        gain = [fc / cc - f / c for f, c, fc, cc in zip(times["full"], times["cat"], times["full_compiled"],
                                                        times["cat_compiled"])]
        out.update(counts, speedup_compiled=paired_speedup(times, "full_compiled", "cat_compiled"),
                   speedup_compiled_range=ratio_range(times, "full_compiled", "cat_compiled"),
                   speedup_compiled_vs_eager_full=paired_speedup(times, "full", "cat_compiled"),
                   compiled_minus_eager=statistics.median(gain),
                   compiled_minus_eager_range=f"{min(gain):+.3f} to {max(gain):+.3f}",
                   time_schedule_compiled_s=statistics.median(times["cat_compiled"]),
                   time_full_schedule_compiled_s=statistics.median(times["full_compiled"]))
    if peer is not None:
        out.update(peer_name=peer.name, peer_speedup=paired_speedup(times, "full", "peer"),
                   peer_macs_speedup=macs_full * steps / peer_macs)
    return {**out,
        "speedup_eager": wall_speedup, "speedup_eager_range": ratio_range(times, "full", "cat"),
        "cache_mb_lean": extra_lean / 2**20,
        "peak_mb": peak_rss_mb(),
        "macs_full_step": macs_full, "macs_pruned_step": macs_pruned,
        "macs_ratio_step": macs_pruned / macs_full, "macs_speedup_schedule": macs_speedup,
        "time_full_step_s": full_step, "time_pruned_step_s": pruned_step,
        "wall_speedup_step": full_step / pruned_step, "wall_speedup_schedule": wall_speedup,
        "efficiency_step": (full_step / pruned_step) / (macs_full / macs_pruned),
        "speedup_efficiency": wall_speedup / macs_speedup,
        "selection_overhead": select / full_step, "cache_mb": extra / 2**20,
        "weights_mb": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
        "threads": torch.get_num_threads(),
    }


def run_model(name: str, device: str = "auto", warmup: int = 2, repeats: int = 10, compile: bool = False,
              compile_mode: str = "default") -> dict:
    """A shipped model config (conf/model/<name>.yaml; real checkpoints need their weights): one prompt at
    the model's resolution, steps and guidance, full model against CAT (paper defaults) in the same run,
    eager and, with `compile`, compiled; `warmup` untimed and `repeats` timed pipeline calls each, with
    device synchronisation; medians, spreads and peak memory."""
    from experiments.config_files import load_model_config
    from experiments.latency import compare
    from experiments.pipelines import load_pipeline, pick_device, pick_dtype
    from experiments.resolvers import cat_warmup

    model = load_model_config(name)
    dev = pick_device(device)
    pipe = load_pipeline(model, dev, pick_dtype("auto", model["dtype"], dev))
    method = cat.CATConfig(warmup_steps=cat_warmup(model["steps"]), num_clusters=model.get("num_clusters", 20))
    kwargs = {"num_inference_steps": model["steps"], "guidance_scale": model["guidance_scale"],
              "height": model["height"], "width": model["width"], **(model.get("call_kwargs") or {})}

    def call(**overrides):
        pipe(["a photo of a red fox in the snow"], generator=[torch.Generator().manual_seed(0)],
             **{**kwargs, **overrides})

    out = {"model": name, "device": str(dev)}
    eager = compare(pipe, call, method, dev, warmup, repeats)
    out.update(speedup_eager=eager["speedup"], latency_full_s=eager["latency_full_s"], latency_s=eager["latency_s"],
               latency_full_spread_s=eager["latency_full_spread_s"], latency_spread_s=eager["latency_spread_s"],
               peak_mb=eager["peak_memory_mb"], peak_full_mb=eager["peak_memory_full_mb"], repeats=repeats)
    if compile:
        compiled = compare(pipe, call, method, dev, warmup, repeats, compile=True, compile_mode=compile_mode)
        out.update(speedup_compiled=compiled["speedup"], latency_compiled_s=compiled["latency_s"],
                   latency_full_compiled_s=compiled["latency_full_s"],
                   speedup_compiled_vs_eager_full=eager["latency_full_s"] / compiled["latency_s"])
    return out


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
                        "(CAT with its 8 clusters)")
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compile", action="store_true", help="also time CAT with torch.compile'd blocks")
    p.add_argument("--no-peer", action="store_true", help="skip the FORA comparison")
    p.add_argument("--model", default=None, help="time a model of conf/model/ end to end instead (e.g. sd3_medium)")
    p.add_argument("--device", default="auto", help="with --model: auto, cpu, cuda, ...")
    p.add_argument("--warmup", type=int, default=2, help="with --model: untimed calls per variant")
    p.add_argument("--compile-mode", default="default", help="default, max-autotune, reduce-overhead (CUDA graphs)")
    args = p.parse_args(argv)
    if args.model:
        r = run_model(args.model, args.device, args.warmup, max(args.repeats, 1), args.compile, args.compile_mode)
        for key, value in r.items():
            print(f"{key}={value:.5g}" if isinstance(value, float) else f"{key}={value}")
        return
    method = None
    if args.default_geometry:
        args.layers, args.heads, args.head_dim, args.grid, args.text, args.channels = 6, 3, 32, 16, 16, 4
        args.prompts = 16 if args.prompts == 1 else args.prompts
        args.schedule_repeats = args.schedule_repeats or 7
        method = cat.CATConfig(warmup_steps=max(2, round(8 * args.steps / 28)), num_clusters=8)
    r = run(args.layers, args.heads, args.grid, args.text, args.steps, args.repeats, args.threads, method=method,
            compile=args.compile, peer=None if args.no_peer else cat.FORAConfig(interval=2),
            head_dim=args.head_dim, channels=args.channels, prompts=args.prompts,
            schedule_repeats=args.schedule_repeats or 1)
    print(f"SD3-architecture transformer: {args.layers} layers, hidden {args.head_dim * args.heads}, {args.grid ** 2} image "
          f"tokens, {args.text} text tokens, CFG batch {2 * args.prompts}, {args.steps} steps, CAT keep_ratio 0.3, {r['threads']} threads")
    rows = [
        ("MACs per step, full / pruned", f"{r['macs_full_step'] / 1e9:.1f} G / {r['macs_pruned_step'] / 1e9:.1f} G"),
        ("MACs ratio, pruned step", f"{r['macs_ratio_step']:.3f}"),
        ("MACs speedup, whole schedule", f"{r['macs_speedup_schedule']:.3f}x"),
        ("time per step, full / pruned", f"{r['time_full_step_s']:.3f} s / {r['time_pruned_step_s']:.3f} s"),
        ("wall-clock speedup, pruned step", f"{r['wall_speedup_step']:.3f}x"),
        ("wall-clock speedup, whole schedule", f"{r['wall_speedup_schedule']:.3f}x"),
        ("efficiency, pruned step (wall / MACs)", f"{r['efficiency_step']:.3f}"),
        ("selection overhead / full step", f"{100 * r['selection_overhead']:.2f}%"),
        ("CAT cache memory (weights)", f"{r['cache_mb']:.1f} MB ({r['weights_mb']:.1f} MB)"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    keys = ["speedup_eager", "speedup_eager_range", "speedup_efficiency", "speedup_compiled", "speedup_compiled_range",
            "speedup_compiled_vs_eager_full", "compiled_minus_eager", "compiled_minus_eager_range", "graphs",
            "recompiles", "graph_breaks",
            "selection_overhead", "cache_mb", "cache_mb_lean", "peak_mb", "peer_name", "peer_speedup",
            "peer_macs_speedup"]
    for key in keys:
        if key in r:
            value = r[key]
            print(f"{key}={value:.5g}" if isinstance(value, float) else f"{key}={value}")


if __name__ == "__main__":
    main()

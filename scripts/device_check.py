"""The GPU check: is CAT's pruned step fast where users run it? One unattended run on one GPU, under 9 minutes.

    PYTHONPATH=. python scripts/device_check.py --device cuda --dtype bfloat16 --out results/gpu
    PYTHONPATH=. python scripts/device_check.py --smoke     # the same code on the CPU, tiny models, < 2 min

Full-size transformers are built from the `transformer` entries of conf/model/*.yaml with random weights
(no hub, no Hydra, no download; torch, diffusers, pyyaml and this repository only) and driven by a
denoising loop of their own: CFG batch of 2 (the family's CFG halves), a flow-matching sigma schedule, an
Euler update of the latents. Sections, most important first; each prints `KEY=value` lines as it goes,
checks the time left against its estimate and skips (saying so) what would not fit; the results are
written to <out>/<gpu-name>.json and .md after every section (`--sections` picks some after sd3):

The method is conf/config.yaml's `paired_reference` (CAT) at its authors' setting; the peers and their
settings are data (scripts/device_check.yaml).

1. sd3: SD3-medium (1024x1024: 4096 image and 333 text tokens, 28 steps), eager, CAT at the authors'
   setting: the time of a full, clustering and pruned step on the device (CUDA events) and on the host
   (the call's return, no sync: a host-bound step takes as long there), whole schedules of the full model
   and CAT in alternating turns (`speedup_eager`: the median of the turns' ratios), the MACs ratio
   (counted on `meta` by `torch.utils.flop_counter`) and the efficiency, kernels and aten operators per
   step, peak memory and cache bytes.
2. compiled: `torch.compile` (`compile_mode=default`) of the repeated blocks, full against CAT: compile
   time, graphs, recompiles, graph breaks, `speedup_compiled`, the final latents against eager.
3. cudagraphs: `compile_mode=reduce-overhead`, full against CAT: `speedup_cudagraphs` and the relative
   error of CAT's final latents against eager and compiled CAT's (a corrupted cache would show as an
   error near 1 where the compiled one is small).
4. pixart: PixArt-Sigma (1024x1024, 300 text tokens, 20 steps), eager, full against CAT.
5. flux: a slice of FLUX.1-dev (4 of its 19 double- and 8 of its 38 single-stream blocks; 4096 image and
   512 text tokens, no CFG batch, 28 steps), eager.
6. peers: forecast_search, FORA, TaylorSeer, ToCa and RAS at about CAT's MACs (about 54% of the full model's; settings
   chosen offline, MACs counted again here), timed in turns with the full model: wall-clock beside MACs.

`--smoke` runs every section on tiny models on the CPU (the compiled sections with dynamo's eager
backend), as a test of the script.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

import cat
from cat.families import family_for

ROOT = Path(__file__).resolve().parents[1]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BUDGET_S = 510  # 9 minutes, less imports and the last write
SMOKE_BUDGET_S = 110


@dataclass(frozen=True)
class Geometry:
    """One model's run: conf/model/<conf>.yaml's transformer with `overrides`, at a latent size, text
    length, step count and CFG scale (`cfg`: the batch holds [uncond, cond] halves)."""

    conf: str
    height: int  # latent pixels
    width: int
    text: int
    steps: int
    guidance: float
    cfg: bool
    overrides: dict = field(default_factory=dict)
    time_scale: float = 1000.0  # the model's timestep per unit of sigma (FLUX takes sigma itself)


FULL = {
    "sd3": Geometry("sd3_medium", 128, 128, 333, 28, 7.0, True),
    "pixart": Geometry("pixart_sigma", 128, 128, 300, 20, 4.5, True),
    "flux": Geometry("flux_dev", 128, 128, 512, 28, 3.5, False, {"num_layers": 4, "num_single_layers": 8}, 1.0),
}
SMOKE = {
    "sd3": Geometry("sd3_medium", 32, 32, 16, 8, 7.0, True, dict(
        sample_size=16, num_layers=4, attention_head_dim=16, num_attention_heads=4, joint_attention_dim=64,
        caption_projection_dim=64, pooled_projection_dim=64, pos_embed_max_size=32)),
    "pixart": Geometry("pixart_sigma", 32, 32, 16, 8, 4.5, True, dict(
        sample_size=16, num_layers=3, attention_head_dim=16, num_attention_heads=4, cross_attention_dim=64,
        caption_channels=64)),
    "flux": Geometry("flux_dev", 32, 32, 16, 8, 3.5, False, dict(
        num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=4, joint_attention_dim=64,
        pooled_projection_dim=64, in_channels=16, axes_dims_rope=[4, 6, 6]), 1.0),
}


def conf_model(name: str) -> dict:
    import yaml

    return yaml.safe_load((ROOT / "conf" / "model" / f"{name}.yaml").read_text())


def reference() -> type[cat.MethodConfig]:
    """The method every comparison pairs with the full model: conf/config.yaml's `paired_reference`."""
    import yaml

    return cat.METHODS[yaml.safe_load((ROOT / "conf" / "config.yaml").read_text())["paired_reference"]]


def peers() -> list[dict]:
    """The peers and their settings (scripts/device_check.yaml)."""
    import yaml

    return yaml.safe_load(Path(__file__).with_suffix(".yaml").read_text())["peers"]


class Budget:
    """The run's internal deadline: sections ask whether their estimate fits in what is left."""

    def __init__(self, seconds: float):
        self.start = time.perf_counter()
        self.seconds = seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def fits(self, estimate: float) -> bool:
        return estimate <= self.left()


class Report:
    """Results as they come: printed as `KEY=value` (flushed) and written to <out>/<name>.json and .md."""

    def __init__(self, out: Path, name: str, header: dict):
        self.out, self.name = out, name
        self.values: dict = dict(header)
        self.sections: dict[str, list[str]] = {}
        self.notes: list[str] = []
        for key, value in header.items():
            self.put("env", key, value)

    def put(self, section: str, key: str, value) -> None:
        self.values[key] = value
        self.sections.setdefault(section, []).append(key)
        shown = f"{value:.5g}" if isinstance(value, float) else value
        print(f"{key}={shown}", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"NOTE={text}", flush=True)

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"{self.name}.json").write_text(json.dumps({"values": self.values, "notes": self.notes},
                                                                indent=1, default=str) + "\n")
        lines = [f"# Device check: {self.values.get('gpu')}", "",
                 f"`{' '.join(sys.argv)}` ({self.values.get('dtype')}, torch {self.values.get('torch')}, "
                 f"diffusers {self.values.get('diffusers')})", ""]
        for section, keys in self.sections.items():
            lines += [f"## {section}", "", "| key | value |", "|---|---|"]
            lines += [f"| {k} | {self.values[k]:.5g} |" if isinstance(self.values[k], float) else
                      f"| {k} | {self.values[k]} |" for k in keys]
            lines.append("")
        if self.notes:
            lines += ["## notes", ""] + [f"- {n}" for n in self.notes] + [""]
        (self.out / f"{self.name}.md").write_text("\n".join(lines))


# --- models, inputs and the denoising loop

def build(geometry: Geometry, device, dtype) -> torch.nn.Module:
    """The conf model's transformer with random weights (seeded), built on `device` in `dtype`."""
    import diffusers

    spec = conf_model(geometry.conf)["transformer"]
    cls = getattr(diffusers, spec["class"])
    torch.manual_seed(0)
    with torch.device(device):
        model = cls(**{**spec["config"], **geometry.overrides})
    return model.to(dtype=dtype).eval().requires_grad_(False)


def inputs(model, geometry: Geometry, device, dtype) -> dict:
    """The family's example inputs (seeded) for one call, on `device`: activations in `dtype`, the timestep
    and FLUX's guidance in float32 (as pipelines pass them)."""
    batch = 2 if geometry.cfg else 1
    x = family_for(model).example_inputs(model.config, batch, geometry.height, geometry.width, geometry.text,
                                         torch.Generator().manual_seed(0), device="meta" if device == "meta" else "cpu")
    return {k: v.to(device=device, dtype=torch.float32 if k in ("timestep", "guidance") else dtype)
            if torch.is_tensor(v) and v.is_floating_point() else v.to(device) if torch.is_tensor(v) else v
            for k, v in x.items()}


class Loop:
    """A denoising loop of `geometry.steps` transformer calls: shifted flow-matching sigmas, CFG, Euler steps.
    Every tensor a step needs is on the device before the loop starts (no host copy inside it)."""

    def __init__(self, model, geometry: Geometry, device, dtype, shift: float = 3.0):
        self.model, self.geometry = model, geometry
        self.call = inputs(model, geometry, device, dtype)
        self.batch = 2 if geometry.cfg else 1
        sample = self.call["hidden_states"]
        self.x0 = sample[: sample.shape[0] // self.batch].clone()  # [P, ...]
        s = torch.linspace(1.0, 1.0 / geometry.steps, geometry.steps, dtype=torch.float64)
        sigmas = (shift * s / (1 + (shift - 1) * s)).tolist() + [0.0]
        self.dt = [sigmas[i + 1] - sigmas[i] for i in range(geometry.steps)]
        self.timesteps = [torch.full((self.batch,), sigma * geometry.time_scale, device=device)  # float32
                          for sigma in sigmas[:-1]]

    def step(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """One transformer call (and the Euler update): the latents after step i."""
        out = self.model(**{**self.call, "hidden_states": torch.cat([x] * self.batch), "timestep": self.timesteps[i]})[0]
        if out.shape[1:] != x.shape[1:]:
            out = out[:, : x.shape[1]]  # a learned-sigma model: the noise half
        if self.batch == 2:
            uncond, cond = out.chunk(2)
            out = uncond + self.geometry.guidance * (cond - uncond)
        return x + self.dt[i] * out

    def run(self, each: Callable[[int], None] | None = None) -> torch.Tensor:
        x = self.x0
        for i in range(self.geometry.steps):
            x = self.step(x, i)
            if each is not None:
                each(i)
        return x


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def in_turns(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each variant per turn, the variants alternating (A B A B ...), so that a drifting machine
    weighs on all alike."""
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(fn())
    return times


def paired(times: dict[str, list[float]], base: str, other: str) -> tuple[float, str]:
    """The median over turns of base / other, and the range of those ratios."""
    ratios = [b / o for b, o in zip(times[base], times[other])]
    return statistics.median(ratios), f"{min(ratios):.3f}-{max(ratios):.3f}"


def schedule_macs(geometry: Geometry, method: cat.MethodConfig | None) -> int:
    """MACs of a whole schedule, counted on a `meta` copy of the model (FlopCounterMode; MACs = FLOPs / 2).
    A method with an offline schedule (image tokens per step) is counted at the first step of each token
    count and the counts summed over the schedule; one without is counted at every step."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build(geometry, "meta", torch.float32)
    loop = Loop(model, geometry, "meta", torch.float32)
    n = geometry.height * geometry.width // family_for(model).token_patch(model.config) ** 2
    schedule = [n] * geometry.steps if method is None else method.offline_schedule(geometry.steps, n)
    counted: dict[int, int] = {}
    total = 0
    with cat.apply(model, method) if method is not None else contextlib.nullcontext() as handle:
        if handle is not None:
            handle.reset(cfg_pairs=geometry.cfg, num_steps=geometry.steps)
        x = loop.x0
        for i in range(geometry.steps):
            if schedule is not None and all(t in counted for t in schedule):
                break
            if schedule is not None and schedule[i] in counted:
                x = loop.step(x, i)
                continue
            with FlopCounterMode(display=False) as counter:
                x = loop.step(x, i)
            macs = counter.get_total_flops() // 2
            total += macs
            if schedule is not None:
                counted[schedule[i]] = macs
    return total if schedule is None else sum(counted[t] for t in schedule)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


def count_dispatches(fn) -> int:
    """aten operators dispatched by fn (views excluded)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func.is_view:
                Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


def count_kernels(fn) -> int:
    """Device kernels launched by fn (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


class Check:
    """Runs the sections, sharing the device, dtype, geometries, budget and report."""

    def __init__(self, args):
        self.smoke = args.smoke
        self.device = "cpu" if args.smoke else args.device
        self.dtype = torch.float32 if args.smoke else DTYPES[args.dtype]
        self.geometries = SMOKE if args.smoke else FULL
        self.budget = Budget(args.budget or (SMOKE_BUDGET_S if args.smoke else BUDGET_S))
        self.turns = args.turns or (2 if args.smoke else 5)
        self.backend = "eager" if args.smoke else "inductor"  # dynamo's eager backend: the smoke traces only
        cuda = torch.device(self.device).type == "cuda"
        if args.smoke:
            torch.set_num_threads(1)  # tiny models: one thread is fastest, and leaves a shared CPU alone
        gpu = torch.cuda.get_device_name() if cuda else ("cpu-smoke" if args.smoke else platform.processor() or "cpu")
        import diffusers

        diffusers.utils.logging.set_verbosity_error()  # its dtype-cast advice on random-weight models
        self.report = Report(Path(args.out), re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-"), {
            "gpu": gpu, "device": self.device, "dtype": str(self.dtype).removeprefix("torch."),
            "method": reference().name, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "cuda": torch.version.cuda if cuda else None})
        self.cuda = cuda
        self.sd3: dict = {}  # what later sections reuse: models, loops, eager CAT latents, step times

    def put(self, section, key, value):
        self.report.put(section, key, value)

    def method_config(self, geometry: Geometry) -> cat.MethodConfig:
        """The reference method at its authors' setting for the model's family and step count (on a tiny
        model, its example setting for small models)."""
        cls = reference()
        if self.smoke:
            return cls.examples(geometry.steps)[1]
        return cls(**cls.authors(family_for(build(geometry, "meta", torch.float32)).name, geometry.steps))

    def section(self, name: str, estimate: float, fn: Callable[[], None]) -> None:
        if not self.budget.fits(estimate):
            self.report.note(f"{name} skipped: needs about {estimate:.0f} s, {self.budget.left():.0f} s left")
            return
        start = time.perf_counter()
        try:
            fn()
        except Exception as err:  # a failing section is reported, the others still run
            self.report.note(f"{name} failed: {type(err).__name__}: {err}")
        self.put(name, f"{name}_section_s", time.perf_counter() - start)
        self.report.write()

    # --- sections

    def eager_pair(self, key: str, geometry: Geometry) -> dict:
        """The model and a copy with CAT applied (the same weights), their loops, and the MACs of both schedules."""
        model = build(geometry, self.device, self.dtype)
        pruned = copy.deepcopy(model)
        config = self.method_config(geometry)
        handle = cat.apply(pruned, config)
        full_macs, method_macs = schedule_macs(geometry, None), schedule_macs(geometry, config)
        self.put(key, f"{key}_macs_speedup", full_macs / method_macs)
        return dict(model=model, pruned=pruned, handle=handle, config=config, geometry=geometry,
                    full=Loop(model, geometry, self.device, self.dtype),
                    method=Loop(pruned, geometry, self.device, self.dtype), macs_full=full_macs,
                    macs_speedup=full_macs / method_macs)

    def schedule(self, pair: dict, which: str) -> Callable[[], float]:
        """A timed whole schedule of the full model ("full") or of the method ("method")."""
        loop, geometry = pair[which], pair["geometry"]

        def run() -> float:
            if which == "method":
                pair["handle"].reset(cfg_pairs=geometry.cfg, num_steps=geometry.steps)
            return timed(loop.run, self.device)

        return run

    def speedups(self, key: str, pair: dict, suffix: str = "eager") -> None:
        times = in_turns({"full": self.schedule(pair, "full"), "method": self.schedule(pair, "method")}, self.turns)
        speedup, spread = paired(times, "full", "method")
        prefix = "" if key == "sd3" else f"{key}_"
        self.put(key, f"{prefix}speedup_{suffix}", speedup)
        self.put(key, f"{prefix}speedup_{suffix}_range", spread)
        self.put(key, f"{prefix}schedule_full_{suffix}_s", statistics.median(times["full"]))
        self.put(key, f"{prefix}schedule_method_{suffix}_s", statistics.median(times["method"]))
        if suffix == "eager":
            self.put(key, f"{prefix}speedup_efficiency", speedup / pair["macs_speedup"])

    def phases(self, pair: dict) -> None:
        """Per-phase device and host time of CAT's steps, and of the full model's."""
        loop, handle, geometry = pair["method"], pair["handle"], pair["geometry"]
        device_ms: dict[str, list[float]] = {}
        host_ms: dict[str, list[float]] = {}
        for _ in range(2):
            handle.reset(cfg_pairs=geometry.cfg, num_steps=geometry.steps)
            marks = []
            x = loop.x0
            for i in range(geometry.steps):
                start, end = self._event(), self._event()
                t0 = time.perf_counter()
                start.record()
                x = loop.step(x, i)
                end.record()
                host = time.perf_counter() - t0
                marks.append((handle.stats.steps[-1].phase, start, end, host))
            sync(self.device)
            for phase, start, end, host in marks:
                device_ms.setdefault(phase, []).append(start.elapsed_time(end) if self.cuda else 1000 * host)
                host_ms.setdefault(phase, []).append(1000 * host)
        full_device, full_host = [], []
        x = pair["full"].x0
        for i in range(min(geometry.steps, 6)):
            start, end = self._event(), self._event()
            t0 = time.perf_counter()
            start.record()
            x = pair["full"].step(x, i)
            end.record()
            full_host.append(1000 * (time.perf_counter() - t0))
            sync(self.device)
            full_device.append(start.elapsed_time(end) if self.cuda else full_host[-1])
        self.put("sd3", "full_step_ms", statistics.median(full_device[1:]))
        self.put("sd3", "full_step_host_ms", statistics.median(full_host[1:]))
        for phase in ("cluster", "pruned"):
            if phase in device_ms:
                self.put("sd3", f"{phase}_step_ms", statistics.median(device_ms[phase]))
                self.put("sd3", f"{phase}_step_host_ms", statistics.median(host_ms[phase]))
        if "pruned" in device_ms:
            self.put("sd3", "pruned_host_over_device", statistics.median(host_ms["pruned"]) /
                     statistics.median(device_ms["pruned"]))
            self.sd3["pruned_ms"] = statistics.median(device_ms["pruned"])
        self.sd3["full_ms"] = statistics.median(full_device[1:])

    def _event(self):
        return torch.cuda.Event(enable_timing=True) if self.cuda else _NoEvent()

    def launches(self, pair: dict) -> None:
        """Kernels (CUDA) and aten operators of one full and one pruned step."""
        loop, handle, geometry = pair["method"], pair["handle"], pair["geometry"]
        handle.reset(cfg_pairs=geometry.cfg, num_steps=geometry.steps)
        x = loop.x0
        for i in range(handle.config.warmup_steps + 1):
            x = loop.step(x, i)  # up to the first pruned step
        i = handle.config.warmup_steps + 1
        step = lambda: loop.step(x, i)  # noqa: E731  (a second pruned step, timeline and blocks)
        full = lambda: pair["full"].step(pair["full"].x0, 0)  # noqa: E731
        self.put("sd3", "aten_ops_full_step", count_dispatches(full))
        self.put("sd3", "aten_ops_pruned_step", count_dispatches(step))
        if self.cuda:
            self.put("sd3", "kernels_full_step", count_kernels(full))
            self.put("sd3", "kernels_pruned_step", count_kernels(step))

    def memory(self, pair: dict) -> None:
        """Peak memory of a schedule above what was allocated before it (both models' weights)."""
        for which in ("full", "method"):
            if self.cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            self.schedule(pair, which)()
            if self.cuda:
                self.put("sd3", f"peak_extra_mb_{which}", (torch.cuda.max_memory_allocated() - base) / 2**20)
        self.put("sd3", "cache_mb", pair["handle"].cache_bytes() / 2**20)
        self.put("sd3", "weights_mb", sum(p.numel() * p.element_size() for p in pair["model"].parameters()) / 2**20)

    def run_sd3(self) -> None:
        pair = self.sd3["pair"] = self.eager_pair("sd3", self.geometries["sd3"])
        warm = self.schedule(pair, "method")  # first schedules: allocations, kernels' first launches
        self.schedule(pair, "full")()
        warm()
        self.phases(pair)
        self.speedups("sd3", pair)
        pair["handle"].reset(cfg_pairs=True, num_steps=pair["geometry"].steps)
        self.sd3["eager_method"] = pair["method"].run()
        self.sd3["eager_full"] = pair["full"].run()
        finite = bool(torch.isfinite(self.sd3["eager_method"]).all() and torch.isfinite(self.sd3["eager_full"]).all())
        self.put("sd3", "latents_finite", finite)
        self.launches(pair)
        self.memory(pair)

    def run_peers(self) -> None:
        pair = self.sd3["pair"]
        geometry, model = pair["geometry"], pair["model"]
        for peer_setting in peers():
            name, fields = peer_setting["method"], peer_setting["set"]
            cls = cat.METHODS[name]
            config = cls(**{**cls.authors(family_for(model).name, geometry.steps), **fields})
            estimate = 2 * self.turns * geometry.steps * self.sd3.get("full_ms", 0) / 1000 + 10
            if not self.budget.fits(estimate):
                self.report.note(f"peer {name} skipped: needs about {estimate:.0f} s")
                continue
            peer = copy.deepcopy(model)
            handle = cat.apply(peer, config)
            loop = Loop(peer, geometry, self.device, self.dtype)

            def run(handle=handle, loop=loop) -> float:
                handle.reset(cfg_pairs=geometry.cfg, num_steps=geometry.steps)
                return timed(loop.run, self.device)

            run()
            times = in_turns({"full": self.schedule(pair, "full"), name: run}, self.turns)
            speedup, spread = paired(times, "full", name)
            macs = pair["macs_full"] / schedule_macs(geometry, config)
            self.put("peers", f"peer_{name}_setting", ",".join(f"{k}={v}" for k, v in fields.items()))
            self.put("peers", f"peer_{name}_macs_speedup", macs)
            self.put("peers", f"peer_{name}_speedup_eager", speedup)
            self.put("peers", f"peer_{name}_speedup_range", spread)
            self.put("peers", f"peer_{name}_efficiency", speedup / macs)
            handle.remove()
            del peer, handle, loop
        self.put("peers", "method_speedup_eager", self.report.values.get("speedup_eager"))

    def run_family(self, key: str) -> None:
        pair = self.eager_pair(key, self.geometries[key])
        self.schedule(pair, "full")()
        self.schedule(pair, "method")()
        self.speedups(key, pair)
        pair["handle"].remove()

    def run_compiled(self, mode: str, key: str) -> None:
        """The full model's and CAT's blocks compiled in `mode`: compile time, dynamo's counts, speedup."""
        from torch._dynamo.utils import counters

        pair = self.sd3["pair"]
        geometry = pair["geometry"]
        torch._dynamo.reset()
        counters.clear()
        pair["handle"].remove()
        handle = pair["handle"] = cat.apply(pair["pruned"], pair["config"])
        undo_full = cat.compile_blocks(pair["model"], mode, backend=self.backend)
        handle.compile(mode, backend=self.backend)
        try:
            first = self.schedule(pair, "method")()
            graphs = counters["stats"]["unique_graphs"]
            steady = self.schedule(pair, "method")()  # CUDA graphs: recorded here (warmed up in the first)
            for _ in range(2):
                steady = min(steady, self.schedule(pair, "method")())
            self.put(key, f"{key}_compile_s", first - steady)
            self.put(key, f"{key}_graphs", graphs)
            self.put(key, f"{key}_recompiles", counters["stats"]["unique_graphs"] - graphs)
            self.put(key, f"{key}_graph_breaks", sum(counters["graph_break"].values()))
            handle.reset(cfg_pairs=geometry.cfg, num_steps=geometry.steps)
            latents = pair["method"].run()
            self.put(key, f"{key}_rel_err", rel_err(latents, self.sd3["eager_method"]))  # against eager
            if "compiled_method" in self.sd3:
                self.put(key, f"{key}_rel_err_vs_compiled", rel_err(latents, self.sd3["compiled_method"]))
            self.sd3["compiled_method" if mode == "default" else "graphed_method"] = latents
            self.schedule(pair, "full")()
            self.schedule(pair, "full")()
            self.put(key, f"{key}_full_rel_err_vs_eager_full", rel_err(pair["full"].run(), self.sd3["eager_full"]))
            self.speedups("sd3", pair, suffix=key)
        finally:
            for fn in reversed(undo_full):
                fn()
            handle.remove()
            pair["handle"] = cat.apply(pair["pruned"], pair["config"])

    def run(self, only: set[str] | None = None) -> None:
        self.section("sd3", 60, self.run_sd3)
        if "pair" not in self.sd3:
            self.report.note("sd3 built nothing: the other sections need it")
            self.report.write()
            return
        step_s = self.sd3.get("full_ms", 100) / 1000
        steps = self.geometries["sd3"].steps
        turn = 2 * self.turns * steps * step_s  # one comparison in turns
        compile_s = 5 if self.smoke else 150
        sections = [
            ("compiled", compile_s + 6 * steps * step_s + turn, lambda: self.run_compiled("default", "compiled")),
            ("cudagraphs", compile_s + 6 * steps * step_s + turn,
             lambda: self.run_compiled("reduce-overhead", "cudagraphs")),
            ("pixart", 1.5 * turn + 20, lambda: self.run_family("pixart")),
            ("flux", turn + 20, lambda: self.run_family("flux")),
            ("peers", 4 * (turn + 5), self.run_peers),
        ]
        for name, estimate, fn in sections:
            if only is None or name in only:
                self.section(name, estimate, fn)
        self.put("total", "total_s", time.perf_counter() - self.budget.start)
        self.report.write()


class _NoEvent:
    """Stands in for a CUDA event on the CPU (where the host time is the device time)."""

    def record(self):
        pass


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    p.add_argument("--out", default=str(ROOT / "results" / "gpu"))
    p.add_argument("--smoke", action="store_true", help="tiny models on the CPU: a test of the script (< 2 min)")
    p.add_argument("--budget", type=float, default=None, help=f"seconds (default {BUDGET_S}; smoke {SMOKE_BUDGET_S})")
    p.add_argument("--turns", type=int, default=None, help="paired turns per comparison (default 5; smoke 2)")
    p.add_argument("--sections", default=None,
                   help="comma-separated sections to run after sd3 (default all: compiled,cudagraphs,pixart,flux,peers)")
    args = p.parse_args(argv)
    if not args.smoke and torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (use --smoke for the CPU check)")
    if args.smoke and args.out == str(ROOT / "results" / "gpu"):
        import tempfile

        args.out = tempfile.mkdtemp(prefix="device_check_")
    with torch.no_grad():
        Check(args).run(set(args.sections.split(",")) if args.sections else None)


if __name__ == "__main__":
    main()

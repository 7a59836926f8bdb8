"""MACs, counted by a tool: `torch.utils.flop_counter.FlopCounterMode`. MACs = FLOPs / 2.

Executed MACs (every `task=generate` run): a counter is active inside every transformer call while the full
model and the method generate, so whatever a method skipped, forecast or pruned is simply not counted.

Offline MACs (`task=macs`), on `meta`-device models built from the real configs (no weights, no memory):
the method's config gives its schedule (`offline_schedule`: image tokens recomputed per step); the
transformer is counted once per distinct entry of it, by running the method on the meta model up to the
first step of that kind, and the counts are summed over the schedule. Attention products are counted: on
`meta` SDPA is decomposed into matmuls; for CPU tensors the CPU flash kernel is mapped to the SDPA formula.

    python -m experiments.macs model=sd3_medium model.steps=50 method=ras [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

import cat

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


def realised_transformer_macs(pipe, call) -> int:
    """Transformer MACs that actually ran during `call()`: a flop counter is active inside every
    transformer call (whatever a method skipped, forecast or pruned is simply not counted), so
    dynamic methods report what they realised, counted by the same tool as everyone else."""
    total = [0]
    counter = FlopCounterMode(display=False, custom_mapping=_CUSTOM)

    def pre(module, args):
        counter.__enter__()

    def post(module, args, output):
        counter.__exit__(None, None, None)
        total[0] += counter.get_total_flops()

    handles = [pipe.transformer.register_forward_pre_hook(pre), pipe.transformer.register_forward_hook(post)]
    try:
        call()
    finally:
        for h in handles:
            h.remove()
    return total[0] // 2


@dataclass
class MacsReport:
    """Per-image MACs of one model, method, step count and resolution."""

    transformer_macs: int  # whole schedule, both CFG halves
    transformer_macs_full: int
    macs_reduction: float
    step_macs: list[int] = field(default_factory=list)
    cache_bytes: int = 0  # the method's caches once every kind of step ran (whole batch: both CFG halves)
    text_encoder_macs: int | None = None
    vae_decode_macs: int | None = None

    def as_metrics(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "step_macs" and v is not None}
        out["transformer_macs_per_step_full"] = self.transformer_macs_full // max(1, len(self.step_macs))
        return out


def build_on_meta(class_name: str, config: dict) -> torch.nn.Module:
    import diffusers

    with torch.device("meta"):
        return getattr(diffusers, class_name).from_config(dict(config)).eval()


def transformer_inputs(transformer: torch.nn.Module, batch: int, height: int, width: int, text_tokens: int,
                       vae_scale: int = 8) -> dict:
    """Meta inputs of one denoising call, shaped like the family's pipeline makes them (`cat.families`)."""
    from cat.families import family_for

    family = family_for(transformer, "the MAC counter")
    return family.example_inputs(transformer.config, batch, height // vae_scale, width // vae_scale, text_tokens,
                                 device="meta")


def transformer_macs(transformer: torch.nn.Module, inputs: dict, steps: int, method: cat.MethodConfig | None,
                     cfg_pairs: bool) -> tuple[list[int], list[int], int]:
    """Per-step MACs of the method and of the full model over a schedule of `steps` steps, and the bytes the
    method's caches hold once its schedule has run every kind of step (one generation of this batch; shapes
    on `meta`). ValueError when the method has no offline schedule."""
    from cat.families import family_for

    h, w = family_for(transformer, "the MAC counter").grid(transformer, (), inputs)
    n = h * w
    full = count_macs(transformer, **inputs)
    schedule = [n] * steps if method is None else method.offline_schedule(steps, n)
    if schedule is None:
        raise ValueError(f"{type(method).__name__} has no offline schedule; its MACs are counted while it runs")
    per_tokens, cache = {n: full}, 0
    todo = set(schedule) - {n}
    if todo:
        with cat.apply(transformer, method) as handle:
            handle.reset(cfg_pairs=cfg_pairs, num_steps=steps)
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


def _cached(fn):
    """Memoises a MAC count on its (hashable) description: sweep cells repeat the same counts."""
    import functools

    return functools.lru_cache(maxsize=4096)(fn)


@_cached
def _transformer_report(class_name: str, config_json: str, height: int, width: int, text_tokens: int, steps: int,
                        guidance: bool, method: cat.MethodConfig | None, vae_scale: int) -> tuple[list[int], list[int], int]:
    import json

    transformer = build_on_meta(class_name, json.loads(config_json))
    batch = 2 if guidance else 1
    inputs = transformer_inputs(transformer, batch, height, width, text_tokens, vae_scale)
    return transformer_macs(transformer, inputs, steps, method, cfg_pairs=guidance)


def report_from_config(class_name: str, config: dict, **kwargs) -> "MacsReport":
    """`report` for a transformer given by class name and config (counts are memoised)."""
    import json

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


def count(cfg, run_dir, method) -> dict:
    """`task=macs`: the model's and the method's transformer MACs from the configs alone (no weights)."""
    from omegaconf import OmegaConf

    from .config_files import transformer_config

    model_cfg = transformer_config(OmegaConf.to_container(cfg.model, resolve=True))
    return report_for_model(model_cfg, method).as_metrics()


def executed(pipe, cfg, method, prompts, kwargs) -> dict:
    """Executed transformer MACs per image of the full model and of the method, counted while they run
    on the first `metrics.macs_prompts` prompts (one batch, the run's seeds)."""
    from .generate import generators

    sample = prompts[: max(1, int(cfg.metrics.get("macs_prompts", 4)))]

    def call(**overrides):
        pipe([p.text for p in sample], generator=generators(cfg, sample), **{**kwargs, **overrides})

    log.info("counting executed MACs: full model, %d prompt(s) ...", len(sample))
    full = realised_transformer_macs(pipe, call) / len(sample)
    out = {"transformer_macs_full": full, "transformer_macs_per_step_full": full / cfg.model.steps,
           "macs_prompts": len(sample)}
    if method is None:
        return out
    log.info("counting executed MACs: %s, %d prompt(s) ...", cfg.method.name, len(sample))
    with cat.apply(pipe, method) as handle:
        overrides = handle.call_overrides(kwargs["num_inference_steps"])
        done = realised_transformer_macs(pipe, lambda: call(**overrides)) / len(sample)
    out.update({"transformer_macs": done, "macs_reduction": 1.0 - done / full})
    return out


def main(argv=None) -> None:
    """`python -m experiments.macs [--json] [overrides ...]`: `task=macs` without a run folder, e.g.
    `model=sd3_medium model.steps=50 method=ras` (run.py's groups and keys)."""
    from hydra import compose, initialize_config_dir

    from . import resolvers  # noqa: F401  (registers the config resolvers)
    from .checks import validate
    from .config_files import CONF

    p = argparse.ArgumentParser(description="Count transformer MACs of the full model and a method, offline.")
    p.add_argument("--json", action="store_true")
    p.add_argument("overrides", nargs="*", help="run.py overrides (model=..., model.steps=..., method=..., ...)")
    args = p.parse_args(argv)
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*args.overrides, "task=macs"])
    metrics = count(cfg, None, validate(cfg))
    if args.json:
        print(json.dumps(metrics, indent=2))
        return
    from omegaconf import OmegaConf

    from .results import knob_of

    steps = cfg.model.steps
    knob, value = knob_of(OmegaConf.to_container(cfg.method, resolve=True))
    setting = f" {knob}={value}" if knob else ""
    print(f"model {cfg.model.name}  {cfg.model.height}x{cfg.model.width}  {steps} steps  method {cfg.method.name}{setting}")
    print(f"full transformer:   {metrics['transformer_macs_full'] / steps / 1e12:.3f} TMACs/step, "
          f"{metrics['transformer_macs_full']:.4g} MACs/image")
    print(f"method transformer: {metrics['transformer_macs']:.4g} MACs/image  (reduction "
          f"{100 * metrics['macs_reduction']:.1f}%)")
    if "text_encoder_macs" in metrics:
        print(f"text encoders:      {metrics['text_encoder_macs']:.4g} MACs/prompt")
    if "vae_decode_macs" in metrics:
        print(f"VAE decode:         {metrics['vae_decode_macs']:.4g} MACs/image")


if __name__ == "__main__":
    main()

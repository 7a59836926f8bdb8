"""MACs, counted by a tool: `torch.utils.flop_counter.FlopCounterMode` on `meta`-device models built
from the real configs (no weights, no memory). MACs = FLOPs / 2.

The transformer is counted once per distinct number of recomputed image tokens (a full step and a
pruned step), by running CAT's real timeline on the meta model, and summed over the step schedule.
Attention products are counted: on `meta` SDPA is decomposed into matmuls; for CPU tensors the CPU
flash kernel is mapped to the SDPA formula.

    python -m experiments.macs --model sd3_medium --steps 28 --keep-ratio 0.3
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

import cat


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
    cache_bytes: int = 0  # CAT's caches during pruned steps (whole batch: both CFG halves)
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
    """Meta inputs of one denoising call, shaped like the family's pipeline makes them."""
    cfg = transformer.config
    name = type(transformer).__name__
    h, w = height // vae_scale, width // vae_scale
    meta = {"device": "meta"}
    if name == "SD3Transformer2DModel":
        return dict(hidden_states=torch.empty(batch, cfg.in_channels, h, w, **meta),
                    encoder_hidden_states=torch.empty(batch, text_tokens, cfg.joint_attention_dim, **meta),
                    pooled_projections=torch.empty(batch, cfg.pooled_projection_dim, **meta),
                    timestep=torch.empty(batch, **meta), return_dict=False)
    if name == "PixArtTransformer2DModel":
        extra = {"resolution": torch.empty(batch, 2, **meta), "aspect_ratio": torch.empty(batch, 1, **meta)}
        return dict(hidden_states=torch.empty(batch, cfg.in_channels, h, w, **meta),
                    encoder_hidden_states=torch.empty(batch, text_tokens, cfg.caption_channels, **meta),
                    timestep=torch.empty(batch, **meta),
                    added_cond_kwargs=extra if cfg.use_additional_conditions else {"resolution": None, "aspect_ratio": None},
                    return_dict=False)
    if name == "FluxTransformer2DModel":
        n = (h // 2) * (w // 2)
        return dict(hidden_states=torch.empty(batch, n, cfg.in_channels, **meta),
                    encoder_hidden_states=torch.empty(batch, text_tokens, cfg.joint_attention_dim, **meta),
                    pooled_projections=torch.empty(batch, cfg.pooled_projection_dim, **meta),
                    timestep=torch.empty(batch, **meta),
                    guidance=torch.empty(batch, **meta) if cfg.guidance_embeds else None,
                    img_ids=torch.empty(n, 3, **meta), txt_ids=torch.empty(text_tokens, 3, **meta),
                    return_dict=False)
    raise TypeError(f"no MAC inputs for {name}; supported: {', '.join(cat.supported_models())}")


def transformer_macs(transformer: torch.nn.Module, inputs: dict, steps: int, method: cat.CATConfig | None,
                     cfg_pairs: bool) -> tuple[list[int], list[int], int]:
    """Per-step MACs of the method and of the full model over a schedule of `steps` steps, and the bytes
    CAT's caches hold during the pruned steps (one generation of this batch; shapes on `meta`)."""
    n = _num_tokens(transformer, inputs)
    full = count_macs(transformer, **inputs)
    if method is None or not method.prunes(n) or steps <= method.warmup_steps:
        return [full] * steps, [full] * steps, 0
    with cat.apply(transformer, method) as handle:
        handle.reset(cfg_pairs=cfg_pairs)
        for _ in range(method.warmup_steps):  # the full steps, up to the first selection
            transformer(**inputs)
        pruned = count_macs(transformer, **inputs)
        cache = handle.cache_bytes()
    per_tokens = {n: full, method.num_kept(n): pruned}
    return [per_tokens[t] for t in cat.token_schedule(method, steps, n)], [full] * steps, cache


def _num_tokens(transformer, inputs) -> int:
    hidden = inputs["hidden_states"]
    if hidden.ndim == 3:
        return hidden.shape[1]
    p = transformer.config.patch_size
    return (hidden.shape[-2] // p) * (hidden.shape[-1] // p)


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

    return functools.lru_cache(maxsize=64)(fn)


@_cached
def _transformer_report(class_name: str, config_json: str, height: int, width: int, text_tokens: int, steps: int,
                        guidance: bool, method: cat.CATConfig | None, vae_scale: int) -> tuple[list[int], list[int], int]:
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


def report_for_model(model_cfg: dict, method: cat.CATConfig | None, steps: int | None = None) -> MacsReport:
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


def main(argv=None) -> None:
    from experiments.config_files import load_model_config

    p = argparse.ArgumentParser(description="Count transformer MACs of the full model and CAT, offline.")
    p.add_argument("--model", default="sd3_medium", help="a file name of conf/model/")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--keep-ratio", type=float, default=0.3)
    p.add_argument("--warmup-steps", type=int, default=None, help="default: round(8 / 28 * steps)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    model_cfg = load_model_config(args.model)
    steps = args.steps or model_cfg["steps"]
    warmup = args.warmup_steps or max(2, round(8 / 28 * steps))
    rep = report_for_model(model_cfg, cat.CATConfig(keep_ratio=args.keep_ratio, warmup_steps=warmup), steps)
    if args.json:
        print(json.dumps(rep.as_metrics(), indent=2))
        return
    print(f"model {args.model}  {model_cfg['height']}x{model_cfg['width']}  {steps} steps  "
          f"CAT keep_ratio={args.keep_ratio} warmup={warmup}")
    print(f"full transformer: {rep.transformer_macs_full / steps / 1e12:.3f} TMACs/step, {rep.transformer_macs_full:.4g} MACs/image")
    print(f"CAT transformer:  {rep.transformer_macs:.4g} MACs/image  (reduction {100 * rep.macs_reduction:.1f}%)")
    if rep.text_encoder_macs is not None:
        print(f"text encoders:    {rep.text_encoder_macs:.4g} MACs/prompt")
    if rep.vae_decode_macs is not None:
        print(f"VAE decode:       {rep.vae_decode_macs:.4g} MACs/image")


if __name__ == "__main__":
    main()

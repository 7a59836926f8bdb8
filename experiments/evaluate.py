"""Evaluation of a run's images: prompt adherence, CLIP score, fidelity to the full model, FID, each a mean over
prompts with its 95% bootstrap interval, and the per-image records."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

from .checks import JUDGED

log = logging.getLogger(__name__)


def records(cfg, run_dir: Path, prompts, folders: dict, method) -> list[dict]:
    """One record per image: index, prompt, seed, variant, path (and the prompt's metadata)."""
    from .generate import image_path, prompt_seed

    return [{"index": p.index, "prompt": p.text, "seed": prompt_seed(cfg.seed, p.index), "variant": name,
             "path": str(image_path(folder, p.index).relative_to(run_dir)), **p.meta}
            for name, folder in folders.items() if name == "full" or method is not None for p in prompts]


def image_metrics(cfg, run_dir, prompts, folders, variant, method, records) -> dict:
    """The configured metrics of the full model's and the method's images, means over prompts with 95%
    bootstrap intervals; each record (one per image) gets its own values."""
    from .metrics.images import load_folder

    m = cfg.metrics
    out: dict = {}
    names = ["full"] + ([variant] if method is not None else [])
    images = {name: load_folder(folders[name])[1] for name in names}
    by_index = {name: dict(zip(load_folder(folders[name])[0], images[name])) for name in names}
    images = {name: [by_index[name][p.index] for p in prompts] for name in names}
    per_image: dict[tuple[str, int], dict] = {}

    def put(name, key, values):
        for p, v in zip(prompts, values):
            per_image.setdefault((name, p.index), {})[key] = float(v)

    if m.adherence and cfg.data.name in JUDGED:
        judge = importlib.import_module(f"experiments.{cfg.data.name}").judge
        log.info("metrics: the %s judge on %d image(s) ...", cfg.data.name, len(prompts) * len(names))

        for name in names:
            scores = [judge(img, p.text)["score"] for img, p in zip(images[name], prompts)]
            put(name, "adherence", scores)
            out["adherence" if name == variant else "adherence_full"] = sum(scores) / len(scores)
    if m.clip.enabled:
        from .metrics.clip_score import ClipScorer

        log.info("metrics: CLIP score (%s) on %d image(s) ...", m.clip.model, len(prompts) * len(names))
        scorer = ClipScorer(m.clip.backend, m.clip.model, m.clip.pretrained, batch_size=m.clip.batch_size)
        for name in names:
            scores = scorer.score(images[name], [p.text for p in prompts])
            put(name, "clip_score", scores.tolist())
            out["clip_score" if name == variant else "clip_score_full"] = scores.mean().item()
    if (m.get("image_reward") or {}).get("enabled"):
        from .metrics import imagereward

        log.info("metrics: ImageReward (%s) on %d image(s) ...", m.image_reward.model, len(prompts) * len(names))
        scorer = imagereward.load(m.image_reward.model)
        for name in names:
            scores = imagereward.image_reward(images[name], [p.text for p in prompts], scorer)
            put(name, "image_reward", scores)
            out["image_reward" if name == variant else "image_reward_full"] = sum(scores) / len(scores)
    if method is not None and m.fidelity:
        from .metrics.fidelity import fidelity

        log.info("metrics: PSNR, SSIM%s against the full model on %d image(s) ...", ", LPIPS" if m.lpips else "",
                 len(prompts))
        fid_ = fidelity(images[variant], images["full"], lpips=m.lpips)
        for key, values in fid_.pop("per_image").items():
            put(variant, key, values)
        out.update(fid_)
    if m.fid.enabled:
        from .metrics.fid import fid

        log.info("metrics: FID on %d image(s) ...", len(prompts))
        cache = Path(m.fid.cache_dir).expanduser()
        if m.fid.reference:
            for name in names:
                res = fid(images[name], m.fid.reference, cache_dir=cache, weights_path=m.fid.weights)
                out["fid" if name == variant else "fid_full"] = res["fid"]
                out["fid_num_reference"] = res["num_reference"]
        if method is not None and m.fid.vs_full:
            out["fid_vs_full"] = fid(images[variant], images["full"], weights_path=m.fid.weights)["fid"]
    from .stats import mean_ci

    # 95% bootstrap intervals over prompts of every per-image metric
    for name in names:
        suffix = "_full" if name == "full" else ""
        keys = {k for p in prompts for k in per_image.get((name, p.index), {})}
        for key in sorted(keys):
            values = [per_image.get((name, p.index), {}).get(key) for p in prompts]
            if None in values:
                continue
            mean, lo, hi = mean_ci(values)
            out[f"{key}{suffix}_lo"], out[f"{key}{suffix}_hi"] = lo, hi
    for rec in records:
        rec.update(per_image.get((rec["variant"], rec["index"]), {}))
    return out

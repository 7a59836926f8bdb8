"""How fast a model's features change from one denoising step to the next (the full model, no method).

    python scripts/feature_change.py model=tiny_sd3_shapes data.limit=16
    python scripts/feature_change.py model=tiny_sd3_scenes data.limit=16

Every method that reuses work (cached tokens, skipped steps, fewer steps) bets that consecutive steps
compute nearly the same thing. Per step this records, over the prompts (conditional and unconditional
halves alike): the relative change of the transformer's output, ||v_s - v_(s-1)|| / ||v_(s-1)||, and the
same for the image-stream output of every block, averaged over the blocks; and the scheduler's sigmas.
It also checks that a run at half the steps starts from exactly the same initial noise.

Writes results/feature_change/<model>-<steps>.csv and redraws results/feature_change/feature_change.png
from every csv there, one line per model. Takes the same overrides as run.py (data.limit: a count of prompts, -1
for all, null for 8); Hydra's log goes to outputs/logs/feature_change/.
"""

from __future__ import annotations

import sys

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from experiments.base.config_files import ROOT
from experiments.lifecycle import resolvers  # noqa: F401

OUT = ROOT / "results" / "feature_change"
COLUMNS = ("model", "step", "output_change", "block_change", "sigma")  # what the figure draws from each csv


def prompt_count(limit) -> int | None:
    """How many prompts `data.limit` asks for, as run.py reads it: a positive count, or -1 for all (None);
    null: 8."""
    if limit is None:
        return 8
    if limit == -1:
        return None
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise SystemExit(f"data.limit={limit!r} is invalid; allowed: a positive count, -1 (every prompt) or null "
                         "(8 prompts)")
    return limit


def check(cfg: DictConfig) -> None:
    """What the measurement needs, before any model loads: two steps or more (a change is between two steps)
    and a count of prompts."""
    steps = cfg.model.steps
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 2:
        raise SystemExit(f"model.steps={steps!r} is invalid; allowed: an integer >= 2 (a change is measured from "
                         "one step to the next)")
    prompt_count(cfg.data.limit)


def relative_change(now: torch.Tensor, before: torch.Tensor) -> float:
    """||now - before|| / ||before|| per sample, averaged.  [B, ...] x2 -> float"""
    b = now.shape[0]
    diff = (now - before).reshape(b, -1).norm(dim=1)
    return float((diff / before.reshape(b, -1).norm(dim=1).clamp_min(1e-12)).mean())


class Recorder:
    """Keeps the transformer's output and each block's image-stream output of the previous call."""

    def __init__(self, transformer):
        self.rows: list[dict] = []
        self.first_input: torch.Tensor | None = None
        self._prev: dict[str, torch.Tensor] = {}
        self._now: dict[str, torch.Tensor] = {}
        self._handles = [transformer.register_forward_pre_hook(self._begin, with_kwargs=True),
                         transformer.register_forward_hook(self._end)]
        for i, block in enumerate(transformer.transformer_blocks):
            self._handles.append(block.register_forward_hook(lambda m, a, out, i=i: self._block(i, out)))

    def _begin(self, module, args, kwargs):
        if self.first_input is None:
            self.first_input = (kwargs.get("hidden_states", args[0] if args else None)).detach().clone()
        self._now = {}

    def _block(self, i: int, out) -> None:
        image = out[-1] if isinstance(out, tuple) else out  # SD3 blocks return (text, image)
        self._now[f"block{i}"] = image.detach().float().clone()

    def _end(self, module, args, out) -> None:
        self._now["output"] = (out[0] if isinstance(out, tuple) else out.sample).detach().float().clone()
        step = len(self.rows)
        row = {"step": step}
        if self._prev:
            row["output_change"] = relative_change(self._now["output"], self._prev["output"])
            blocks = [k for k in self._now if k.startswith("block")]
            row["block_change"] = sum(relative_change(self._now[k], self._prev[k]) for k in blocks) / len(blocks)
        self.rows.append(row)
        self._prev = self._now

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    import pandas as pd

    from experiments.base.devices import pick_device, pick_dtype
    from experiments.run.generate import call_kwargs, prompt_seed, run_prompts
    from experiments.run.pipelines import load_pipeline

    check(cfg)
    prompts = run_prompts(cfg)[: prompt_count(cfg.data.limit)]
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, cfg.model.dtype, device)
    pipe = load_pipeline(OmegaConf.to_container(cfg.model, resolve=True), device, dtype)
    kwargs = call_kwargs(cfg)
    steps = kwargs["num_inference_steps"]

    def run(num_steps: int) -> Recorder:
        rec = Recorder(pipe.transformer)
        try:
            pipe([p.text for p in prompts], output_type="latent",
                 generator=[torch.Generator().manual_seed(prompt_seed(cfg.seed, p.index)) for p in prompts],
                 **{**kwargs, "num_inference_steps": num_steps})
        finally:
            rec.remove()
        return rec

    full = run(steps)
    sigmas = pipe.scheduler.sigmas[:steps].tolist()
    half = run(max(1, steps // 2))
    same_noise = torch.equal(full.first_input, half.first_input)
    frame = pd.DataFrame(full.rows)
    frame["sigma"] = sigmas
    frame.insert(0, "model", cfg.model.name)
    OUT.mkdir(parents=True, exist_ok=True)
    frame.to_csv(OUT / f"{cfg.model.name}-{steps}.csv", index=False)
    shift = pipe.scheduler.config.get("shift")
    print(frame.to_string(index=False, float_format="%.4f"))
    print(f"{cfg.model.name}: {len(prompts)} prompts, {steps} steps, scheduler shift {shift}; a run at "
          f"{steps // 2} steps starts from the same initial noise: {same_noise}; mean change per step: "
          f"output {frame.output_change.mean():.4f}, blocks {frame.block_change.mean():.4f}")
    figure()


def figure() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = curves()
    if not frames:
        print(f"warning: no readable csv in {OUT}: {OUT / 'feature_change.png'} is not redrawn", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for frame in frames:
        label = f"{frame.model.iloc[0]} ({len(frame)} steps)"
        axes[0].plot(frame.step, frame.output_change, marker=".", label=label)
        axes[1].plot(frame.step, frame.block_change, marker=".", label=label)
        axes[2].plot(frame.step, frame.sigma, marker=".", label=label)
    for ax, title in zip(axes, ("transformer output: relative change from the previous step",
                                "block image outputs: relative change (mean over blocks)",
                                "scheduler sigma at the step")):
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "feature_change.png", dpi=120)
    plt.close(fig)



def curves() -> list:
    """Every csv in OUT with the figure's columns and a row; one that is not is named and left out."""
    import pandas as pd

    frames = []
    for path in sorted(OUT.glob("*.csv")):
        try:
            frame = pd.read_csv(path)
        except (OSError, ValueError) as err:  # pandas' EmptyDataError and ParserError are ValueErrors
            print(f"warning: {path} is unreadable ({type(err).__name__}: {err}); left out of the figure",
                  file=sys.stderr)
            continue
        if missing := [c for c in COLUMNS if c not in frame]:
            print(f"warning: {path} lacks {', '.join(missing)}; left out of the figure", file=sys.stderr)
        elif frame.empty:
            print(f"warning: {path} holds no step; left out of the figure", file=sys.stderr)
        else:
            frames.append(frame)
    return frames


def with_log_folder(argv: list[str], script: str) -> list[str]:
    """`argv` with Hydra's run folder set to `<output_root>/logs/<script>` unless it sets one: by default it is
    run.py's run folder of the same overrides, and a stub of it (a log, no results) would be left in runs/."""
    if any(arg.lstrip("+").startswith("hydra.run.dir=") for arg in argv[1:]):
        return argv
    return [*argv, f"hydra.run.dir=${{output_root}}/logs/{script}"]


if __name__ == "__main__":
    sys.argv = with_log_folder(sys.argv, "feature_change")
    main()

"""Figures from saved results: image grids (method vs full model), the selection-map figure, and a run's own."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from PIL import Image  # noqa: E402

from ..base.methods import knob_of  # noqa: E402
from ..run.generate import image_path  # noqa: E402


def save(fig, path: Path, pdf: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    if pdf:
        fig.savefig(path.with_suffix(".pdf"), bbox_inches="tight")
    plt.close(fig)
    return path


def image_grid(rows: dict[str, list[Path]], titles: list[str] | None, path: Path, pdf: bool = False,
               diff_amplify: float = 8.0) -> Path:
    """One row per variant, one column per prompt (full prompt as the column title), and, when there is a
    `full` row and one other, a last row with |method - full| amplified `diff_amplify` times.

    Row keys are the row labels: say the settings (e.g. "<method> <knob>=<value>, 28 steps")."""
    import textwrap

    names = list(rows)
    diff = len(names) == 2 and any(n.startswith("full") for n in names)
    cols = max(len(v) for v in rows.values())
    n_rows = len(names) + int(diff)
    fig, axes = plt.subplots(n_rows, cols, figsize=(1.7 * cols, 1.75 * n_rows + 0.5), squeeze=False)
    loaded = {n: [np.asarray(Image.open(p).convert("RGB")) for p in rows[n]] for n in names}
    full_name = next((n for n in names if n.startswith("full")), None)
    other = next((n for n in names if n != full_name), None)
    for r in range(n_rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r < len(names):
                if c < len(loaded[names[r]]):
                    ax.imshow(loaded[names[r]][c])
            elif c < min(len(loaded[full_name]), len(loaded[other])):
                d = np.abs(loaded[other][c].astype(float) - loaded[full_name][c].astype(float)).mean(-1)
                ax.imshow(np.clip(d * diff_amplify, 0, 255), cmap="magma", vmin=0, vmax=255)
            if c == 0:
                label = names[r] if r < len(names) else f"|{other} - full| x{diff_amplify:g}"
                ax.set_ylabel("\n".join(textwrap.wrap(label, 22)), fontsize=6)
            if r == 0 and titles and c < len(titles):
                ax.set_title("\n".join(textwrap.wrap(titles[c], 24)), fontsize=5)
    return save(fig, path, pdf)


def selection_columns(steps, phases, num_columns: int = 6) -> list[int]:
    """The records the selection figure shows: up to `num_columns` clustering/pruned steps spread evenly
    from the first to the last, each a distinct step (fewer columns when fewer steps select)."""
    usable: dict[int, int] = {}  # step -> its first record
    for i, (step, phase) in enumerate(zip(steps, phases)):
        if str(phase) in ("cluster", "pruned"):
            usable.setdefault(int(step), i)
    records = list(usable.values())
    count = min(num_columns, len(records))
    # spacing (len - 1) / (count - 1) >= 1, so the rounded positions are distinct
    return [records[round(j * (len(records) - 1) / max(1, count - 1))] for j in range(count)]


def selection_figure(npz: Path, path: Path, num_columns: int = 6, pdf: bool = False) -> Path:
    """From a method's `selection.npz` (`experiments.run.generate.save_selection`), like the paper's overview: per selected step, relative noise, clusters, recomputed tokens and
    staleness (high = not recomputed lately), each row on one colour scale with its colour bar."""
    import textwrap

    data = np.load(npz, allow_pickle=False)
    h, w = (int(v) for v in data["grid"])
    steps, phases = data["steps"], [str(p) for p in data["phases"]]
    picks = selection_columns(steps, phases, num_columns)
    if not picks:
        raise ValueError(f"{npz} holds no pruned step")
    freq = np.asarray(data["staleness"], dtype=float)  # selection frequency f: high = recomputed lately
    stale = freq.max() - freq  # shown the right way round: high = stale
    rows = {
        "relative noise r": [np.asarray(data["noise_magnitude"][i], float) for i in picks],
        "clusters": [np.asarray(data["labels"], float)] * len(picks),
        "recomputed next step": [np.asarray(data["active"][min(i + 1, len(phases) - 1)], float) for i in picks],
        "staleness (high = stale)": [stale[i] for i in picks],
    }
    fig, axes = plt.subplots(len(rows), len(picks), figsize=(1.5 * len(picks) + 0.9, 1.6 * len(rows) + 0.6),
                             squeeze=False)
    for r, (name, maps) in enumerate(rows.items()):
        vmin, vmax = min(float(m.min()) for m in maps), max(float(m.max()) for m in maps)
        cmap = "tab20" if name == "clusters" else ("gray" if name.startswith("recomputed") else "viridis")
        for c, (i, m) in enumerate(zip(picks, maps)):
            ax = axes[r][c]
            im = ax.imshow(m.reshape(h, w), cmap=cmap, vmin=vmin, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=7)
            if r == 0:
                ax.set_title(f"step {int(steps[i])}", fontsize=7)
        fig.colorbar(im, ax=list(axes[r]), fraction=0.025, pad=0.01).ax.tick_params(labelsize=5)
    prompt = str(data["prompt"]) if "prompt" in data else ""
    kept = int(data["kept"]) if "kept" in data else None
    k = int(data["num_clusters"]) if "num_clusters" in data else int(np.asarray(data["labels"]).max()) + 1
    info = f"{h}x{w} token grid, k={k} clusters" + (f", K={kept} of {h * w} tokens recomputed per pruned step"
                                                     if kept else "")
    title = "CAT selection: " + info + ("\n" + "\n".join(textwrap.wrap(f'prompt: "{prompt}"', 90)) if prompt else "")
    fig.suptitle(title, fontsize=7)
    return save(fig, path, pdf)


def run_figures(cfg, run_dir: Path, prompts, folders: dict, variant: str) -> None:
    """grid.png (the first prompts, the full model and the method with its setting) and, when the method
    recorded selections, selection.png."""
    shown = prompts[:8]
    labels = {name: name for name in folders}
    labels["full"] = f"full model ({cfg.model.steps} steps)"
    if variant in folders:
        knob, value = knob_of(OmegaConf.to_container(cfg.method, resolve=True))
        labels[variant] = f"{variant}" + (f" {knob}={value}" if knob else "")
    rows = {labels[name]: [image_path(folder, p.index) for p in shown] for name, folder in folders.items()
            if image_path(folder, shown[0].index).exists()}
    image_grid(rows, [p.text for p in shown], run_dir / "grid.png")
    if (run_dir / "selection.npz").exists():
        selection_figure(run_dir / "selection.npz", run_dir / "selection.png")

"""Writing results: atomic JSON files, per-image records, and Weights & Biases (offline by default)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .identity import scrub

TMP_SUFFIX = ".tmp"
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: Path, write) -> None:
    """Calls `write(file)` on a uniquely named temporary file next to `path`, then renames it onto
    `path`: a crash leaves either the old file or the new one, never half a file, and two writers
    never share a temporary file. Leftover temporaries end in `.tmp` and are never read."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_UMASK)  # as a plain open() would create it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: Path, data) -> None:
    """Writes JSON atomically, so a crash never leaves half a file."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=float) + "\n")


def write_lines(path: Path, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r, sort_keys=True, default=float) + "\n" for r in rows))


def read_json(path: Path):
    """The JSON in `path`, or None when it is missing, truncated or corrupt."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def clean_temporaries(folder: Path, recursive: bool = True) -> None:
    """Removes the temporary files a killed writer left in `folder` and, when `recursive`, in every folder
    below it (call only while holding the folder's lock, and while no other process writes in it)."""
    for tmp in (Path(folder).rglob if recursive else Path(folder).glob)(f".*{TMP_SUFFIX}"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)


STUB = frozenset({".hydra", "run.log"})  # what Hydra puts in a run folder before the task starts


def remove_stub(run_dir: Path) -> bool:
    """Removes a run folder that holds nothing but what Hydra created before the task started (`.hydra/`
    and the log), and its parent if that is left empty. A folder holding anything else, such as an
    earlier run's results, is kept. Returns whether the folder was removed."""
    import shutil

    run_dir = Path(run_dir)
    if not run_dir.is_dir() or {p.name for p in run_dir.iterdir()} - STUB:
        return False
    shutil.rmtree(run_dir)
    try:
        run_dir.parent.rmdir()
    except OSError:  # not empty: other runs of the same name
        pass
    return True


class WandbSink:
    """Logs a run to W&B; `mode` offline (default: no account, `wandb sync` later), online or disabled."""

    def __init__(self, project: str, mode: str, group: str | None, name: str, config: dict, directory: Path):
        import wandb

        self.wandb = wandb
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(project=project, mode=os.environ.get("WANDB_MODE", mode), group=group, name=name,
                              config=scrub(config), dir=str(directory), reinit="finish_previous",
                              # no command line, code or host metadata: overrides may hold secrets
                              settings=wandb.Settings(x_disable_meta=True, save_code=False, disable_code=True,
                                                      console="off"))

    def log(self, metrics: dict, images: dict[str, Path] | None = None) -> None:
        data = dict(metrics)
        for key, path in (images or {}).items():
            if Path(path).exists():
                data[key] = self.wandb.Image(str(path))
        self.run.log(data)
        for k, v in metrics.items():
            self.run.summary[k] = v

    def table(self, key: str, frame) -> None:
        self.run.log({key: self.wandb.Table(dataframe=frame)})

    def finish(self) -> None:
        self.run.finish()


SINKS = {"wandb": WandbSink}  # conf/logger/<name>.yaml -> its sink (any other logger logs nothing)


def make_sink(logger_cfg: dict, name: str, group: str | None, config: dict, directory: Path):
    sink = SINKS.get((logger_cfg or {}).get("name"))
    if sink is None:
        return None
    return sink(logger_cfg.get("project", "cat-pruning"), logger_cfg.get("mode", "offline"), group, name, config,
                directory)


def log_run(cfg, run_dir: Path, metrics: dict) -> None:
    """Logs a run's metrics and figures to the configured sink (W&B), if any."""
    from omegaconf import OmegaConf

    sink = make_sink(OmegaConf.to_container(cfg.logger, resolve=True), run_dir.name or cfg.name,
                     cfg.get("group"), OmegaConf.to_container(cfg, resolve=True), run_dir)
    if sink is None:
        return
    sink.log(metrics, {"grid": run_dir / "grid.png", "selection": run_dir / "selection.png"})
    sink.finish()

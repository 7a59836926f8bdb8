"""The run lifecycle: validation, the run key, the run folder's lock and status, and the reuse of finished
runs (this folder's, a sibling's of the same key, or, on request, one made by other code)."""

from __future__ import annotations

import logging
import os
import time
import traceback
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..base.config_files import ConfigError
from ..base.files import clean_temporaries, lock, read_json, write_json, write_text
from ..base.secrets import scrub, scrub_tree, secret_values
from ..run import keys
from ..run.provenance import provenance
from ..tasks import TASKS
from ..tasks.validation import validate

log = logging.getLogger(__name__)


def run_task(cfg: DictConfig, run_dir: Path, record_invalid: bool = True) -> dict:
    """Validates cfg (once), then runs cfg.task in run_dir, recording status.json; reruns of a finished run
    return its metrics. Every secret value of cfg is scrubbed from the run folder's text files afterwards
    (Hydra's record of the command line, run.log, W&B files), whether the run succeeds or fails.

    An invalid configuration raises ConfigError, recorded in status.json when `record_invalid` (a sweep
    cell; a single run leaves no folder instead). The run directory is locked for the whole run, so a
    second process on the same directory waits and then finds the results instead of redoing or
    corrupting them.
    """
    scrub_run(cfg, run_dir / ".hydra")  # before the run: Hydra records the command line there
    try:
        return _run_task(cfg, run_dir, record_invalid)
    finally:
        scrub_run(cfg, run_dir)


def scrub_run(cfg: DictConfig, folder: Path) -> None:
    """Replaces every secret value of cfg in the text files under folder (run.log, W&B files, ...)."""
    scrub_tree(folder, secret_values({key: keys.plain(cfg, key) for key in cfg}))


def _run_task(cfg: DictConfig, run_dir: Path, record_invalid: bool) -> dict:
    started = time.monotonic()
    run_dir.mkdir(parents=True, exist_ok=True)
    status_file, metrics_file = run_dir / "status.json", run_dir / "metrics.json"
    try:
        method = validate(cfg)
    except ConfigError as err:
        if record_invalid:
            write_json(status_file, {"status": "failed", "error": f"ConfigError: {err}"})
        raise
    plain = OmegaConf.to_container(cfg, resolve=True)
    material = keys.key_material(plain)
    key, config_key = keys.digest(material), keys.config_digest(material)
    code, reuse = material["code"]["sha256"], bool(cfg.get("reuse_other_code"))
    with lock(run_dir / ".lock"):
        # recursively unless this is a distributed launch, whose other ranks write without the lock
        clean_temporaries(run_dir, recursive=int(os.environ.get("WORLD_SIZE", "1")) == 1)
        if not cfg.overwrite and (found := finished_here(run_dir, key, config_key, code, reuse)) is not None:
            return cached(cfg, run_dir, method, found)
        status_file.unlink(missing_ok=True)
        metrics_file.unlink(missing_ok=True)
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(scrub(plain))))
        record = provenance(str(cfg.device))
        write_json(run_dir / "run_key.json", {"key": key, "config_key": config_key, "material": material,
                                              "provenance": record})
        log.info("run %s: task=%s model=%s method=%s key=%s", run_dir, cfg.task, cfg.model.name, cfg.method.name, key)
        log.info("code %s (commit %s%s); torch %s, diffusers %s, transformers %s", code[:12], record["git_sha"],
                 ", dirty tree" if record["git_dirty"] else "", record["torch"], record["diffusers"],
                 record["transformers"])
        if not cfg.overwrite and (found := reuse_sibling(run_dir, key, config_key, code, reuse)) is not None:
            return cached(cfg, run_dir, method, found)
        try:
            metrics = TASKS[cfg.task].run(cfg, run_dir, method)
        except Exception as err:
            write_json(status_file, {"status": "failed", "error": f"{type(err).__name__}: {err}",
                                     "traceback": traceback.format_exc()})
            raise
        if metrics is None:
            return {}
        write_json(metrics_file, metrics)
        write_json(status_file, {"status": "done"})  # no time in it: a resumed run ends with an uninterrupted run's files
        log.info("done: %s", ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in sorted(metrics.items())))
        log.info("done in %s: %s", duration(time.monotonic() - started), run_dir)
    return metrics


def duration(seconds: float) -> str:
    """`42 s`, `3 min 05 s`, `2 h 07 min`."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def cached(cfg: DictConfig, run_dir: Path, method, metrics: dict) -> dict:
    """The metrics of a finished run returned instead of computing, its timing measured again when
    `metrics.latency.retime` asks (its images and other metrics kept); a timing marked noisy is never returned
    in silence."""
    retime = TASKS[cfg.task].retime
    asked = bool(OmegaConf.select(cfg, "metrics.latency.retime", default=False))
    if asked and retime is not None:
        log.info("%s: timing it again (metrics.latency.retime=true); its images and other metrics are kept", run_dir)
        metrics = retime(cfg, run_dir, method, metrics)
        write_json(run_dir / "metrics.json", metrics)
    elif metrics.get("speedup_noisy"):
        log.warning("%s holds a noisy timing (speedup %.3g, spread %.3g; see its run.log): retime it on a quiet "
                    "machine with metrics.latency.retime=true (the images are kept) or task=latency", run_dir,
                    metrics.get("speedup", float("nan")), metrics.get("speedup_spread", float("nan")))
    return metrics


SIBLING_SKIP = {".hydra", ".lock", "config.yaml", "run_key.json", "status.json", "metrics.json", "run.log"}


def _finished(folder: Path):
    """(run_key.json, status.json, metrics) of a finished run folder, or None."""
    recorded, status = read_json(folder / "run_key.json") or {}, read_json(folder / "status.json") or {}
    metrics = read_json(folder / "metrics.json")
    if status.get("status") != "done" or not isinstance(metrics, dict):
        return None
    return recorded, status, metrics


def _made_by(recorded: dict) -> str:
    """The code that made a run's results: the code it reused them from, else the code it is keyed by."""
    return (recorded.get("reused_code_from") or ((recorded.get("material") or {}).get("code") or {}).get("sha256")
            or "unknown")


def _same_config_other_code(recorded: dict, key: str, config_key: str) -> bool:
    # a run recorded before the code joined the key: its key is its configuration's key
    return recorded.get("key") != key and (recorded.get("config_key") or recorded.get("key")) == config_key


def _stale_mark(recorded: dict) -> dict:
    """`reused_code_from`: the code that made a run's results, when that is not the code it is keyed by."""
    if recorded.get("reused_code_from"):
        return {"reused_code_from": recorded["reused_code_from"]}
    return {}


def finished_here(run_dir: Path, key: str, config_key: str, code: str, reuse_other_code: bool) -> dict | None:
    """The metrics of the finished run in run_dir when it may be returned instead of computing: its key
    is this run's key, or it is this configuration made by other code and `reuse_other_code` is set (it
    is then marked `reused_code_from` in run_key.json and status.json, which every table shows)."""
    found = _finished(run_dir)
    if found is None:
        if (run_dir / "status.json").exists():
            log.info("%s is incomplete or corrupt; redoing it", run_dir)
        return None
    recorded, status, metrics = found
    if recorded.get("key") == key:
        log.info("%s is already done (same configuration, same code); skipping (overwrite=true to redo)", run_dir)
        return metrics
    if not _same_config_other_code(recorded, key, config_key):
        log.warning("%s holds the results of a different configuration; redoing it", run_dir)
        return None
    if not reuse_other_code:
        log.warning("%s holds results made by other code (code %s, now %s); redoing it (reuse_other_code=true "
                    "reuses them, marked stale_code)", run_dir, _made_by(recorded)[:12], code[:12])
        return None
    mark = {"reused_code_from": _made_by(recorded)}
    write_json(run_dir / "status.json", {**status, **mark})
    write_json(run_dir / "run_key.json", {**recorded, **mark})
    log.warning("%s was made by other code (code %s, now %s); reused as asked (reuse_other_code=true) and "
                "marked stale_code", run_dir, mark["reused_code_from"][:12], code[:12])
    return metrics


def reuse_sibling(run_dir: Path, key: str, config_key: str | None = None, code: str = "",
                  reuse_other_code: bool = False) -> dict | None:
    """A finished run in a sibling folder whose results this run may take: one with the same key (a
    sweep cell whose overrides differ only in fields its method never reads), or, with
    `reuse_other_code`, one of the same configuration made by other code (the newest; marked
    `reused_code_from`). Without the opt-in such a run is named in a log line and this run computes.
    Its outputs are copied here and its metrics returned; None when this run must compute."""
    other_code = []
    for folder in sorted(run_dir.parent.iterdir()):
        if folder == run_dir or not folder.is_dir() or (found := _finished(folder)) is None:
            continue
        recorded, _, metrics = found
        if recorded.get("key") == key:
            return _copy_run(folder, run_dir, metrics, {"reused_from": folder.name, **_stale_mark(recorded)},
                             "has the same key (the overrides differ only in fields the method never reads)")
        if config_key is not None and _same_config_other_code(recorded, key, config_key):
            other_code.append((folder, recorded, metrics))
    if not other_code:
        return None
    folder, recorded, metrics = max(other_code, key=lambda f: (f[0] / "metrics.json").stat().st_mtime_ns)
    theirs = _made_by(recorded)
    if not reuse_other_code:
        log.warning("%s holds this configuration's results made by other code (code %s, now %s); computing them "
                    "anew (reuse_other_code=true reuses them, marked stale_code)", folder, theirs[:12], code[:12])
        return None
    return _copy_run(folder, run_dir, metrics, {"reused_from": folder.name, "reused_code_from": theirs},
                     f"holds this configuration's results made by other code (code {theirs[:12]}, now {code[:12]}); "
                     "reused as asked (reuse_other_code=true) and marked stale_code")


def _copy_run(source: Path, run_dir: Path, metrics: dict, mark: dict, why: str) -> dict:
    """Copies a finished run's outputs into run_dir, records where they came from, returns its metrics."""
    import shutil

    for item in source.iterdir():
        if item.name in SIBLING_SKIP or item.name.startswith("."):
            continue
        target = run_dir / item.name
        if item.is_dir():
            shutil.copytree(item, target, dirs_exist_ok=True)
        else:
            shutil.copy2(item, target)
    key_file = run_dir / "run_key.json"
    write_json(key_file, {**(read_json(key_file) or {}), **mark})
    write_json(run_dir / "metrics.json", metrics)
    write_json(run_dir / "status.json", {"status": "done", **mark})
    (log.warning if "reused_code_from" in mark else log.info)("%s %s: its results are reused in %s", source, why,
                                                                run_dir)
    return metrics


def print_table(metrics: dict) -> str:
    lines = [f"{'metric':<32}{'value':>16}", "-" * 48]
    for k in sorted(metrics):
        v = metrics[k]
        lines.append(f"{k:<32}{v:>16.6g}" if isinstance(v, (int, float)) else f"{k:<32}{str(v):>16}")
    return "\n".join(lines)

"""Files: atomic writes (text, JSON, JSON lines), reads that survive a truncated file, the temporaries a killed
writer leaves, inter-process locks, and the stub Hydra leaves of a run that never started."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

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


def remove_stub(run_dir: Path, up_to: Path | None = None) -> bool:
    """Removes a run folder that holds nothing but what Hydra created before the task started (`.hydra/`
    and the log), then every parent left empty, up to and including `up_to` (by default the run folder's
    parent only). A folder holding anything else, such as an earlier run's results, is kept. Returns whether
    the run folder was removed."""
    import shutil

    run_dir = Path(run_dir)
    if not run_dir.is_dir() or {p.name for p in run_dir.iterdir()} - STUB:
        return False
    shutil.rmtree(run_dir)
    last = Path(up_to).resolve() if up_to is not None else run_dir.parent.resolve()
    folder = run_dir.parent.resolve()
    while folder == last or last in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty: other runs
            break
        folder = folder.parent
    return True


def lock(path: Path, num_processes: int | None = None):
    """An inter-process file lock that says so when it has to wait for another process. The processes
    of one distributed launch (torchrun, accelerate) cooperate on the same folders, so among them only
    rank 0 takes it."""
    from filelock import FileLock, Timeout

    world = num_processes if num_processes is not None else int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def held():
        lock = FileLock(path)
        try:
            lock.acquire(blocking=False)
        except Timeout:
            log.info("waiting for %s (another process holds its lock %s)", path.parent, path)
            lock.acquire()
        try:
            yield lock
        finally:
            lock.release()

    return held()

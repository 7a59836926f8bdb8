"""Provenance: the commit, the library versions and the machine a result came from (recorded in
`run_key.json` beside the key; never part of it)."""

from __future__ import annotations

from ..base.config_files import ROOT


def provenance(device: str | None = None) -> dict:
    """The code and library versions a result came from."""
    import platform
    import subprocess

    import diffusers
    import torch
    import transformers

    def git(*args) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_sha": sha, "git_dirty": None if status is None else bool(status),
        "torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
        "python": platform.python_version(), "platform": platform.platform(), "device": device,
        "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }

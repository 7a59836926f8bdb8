"""Secrets (hub tokens, W&B keys) in configs, command lines and files: matched by exact key name, so that
e.g. `text_tokens` or `tokenizer_3` are never mistaken for one. They never enter a run key, a folder name,
a config file, a log or W&B: configs are scrubbed or stripped of them, and text files written during a run
are scrubbed of their values afterwards."""

from __future__ import annotations

from pathlib import Path

from .files import write_text

# Config keys (leaf names, case-insensitive) whose values are credentials. Matched exactly, so that
# e.g. `text_tokens` or `tokenizer_3` are never mistaken for secrets.
SECRET_KEYS = frozenset({
    "token", "hf_token", "use_auth_token", "access_token", "auth_token", "api_key", "apikey", "wandb_key",
    "wandb_api_key", "password", "secret", "secret_key", "private_key",
})
REDACTED = "<redacted>"


def is_secret(key) -> bool:
    return str(key).lower().lstrip("+~") in SECRET_KEYS


def scrub(obj):
    """A copy of a config (dicts and lists) with every secret value replaced by `<redacted>`."""
    if isinstance(obj, dict):
        return {k: (REDACTED if is_secret(k) else scrub(v)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [scrub(v) for v in obj]
    return obj


def without_secrets(obj):
    """A copy of a config with the secret keys removed (credentials never change an output)."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if is_secret(k):
                continue
            clean = without_secrets(v)
            if isinstance(v, dict) and v and not clean:
                continue  # held only secrets (e.g. load_kwargs created by `+model.load_kwargs.token=...`)
            out[k] = clean
        return out
    if isinstance(obj, (list, tuple)):
        return [without_secrets(v) for v in obj]
    return obj


def scrub_override(item: str) -> str:
    """`+model.load_kwargs.token=hf_x` -> `+model.load_kwargs.token=<redacted>`; other overrides unchanged."""
    key, sep, _ = item.partition("=")
    return f"{key}={REDACTED}" if sep and is_secret(key.rsplit(".", 1)[-1]) else item


def override_secrets(overrides: list[str]) -> list[str]:
    """Secret values given on the command line (`+model.load_kwargs.token=...`)."""
    found = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and value and is_secret(key.rsplit(".", 1)[-1]):
            found.append(value)
    return found


def secret_values(obj) -> list[str]:
    """Every secret value in a config (to scrub files that hold them in other forms)."""
    found: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if is_secret(k) and isinstance(v, (str, int)) and str(v):
                found.append(str(v))
            else:
                found.extend(secret_values(v))
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            found.extend(secret_values(v))
    return found


def scrub_file(path: Path, secrets: list[str]) -> None:
    """Replaces every occurrence of the secret values in a text file (atomically)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return
    clean = text
    for value in sorted(set(secrets), key=len, reverse=True):
        clean = clean.replace(value, REDACTED)
    if clean != text:
        write_text(path, clean)


def scrub_tree(root: Path, secrets: list[str]) -> None:
    """Scrubs every small text file under root (configs, logs, W&B files)."""
    if not secrets or not root.exists():
        return
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.suffix not in (".png", ".npz", ".safetensors", ".wandb") \
                and path.stat().st_size < 50_000_000:
            scrub_file(path, secrets)

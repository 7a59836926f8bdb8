"""Every method's output, bit for bit, at every setting its conf file sweeps, on a tiny random pipeline of
each family: SHA-256 fingerprints of the output latents, recorded in `fingerprints.json`.

A refactor must leave them all unchanged. A change meant to alter a method's output updates them
deliberately (`python tests/methods/test_fingerprints.py --write`) in the same commit, which then says
why. Floating-point results depend on the torch build and on the CPU itself (the same torch build and
instruction set give other bits on another vendor's or generation's cores), so the file keeps one record per
machine (torch build, instruction set, CPU vendor, family and model) and compares against the current
machine's record; a machine without one skips. `--write` replaces the current machine's record; `--add`
records only the settings it lacks (a new method), leaving every recorded one as it is.
"""

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cat  # noqa: E402
from experiments.lifecycle import resolvers  # noqa: E402,F401  (registers the config resolvers)

RECORD = Path(__file__).with_name("fingerprints.json")
# Conf files renamed since the recording, by recorded name: random.yaml was cat_random.yaml under a second
# name (one name per method now), so its recorded outputs must be cat_random's.
RENAMED = {"random": "cat_random"}
FAMILIES = ("sd3", "sd35_dual_attention", "pixart_sigma", "flux")
STEPS = 10  # tiny_random's step count: the conf files' step-dependent fields resolve against it
PROMPTS = ["a red circle on the left", "a blue square"]


def machine() -> dict:
    """What the recorded bits depend on: the torch build, the instruction set torch uses, and the CPU."""
    cpu = {}
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("vendor_id", "cpu family", "model") and key.strip() not in cpu:
                cpu[key.strip()] = value.strip()
    else:
        import platform

        cpu["processor"] = platform.processor()
    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability(), **cpu}


def this_machine_record(record: dict) -> dict | None:
    """The fingerprints recorded on this machine (None: none were)."""
    return next((r["fingerprints"] for r in record["records"] if r["machine"] == machine()), None)


def settings() -> dict[str, object]:
    """`<method>@<level>` -> the method's config, for every conf/method file (except the full model) at its
    default and at each of its levels, resolved against the tiny model's step count."""
    out = {}
    ratios = [round(1.0 - 0.02 * i, 2) for i in range(STEPS)]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        for path in sorted((ROOT / "conf" / "method").glob("*.yaml")):
            base = ["model=tiny_random", f"method={path.stem}"]
            if path.stem == "magcache":
                base.append(f"method.config.mag_ratios={ratios}")
            if path.stem == "teacache":  # the rescaling polynomial, as a calibration would give it: the change itself
                base.append("method.config.coefficients=[0.0,0.0,0.0,1.0,0.0]")
            cfg = compose("config", overrides=base)
            if cfg.method.get("config") is None:
                continue
            for level in [None, *range(len(cfg.method.get("levels") or []))]:
                level_cfg = compose("config", overrides=base + [f"level={'null' if level is None else level}"])
                out[f"{path.stem}@{'default' if level is None else level}"] = instantiate(level_cfg.method.config)
    return out


def fingerprint(pipe, kwargs: dict, config) -> str:
    try:
        with cat.apply(pipe, config) as handle:
            call = {"num_inference_steps": STEPS, **kwargs}
            latents = pipe(PROMPTS, generator=[torch.Generator().manual_seed(i) for i in range(len(PROMPTS))],
                           output_type="latent", **{**call, **handle.call_overrides(STEPS)}).images
    except (NotImplementedError, TypeError, ValueError) as err:
        return f"refused: {type(err).__name__}"
    return hashlib.sha256(latents.contiguous().numpy().tobytes()).hexdigest()


def fingerprints() -> dict[str, dict[str, str]]:
    from tests.adapters.families import FAMILIES as BUILDERS

    configs = settings()
    out = {}
    for family in FAMILIES:
        spec = BUILDERS[family]
        pipe = spec.pipeline()
        kwargs = {"height": 32, "width": 32, "guidance_scale": 5.0 if spec.has_cfg else 1.0, **spec.pipeline_kwargs}
        if family.startswith("sd3"):
            kwargs["max_sequence_length"] = 8
        out[family] = {name: fingerprint(pipe, kwargs, config) for name, config in configs.items()}
    return out


@pytest.mark.slow
def test_every_method_at_every_swept_setting_gives_the_recorded_output():
    mine = this_machine_record(json.loads(RECORD.read_text()))
    if mine is None:
        pytest.skip(f"no fingerprints recorded on this machine ({machine()}); record them at a commit known to be "
                    "right with `python tests/methods/test_fingerprints.py --write`")
    torch.set_num_threads(1)
    now = fingerprints()
    changed = [f"{family} {name}" for family in mine for name in mine[family]
               if now.get(family, {}).get(current_name(name)) != mine[family][name]]
    assert not changed, f"outputs changed: {changed}"
    recorded = {family: {current_name(name) for name in names} for family, names in mine.items()}
    now_names = {family: set(names) for family, names in now.items()}
    assert now_names == recorded, ("settings added or lost since the recording (a new method is recorded with "
                                   "`python tests/methods/test_fingerprints.py --add`)")


def current_name(recorded: str) -> str:
    """A recorded `<conf file>@<level>` under its conf file's current name."""
    method, _, level = recorded.partition("@")
    return f"{RENAMED.get(method, method)}@{level}"


if __name__ == "__main__":
    if sys.argv[1:] not in (["--write"], ["--add"]):
        raise SystemExit("usage: python tests/methods/test_fingerprints.py --write | --add")
    torch.set_num_threads(1)
    record = json.loads(RECORD.read_text()) if RECORD.exists() else {"records": []}
    now = fingerprints()
    old = this_machine_record(record) or {}
    if sys.argv[1] == "--add":
        now = {family: {**names, **old.get(family, {})} for family, names in now.items()}
    others = [r for r in record["records"] if r["machine"] != machine()]
    record = {"records": [*others, {"machine": machine(), "fingerprints": now}]}
    RECORD.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"wrote {RECORD} for {machine()}")

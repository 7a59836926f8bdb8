"""Adding a model family is one file in cat/families/, with no other edit of the library.

In a copy of the library, a toy family (SD3's facts for a transformer class of its own) is added as
`cat/families/toy.py`. It is discovered (`cat.families.family_names()`, `cat.supported_models()`), its
architecture reaches the methods' authors' settings (`ARCHITECTURES`, `authors("toy", n)`), and CAT runs on
a pipeline whose transformer is of the toy class: bit-identical at its do-nothing setting, pruning at its
accelerating one, and removed exactly.
"""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

TOY = '''
"""A toy family: SD3's facts, for a transformer class of its own (`ToyTransformer2DModel`)."""

import dataclasses

from .base import register
from .sd3 import SD3

TOY = register(dataclasses.replace(SD3, name="toy", transformer_classes=("ToyTransformer2DModel",),
                                   architecture="mmdit"))
'''

CHECK = '''
import torch
from diffusers import SD3Transformer2DModel

import cat
from cat import testing
from cat.families import ARCHITECTURES, family_for, family_names

torch.set_num_threads(1)  # tiny models run fastest single-threaded on a shared CPU

assert cat.__file__.startswith(PROJECT), cat.__file__
assert "toy" in family_names() and ARCHITECTURES["toy"] == "mmdit"
assert "ToyTransformer2DModel" in cat.supported_models()
for name, config in cat.METHODS.items():  # the authors' settings follow the family's architecture
    try:
        sd3 = config.authors("sd3", 28)
    except NotImplementedError:
        continue
    assert config.authors("toy", 28) == sd3, name


class ToyTransformer2DModel(SD3Transformer2DModel):
    pass


pipe = testing.tiny_sd3_pipeline()
toy = ToyTransformer2DModel.from_config(pipe.transformer.config)
toy.load_state_dict(pipe.transformer.state_dict())
pipe.transformer = toy.eval()
assert family_for(pipe.transformer).name == "toy"


def call():
    return pipe(["a red circle"], num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="pt",
                height=32, width=32).images


full = call()
nothing, fast = cat.CATConfig.examples(4)
with cat.apply(pipe, nothing):
    assert torch.equal(call(), full)
with cat.apply(pipe, fast) as handle:
    pruned = call()
    assert any(step.phase == "pruned" for step in handle.stats.steps)
assert not torch.equal(pruned, full)
assert torch.equal(call(), full)
print("toy family ok")
'''


def test_a_toy_family_is_discovered_and_runs(tmp_path):
    project = tmp_path / "project"
    shutil.copytree(ROOT / "cat", project / "cat", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (project / "cat" / "families" / "toy.py").write_text(textwrap.dedent(TOY).lstrip())
    paths = [str(project), *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "HF_HUB_OFFLINE": "1"}
    code = f"PROJECT = {str(project)!r}\n" + textwrap.dedent(CHECK)
    proc = subprocess.run([sys.executable, "-c", code], cwd=project, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and "toy family ok" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]

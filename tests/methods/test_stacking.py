"""Methods do not stack: applying any method to a model that already carries one (the same or another) is
refused before anything changes, naming both methods and how to remove the first; after `remove()` the
second applies and runs as it does alone. Every ordered pair of `cat.METHODS`, on a tiny SD3 pipeline."""

import pytest
import torch

import cat
from cat import testing

from .test_interface import ACCELERATING, STEPS

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sd3():
    pipe = testing.tiny_sd3_pipeline()
    alone: dict = {}

    def generate(handle):
        return pipe(["a red circle"], guidance_scale=5.0, height=32, width=32, output_type="latent",
                    max_sequence_length=8, generator=[torch.Generator().manual_seed(0)],
                    **{"num_inference_steps": STEPS, **handle.call_overrides()}).images

    def reference(name):  # the method's output when it is the only one applied
        if name not in alone:
            with cat.apply(pipe, ACCELERATING[name]) as handle:
                alone[name] = generate(handle)
        return alone[name]

    return pipe, generate, reference


def _state(pipe):
    return {n: (dict(vars(m)), getattr(m, "processor", None)) for n, m in pipe.transformer.named_modules()}


@pytest.mark.parametrize("second", sorted(cat.METHODS))
@pytest.mark.parametrize("first", sorted(cat.METHODS))
def test_a_second_method_is_refused_until_the_first_is_removed(sd3, first, second):
    pipe, generate, reference = sd3
    alone = reference(first), reference(second)
    before = _state(pipe)
    handle = cat.apply(pipe, ACCELERATING[first])
    applied = _state(pipe)
    for target in (pipe, pipe.transformer):
        with pytest.raises(RuntimeError) as err:
            cat.apply(target, ACCELERATING[second])
        message = str(err.value)
        assert f"{first!r} ({type(ACCELERATING[first]).__name__}) is already applied" in message
        assert f"{second!r} ({type(ACCELERATING[second]).__name__}) is refused" in message
        assert "remove()" in message
    assert _state(pipe) == applied  # the refused apply changed nothing
    assert torch.equal(generate(handle), alone[0])  # and the first method still runs as alone
    handle.remove()
    assert _state(pipe) == before
    with cat.apply(pipe, ACCELERATING[second]) as handle:
        assert torch.equal(generate(handle), alone[1])
    assert _state(pipe) == before


def test_a_failed_install_leaves_no_record(sd3):
    """An apply that fails inside a method's own install (fp8 caches on the CPU) undoes its record too, so
    the next method applies."""
    pipe = sd3[0]
    before = _state(pipe)
    with pytest.raises(ValueError, match="cache_dtype"):
        cat.apply(pipe, cat.CATConfig(cache_dtype="float8_e4m3fn"))
    assert _state(pipe) == before
    cat.apply(pipe, ACCELERATING["fora"]).remove()

"""`warmup_steps` on every method: the leading steps computed in full, a field of that name on every config
but the fewer-steps one (`has_warmup`), set with `with_warmup`, validated in the project's message style.
On tiny SD3 and PixArt pipelines, a warm-up of W leaves steps 0 .. W-1 full and step W accelerated for every
method, read from the steps its handle reports."""

import dataclasses

import pytest

import cat
from cat.methods.base import with_warmup

from .tiny import CALL, STEPS, tiny_family

TOKENS = 16 * 16  # image tokens of a 32x32 image on both tiny models
WITH_WARMUP = sorted(name for name, cls in cat.METHODS.items() if cls.has_warmup)
# Today's defaults: each leaves the method's output as it was before the field existed (FORA, ToCa and
# FBCache compute step 0 only; MagCache takes its warm-up from retention_ratio).
DEFAULTS = {"cat": 8, "cat_budget": 8, "cat_fora": 8, "fbcache": 1, "fora": 1, "magcache": None, "ras": 4, "taylorseer": 3,
            "toca": 1}
# The field's caches (issue 36), their authors' warm-ups: the forecasting caches' FLUX warm-up, 3 steps
DEFAULTS |= {"clusca": 3, "hicache": 3, "dbcache": 8, "fastercache": 10, "pab": 1, "teacache": 1}
DEFAULTS["forecast_search"] = 1  # its schedule search places the full steps; the warm-up is a lower bound


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=list(CALL))
def family(request):
    return tiny_family(request.param)


def test_every_method_but_fewer_steps_has_a_warmup_field_with_todays_default():
    assert set(WITH_WARMUP) == set(DEFAULTS) and set(cat.METHODS) - set(WITH_WARMUP) == {"steps"}
    for name in WITH_WARMUP:
        cls = cat.METHODS[name]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        assert fields["warmup_steps"].default == DEFAULTS[name], name
    assert "warmup_steps" not in {f.name for f in dataclasses.fields(cat.StepsConfig)}
    assert not cat.StepsConfig.has_warmup


def test_with_warmup_copies_or_refuses():
    fora = cat.FORAConfig(interval=4)
    assert with_warmup(fora, 3) == cat.FORAConfig(interval=4, warmup_steps=3) and fora.warmup_steps == 1
    assert with_warmup(cat.MagCacheConfig(), None) == cat.MagCacheConfig()
    with pytest.raises(ValueError, match="StepsConfig has no warm-up"):
        with_warmup(cat.StepsConfig(), 2)
    with pytest.raises(ValueError, match=r"FORAConfig\.warmup_steps=0 is invalid: warmup_steps must be an integer >= 1"):
        with_warmup(fora, 0)


@pytest.mark.parametrize("name", WITH_WARMUP)
def test_warmup_is_validated_in_the_projects_style(name):
    cls = cat.METHODS[name]
    for bad in (0, 2.0, True, "3"):
        with pytest.raises(ValueError, match=rf"{cls.__name__}\.warmup_steps={bad!r} is invalid: warmup_steps must be"):
            cls(warmup_steps=bad)
    if name != "magcache":
        with pytest.raises(ValueError, match=r"warmup_steps=None is invalid"):
            cls(warmup_steps=None)
    config = cls(warmup_steps=5)
    config.check_steps(6)
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.warmup_steps=5 is invalid: warmup_steps must be smaller "
                                         rf"than the number of steps \(5\)"):
        config.check_steps(5)


def test_magcache_warmup_none_reads_the_retention_ratio_and_an_integer_replaces_it():
    default = cat.MagCacheConfig()
    assert default.retained_steps(28) == 3 and default.retained_steps(20) == 2 and default.key_ignores() == ()
    set_ = cat.MagCacheConfig(warmup_steps=6)
    assert set_.retained_steps(28) == 6 and set_.key_ignores() == ("retention_ratio",)
    set_.check_steps(7)
    cat.MagCacheConfig(warmup_steps=6, retention_ratio=1.0).check_steps(7)  # the ratio is not read


@pytest.mark.parametrize("warmup", [2, 5])
@pytest.mark.parametrize("name", WITH_WARMUP)
def test_a_warmup_of_w_makes_steps_0_to_w_minus_1_full(family, name, warmup):
    pipe, generate = family
    _, fast = cat.METHODS[name].examples(STEPS)
    config = with_warmup(fast, warmup)
    with cat.apply(pipe, config) as handle:
        generate(handle.call_overrides())
        steps = handle.stats.steps
    assert [r.step for r in steps] == list(range(STEPS))
    assert [r.num_recomputed for r in steps[:warmup]] == [TOKENS] * warmup, (name, steps[:warmup])
    assert steps[warmup].phase != "full" and steps[warmup].num_recomputed != TOKENS, (name, steps[warmup])

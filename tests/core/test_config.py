import pytest

from cat import CATConfig, token_schedule


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"keep_ratio": 0.0}, "keep_ratio"),
        ({"keep_ratio": 1.5}, "keep_ratio"),
        ({"keep_ratio": "half"}, "keep_ratio"),
        ({"warmup_steps": 1}, "warmup_steps"),
        ({"num_clusters": 0}, "num_clusters"),
        ({"policy": "magic"}, "policy"),
        ({"staleness_decay": 1.0}, "staleness_decay"),
        ({"cluster_share": -0.1}, "cluster_share"),
        ({"cluster_quotas": ()}, "cluster_quotas"),
        ({"reference_offset": 0}, "reference_offset"),
    ],
)
def test_bad_values_name_the_field_and_the_range(kwargs, field):
    with pytest.raises(ValueError, match=rf"CATConfig\.{field}=.* must be"):
        CATConfig(**kwargs)


def test_policy_error_lists_the_policies():
    with pytest.raises(ValueError, match="cat, no_cluster, no_staleness, noise_only, random"):
        CATConfig(policy="nope")


def test_too_many_clusters_for_the_image():
    with pytest.raises(ValueError, match="num_clusters=20 .* at most the number of image tokens \\(16\\)"):
        CATConfig().check_tokens(16)


def test_defaults_are_the_authors():
    c = CATConfig()
    assert (c.keep_ratio, c.warmup_steps, c.num_clusters, c.cluster_feature_weight) == (0.3, 8, 20, 0.05)
    assert (c.staleness_decay, c.cluster_share, c.quota_unit, c.cluster_quotas) == (0.5, 0.25, 0.05, (3, 2, 1))
    assert c.num_kept(4096) == 1229


def test_config_is_frozen_and_lists_become_tuples():
    c = CATConfig(cluster_quotas=[4, 2])
    assert c.cluster_quotas == (4, 2)
    with pytest.raises(Exception):
        c.keep_ratio = 0.5


def test_token_schedule():
    assert token_schedule(CATConfig(warmup_steps=3, keep_ratio=0.25), 5, 64) == [64, 64, 64, 16, 16]
    assert token_schedule(None, 3, 64) == [64, 64, 64]
    assert token_schedule(CATConfig(keep_ratio=1.0), 10, 64) == [64] * 10

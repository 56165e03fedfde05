"""Traffic splitting: weights hold within statistical tolerance, client keys stick."""

import random

import pytest
from scipy import stats

from service.serving.variants import VariantRouter, key_fraction
from service.settings import Settings, VariantSettings


def router(*weights, shadow_share=None, seed=0):
    variants = [VariantSettings(name=f"v{i}", weight=w) for i, w in enumerate(weights)]
    if shadow_share:
        variants.append(VariantSettings(name="shadow", shadow=True, shadow_share=shadow_share))
    return VariantRouter(variants, rng=random.Random(seed))


@pytest.mark.parametrize("use_keys", [False, True])
def test_a_90_10_split_holds_within_tolerance(use_keys):
    split, n = router(90, 10), 20_000
    chosen = [split.choose(f"client-{i}" if use_keys else None).name for i in range(n)]
    counts = [chosen.count("v0"), chosen.count("v1")]
    # Chi-square goodness of fit against 90/10; p > 0.001 unless the split is really off.
    assert stats.chisquare(counts, [0.9 * n, 0.1 * n]).pvalue > 0.001
    assert 0.88 < counts[0] / n < 0.92


def test_a_client_key_always_meets_the_same_variant():
    split = router(50, 50)
    for key in ("alice", "bob", "carol", "dave"):
        assert len({split.choose(key).name for _ in range(50)}) == 1
    assert len({split.choose(f"k{i}").name for i in range(100)}) == 2


def test_a_client_key_maps_to_the_same_point_on_every_host_and_release():
    # Pinned: a change here would move every sticky client to another variant on upgrade.
    assert key_fraction("alice") == pytest.approx(0.1712650529798836, abs=1e-15)
    assert key_fraction("bob") == pytest.approx(0.5066866783861982, abs=1e-15)
    split = router(50, 50)
    assert (split.choose("alice").name, split.choose("bob").name) == ("v0", "v1")


def test_shadows_mirror_their_share_and_the_control_is_the_largest_weight():
    split = router(10, 90, shadow_share=0.25)
    assert split.control.name == "v1"
    mirrored = sum(bool(split.shadows_for_request()) for _ in range(8000))
    assert stats.binomtest(mirrored, 8000, 0.25).pvalue > 0.001


def test_settings_refuse_duplicate_names_and_shadow_only_fleets():
    with pytest.raises(ValueError, match="unique"):
        Settings(variants=[{"name": "a", "weight": 1}, {"name": "a", "weight": 1}])
    with pytest.raises(ValueError, match="non-shadow variant needs a weight"):
        Settings(variants=[{"name": "a", "shadow": True}])
    assert [v.name for v in Settings().model_variants] == ["main"]

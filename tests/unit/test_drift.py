"""Drift statistics on synthetic profiles (the real-model tests are in tests/integration)."""

import numpy as np
import pytest

from service.modelops.drift import Observation, Profile, compare, population_stability_index
from service.settings import DriftSettings


def observations(rng, n, brightness=0.45, classes=(1, 2, 3, 4), class_p=None):
    picked = rng.choice(classes, size=n, p=class_p)
    return [
        Observation(
            brightness=float(rng.normal(brightness, 0.08)),
            contrast=float(rng.normal(0.2, 0.04)),
            saturation=float(rng.normal(0.3, 0.05)),
            sharpness=float(rng.normal(12, 3)),
            width=int(rng.integers(300, 800)),
            height=int(rng.integers(300, 800)),
            file_size=int(rng.integers(20_000, 90_000)),
            confidence=float(rng.uniform(0.3, 0.9)),
            class_index=int(c),
        )
        for c in picked
    ]


def drifted(reference, current):
    return {r.feature for r in compare(reference, current, DriftSettings()) if r.drifted}


def test_a_second_sample_of_the_same_traffic_does_not_drift():
    rng = np.random.default_rng(1)
    reference = Profile.from_observations(observations(rng, 400))
    assert drifted(reference, Profile.from_observations(observations(rng, 400))) == set()


def test_a_brightness_shift_drifts_on_brightness_only():
    rng = np.random.default_rng(2)
    reference = Profile.from_observations(observations(rng, 400))
    darker = Profile.from_observations(observations(rng, 400, brightness=0.25))
    assert drifted(reference, darker) == {"brightness"}


def test_a_new_class_mix_drifts_on_the_top_class():
    rng = np.random.default_rng(3)
    reference = Profile.from_observations(observations(rng, 400))
    skewed = observations(rng, 400, classes=(1, 2, 9), class_p=(0.1, 0.1, 0.8))
    assert drifted(reference, Profile.from_observations(skewed)) == {"top_class"}


def test_psi_is_zero_for_equal_mixes_and_grows_with_the_shift():
    reference = {"1": 50, "2": 50}
    assert population_stability_index(reference, {"1": 100, "2": 100}) == pytest.approx(0)
    small = population_stability_index(reference, {"1": 60, "2": 40})
    large = population_stability_index(reference, {"1": 90, "2": 10})
    assert 0 < small < 0.1 < large


def test_too_few_samples_give_no_ks_verdict_but_the_profile_round_trips():
    rng = np.random.default_rng(4)
    reference = Profile.from_observations(observations(rng, 10))
    assert Profile.from_json(reference.to_json()) == reference
    results = compare(reference, reference, DriftSettings(min_samples=30))
    assert [r.feature for r in results] == ["top_class"]


def test_a_busy_windows_pixel_statistics_come_from_its_latest_images_that_have_them(tmp_path):
    # On a busy host the statistics are rate-capped: of the latest 400 images only a few
    # have them, so the window reads the latest 400 that do, and still compares 400.
    from dataclasses import replace
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import create_engine
    from support import log_observations

    from service.store.db import migrate
    from service.store.drift_runs import recent_predictions

    engine = create_engine(f"sqlite:///{tmp_path}/p.db")
    migrate(engine)
    without = {"brightness": None, "contrast": None, "saturation": None, "sharpness": None}
    observed = [  # one image in five has statistics, spread over the log
        o if i % 5 == 0 else replace(o, **without)
        for i, o in enumerate(observations(np.random.default_rng(3), 2000))
    ]
    log_observations(engine, observed, start=datetime.now(UTC) - timedelta(minutes=30))

    rows, with_statistics = recent_predictions(engine, "1", 400, window_s=3600)
    assert len(rows) == len(with_statistics) == 400
    assert sum(o.brightness is not None for o in rows) == 80
    assert all(o.brightness is not None for o in with_statistics)
    profile = Profile.from_observations(rows, with_statistics)
    assert profile.samples == len(profile.values["width"]) == 400
    assert len(profile.values["brightness"]) == len(profile.values["sharpness"]) == 400
    assert len(Profile.from_observations(rows).values["brightness"]) == 80  # the window alone
    reference = Profile.from_observations(observations(np.random.default_rng(4), 400))
    assert drifted(reference, profile) == set()

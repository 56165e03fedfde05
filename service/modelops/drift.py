"""Drift detection: does today's traffic still look like the model version's reference?

A profile is a sample of per-image features: the input statistics logged with every prediction
(brightness, contrast, saturation, sharpness, width, height, aspect ratio, file size), the
model's confidence, and the top-class counts. Continuous features are compared with SciPy's
two-sample Kolmogorov-Smirnov test, the top class with the population stability index (PSI)
backed by a chi-square test.
A continuous feature drifts when its KS p-value is below `ks_alpha` and its KS distance is at
least `ks_min_statistic`: with hundreds of samples a harmless shift (the same photos saved at
another JPEG quality) is already "significant", and an alarm should mean the inputs changed.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum

import numpy as np

from ..settings import DriftSettings

CONTINUOUS_FEATURES = (
    "brightness",
    "contrast",
    "saturation",
    "sharpness",
    "width",
    "height",
    "aspect_ratio",
    "file_size",
    "confidence",
)
# Computed for a sample of the images only (drift.statistics_share, statistics_per_second).
PIXEL_STATISTICS = ("brightness", "contrast", "saturation", "sharpness")
CLASS_FEATURE = "top_class"
MAX_PROFILE_VALUES = 5000  # per feature: KS needs a sample, not every value ever seen
PSI_BINS = 10  # the reference's most frequent classes get a bin each, the rest share one
PSI_FLOOR = 1e-4  # an empty bin counts as this share, so the log stays finite


@dataclass(frozen=True)
class Observation:
    """One prediction, as drift detection sees it."""

    brightness: float | None
    contrast: float | None
    saturation: float | None
    sharpness: float | None
    width: int
    height: int
    file_size: int
    confidence: float
    class_index: int

    def features(self) -> dict[str, float | None]:
        values = asdict(self)
        values.pop("class_index")
        values["aspect_ratio"] = self.width / self.height if self.height else None
        return values


@dataclass
class Profile:
    values: dict[str, list[float]]
    classes: dict[str, int]
    samples: int

    @classmethod
    def from_observations(
        cls,
        observations: Iterable[Observation],
        with_statistics: Iterable[Observation] | None = None,
    ) -> Profile:
        """The profile of `observations`; its pixel statistics from `with_statistics` where
        given: on a busy host only a few of the latest images have them, so the drift job reads
        as many of those as it reads images (store/drift_runs.py)."""
        values: dict[str, list[float]] = {name: [] for name in CONTINUOUS_FEATURES}
        classes: Counter[str] = Counter()
        samples = 0
        for observation in observations:
            samples += 1
            classes[str(observation.class_index)] += 1
            for name, value in observation.features().items():
                if with_statistics is not None and name in PIXEL_STATISTICS:
                    continue
                if value is not None and math.isfinite(value):
                    values[name].append(float(value))
        for observation in with_statistics or ():
            for name in PIXEL_STATISTICS:
                value = getattr(observation, name)
                if value is not None and math.isfinite(value):
                    values[name].append(float(value))
        rng = np.random.default_rng(0)
        for name, column in values.items():
            if len(column) > MAX_PROFILE_VALUES:
                values[name] = sorted(rng.choice(column, MAX_PROFILE_VALUES, replace=False))
        return cls(values, dict(classes), samples)

    def to_json(self) -> dict:
        return {"values": self.values, "classes": self.classes, "samples": self.samples}

    @classmethod
    def from_json(cls, data: Mapping) -> Profile:
        return cls(dict(data["values"]), dict(data["classes"]), int(data["samples"]))


class DriftTest(StrEnum):
    KS = "ks"  # two-sample Kolmogorov-Smirnov, for a continuous feature
    PSI = "psi"  # population stability index (with a chi-square p-value), for the top class


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    test: DriftTest
    statistic: float
    p_value: float | None
    threshold: float
    drifted: bool
    reference_samples: int
    current_samples: int


def class_bins(reference: Mapping[str, int], current: Mapping[str, int]) -> np.ndarray:
    """2 x bins counts: the reference's PSI_BINS most frequent classes, then all the rest."""
    kept = [name for name, _ in Counter(reference).most_common(PSI_BINS)]

    def binned(counts: Mapping[str, int]) -> list[int]:
        row = [counts.get(name, 0) for name in kept]
        return [*row, sum(counts.values()) - sum(row)]

    return np.array([binned(reference), binned(current)], dtype=float)


def population_stability_index(reference: Mapping[str, int], current: Mapping[str, int]) -> float:
    """PSI over the reference's PSI_BINS most frequent classes plus one bin for the rest."""
    counts = class_bins(reference, current)
    totals = np.maximum(counts.sum(axis=1, keepdims=True), 1)
    expected, actual = np.maximum(counts / totals, PSI_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def class_mix_p_value(reference: Mapping[str, int], current: Mapping[str, int]) -> float:
    """Chi-square test of homogeneity of the two class mixes (bins empty in both dropped)."""
    counts = class_bins(reference, current)
    counts = counts[:, counts.sum(axis=0) > 0]
    if counts.shape[1] < 2 or (counts.sum(axis=1) == 0).any():
        return 1.0
    from scipy import stats  # here: 5 s of a worker's start otherwise, for a periodic job

    return float(stats.chi2_contingency(counts).pvalue)


def compare(reference: Profile, current: Profile, settings: DriftSettings) -> list[FeatureDrift]:
    """One verdict per feature that both profiles have values for."""
    from scipy import stats  # here: 5 s of a worker's start otherwise, for a periodic job

    results = []
    for name in CONTINUOUS_FEATURES:
        expected, actual = reference.values.get(name, []), current.values.get(name, [])
        if len(expected) < settings.min_samples or len(actual) < settings.min_samples:
            continue
        with warnings.catch_warnings():  # ties: SciPy falls back from the exact method
            warnings.simplefilter("ignore", RuntimeWarning)
            test = stats.ks_2samp(expected, actual)
        results.append(
            FeatureDrift(
                feature=name,
                test=DriftTest.KS,
                statistic=float(test.statistic),
                p_value=float(test.pvalue),
                threshold=settings.ks_min_statistic,
                drifted=bool(
                    test.pvalue < settings.ks_alpha and test.statistic >= settings.ks_min_statistic
                ),
                reference_samples=len(expected),
                current_samples=len(actual),
            )
        )
    # PSI says how far the mix moved; chi-square whether a window this small can tell (PSI
    # alone swings past 0.25 between two samples of 80 from the same traffic).
    psi = population_stability_index(reference.classes, current.classes)
    p_value = class_mix_p_value(reference.classes, current.classes)
    results.append(
        FeatureDrift(
            feature=CLASS_FEATURE,
            test=DriftTest.PSI,
            statistic=psi,
            p_value=p_value,
            threshold=settings.psi_threshold,
            drifted=psi > settings.psi_threshold and p_value < settings.ks_alpha,
            reference_samples=reference.samples,
            current_samples=current.samples,
        )
    )
    return results

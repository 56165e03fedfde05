"""Drift detection: does today's traffic still look like the model version's reference?

A profile is a sample of per-image features: the input statistics logged with every prediction
(brightness, contrast, saturation, sharpness, width, height, aspect ratio, file size), the
model's confidence, and the top-class counts. Continuous features are compared with SciPy's
two-sample Kolmogorov-Smirnov test, the top class with the population stability index (PSI).
A continuous feature drifts when its KS p-value is below `ks_alpha` and its KS distance is at
least `ks_min_statistic`: with hundreds of samples a harmless shift (the same photos saved at
another JPEG quality) is already "significant", and an alarm should mean the inputs changed.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from .settings import DriftSettings

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
    def from_observations(cls, observations: Iterable[Observation]) -> Profile:
        values: dict[str, list[float]] = {name: [] for name in CONTINUOUS_FEATURES}
        classes: Counter[str] = Counter()
        samples = 0
        for observation in observations:
            samples += 1
            classes[str(observation.class_index)] += 1
            for name, value in observation.features().items():
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


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    test: str  # ks | psi
    statistic: float
    p_value: float | None
    threshold: float
    drifted: bool
    reference_samples: int
    current_samples: int


def population_stability_index(reference: Mapping[str, int], current: Mapping[str, int]) -> float:
    """PSI over the reference's PSI_BINS most frequent classes plus one bin for the rest."""
    kept = [name for name, _ in Counter(reference).most_common(PSI_BINS)]

    def shares(counts: Mapping[str, int]) -> np.ndarray:
        total = sum(counts.values()) or 1
        binned = [counts.get(name, 0) for name in kept]
        binned.append(total - sum(binned))
        return np.maximum(np.array(binned, dtype=float) / total, PSI_FLOOR)

    expected, actual = shares(reference), shares(current)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def compare(reference: Profile, current: Profile, settings: DriftSettings) -> list[FeatureDrift]:
    """One verdict per feature that both profiles have values for."""
    results = []
    for name in CONTINUOUS_FEATURES:
        expected, actual = reference.values.get(name, []), current.values.get(name, [])
        if len(expected) < settings.min_samples or len(actual) < settings.min_samples:
            continue
        test = stats.ks_2samp(expected, actual)
        results.append(
            FeatureDrift(
                name,
                "ks",
                float(test.statistic),
                float(test.pvalue),
                settings.ks_min_statistic,
                bool(
                    test.pvalue < settings.ks_alpha and test.statistic >= settings.ks_min_statistic
                ),
                len(expected),
                len(actual),
            )
        )
    psi = population_stability_index(reference.classes, current.classes)
    results.append(
        FeatureDrift(
            CLASS_FEATURE,
            "psi",
            psi,
            None,
            settings.psi_threshold,
            psi > settings.psi_threshold,
            reference.samples,
            current.samples,
        )
    )
    return results

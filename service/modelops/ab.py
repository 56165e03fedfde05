"""A/B and shadow analysis of the prediction log: what each variant did, and whether the
difference in accuracy (from feedback) is real or noise, in plain words.

Two serving variants answer different requests, so their accuracies are compared as two
independent proportions (a two-proportion z-test). A shadow answers the control's own images,
so each labelled image is a pair: only the images on which exactly one of them is right carry
information, and McNemar's exact test on those is far more sensitive than the unpaired test."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import numpy as np
from scipy import stats
from sqlalchemy import Engine

from ..store.labels import predictions_with_labels
from ..store.schema import Role

ALPHA = 0.05
POWER = 0.8
MIN_LABELS = 30  # fewer labelled answers per variant: no verdict


@dataclass
class VariantSummary:
    variant: str
    role: str
    model_version: str
    requests: int = 0
    predictions: int = 0
    labelled: int = 0
    correct: int = 0
    confidences: list[float] = field(default_factory=list, repr=False)
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    agreement: float | None = None  # with the control, on the same images
    compared: int = 0  # images both answered
    answers: dict[tuple[str, int], int] = field(default_factory=dict, repr=False)
    truths: dict[tuple[str, int], int] = field(default_factory=dict, repr=False)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def mean_confidence(self) -> float | None:
        return float(np.mean(self.confidences)) if self.confidences else None

    def latency(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else None

    def as_dict(self) -> dict:
        def rounded(value, digits=4):
            return None if value is None else round(value, digits)

        return {
            "variant": self.variant,
            "role": self.role,
            "model_version": self.model_version,
            "requests": self.requests,
            "predictions": self.predictions,
            "labelled": self.labelled,
            "accuracy": rounded(self.accuracy),
            "mean_confidence": rounded(self.mean_confidence),
            "latency_ms_p50": rounded(self.latency(50), 1),
            "latency_ms_p95": rounded(self.latency(95), 1),
            "agreement_with_control": rounded(self.agreement),
            "images_compared": self.compared,
        }


class ComparisonTest(StrEnum):
    TWO_PROPORTION_Z = "two_proportion_z"  # two serving variants, different requests
    MCNEMAR_EXACT = "mcnemar_exact"  # a shadow and the control, the same images


class Verdict(StrEnum):
    PROMOTE = "promote"
    KEEP = "keep"
    NO_DIFFERENCE = "no_difference"
    NOT_ENOUGH_DATA = "not_enough_data"


@dataclass(frozen=True)
class Comparison:
    control: str
    candidate: str
    control_accuracy: float | None
    candidate_accuracy: float | None
    verdict: Verdict
    recommendation: str
    test: ComparisonTest | None = None  # None without a verdict
    statistic: float | None = None  # z, or for McNemar the candidate's share of discordant pairs
    p_value: float | None = None
    labelled: int | None = None  # for a paired test: images both answered, with feedback
    discordant: tuple[int, int] | None = None  # (only the control right, only the candidate)

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def two_proportion_z_test(hits_a: int, n_a: int, hits_b: int, n_b: int) -> tuple[float, float]:
    """z and the two-sided p-value for H0: both variants have the same accuracy."""
    pooled = (hits_a + hits_b) / (n_a + n_b)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if spread == 0:
        return 0.0, 1.0
    z = (hits_b / n_b - hits_a / n_a) / spread
    return z, float(2 * stats.norm.sf(abs(z)))


def mcnemar_exact(only_control: int, only_candidate: int) -> float:
    """Two-sided p-value of McNemar's exact test: under H0 a discordant pair is a coin toss."""
    discordant = only_control + only_candidate
    if discordant == 0:
        return 1.0
    return float(stats.binomtest(only_candidate, discordant, 0.5).pvalue)


def paired_labels_needed(only_control: int, only_candidate: int, pairs: int) -> int | None:
    """Labelled images both answer to detect this paired difference (Connor, 1987)."""
    discordant, difference = (
        (only_control + only_candidate) / pairs,
        (only_candidate - only_control) / pairs,
    )
    if difference == 0:
        return None
    z_alpha, z_power = stats.norm.isf(ALPHA / 2), stats.norm.isf(1 - POWER)
    root = z_alpha * math.sqrt(discordant) + z_power * math.sqrt(discordant - difference**2)
    return math.ceil(root**2 / difference**2)


def labels_needed(p_a: float, p_b: float) -> int | None:
    """Labelled answers per variant to detect this difference (two-sided ALPHA, POWER)."""
    if p_a == p_b:
        return None
    z_alpha, z_power = stats.norm.isf(ALPHA / 2), stats.norm.isf(1 - POWER)
    variance = p_a * (1 - p_a) + p_b * (1 - p_b)
    return math.ceil((z_alpha + z_power) ** 2 * variance / (p_a - p_b) ** 2)


def _not_enough(control: str, candidate: str, reason: str, a, b) -> Comparison:
    """No verdict: `reason` says what feedback there is and what is needed."""
    return Comparison(
        control=control,
        candidate=candidate,
        control_accuracy=a,
        candidate_accuracy=b,
        verdict=Verdict.NOT_ENOUGH_DATA,
        recommendation=f"Not enough feedback yet: {reason} for a verdict.",
    )


def _judged(
    control: str, candidate: str, a: float, b: float, p: float, needed: int | None, **test
) -> Comparison:
    """The verdict and its plain-language recommendation, whichever test gave p."""
    figures = f"{b:.1%} vs {a:.1%}, p = {p:.3g}"
    if p < ALPHA and b > a:
        verdict, text = (
            Verdict.PROMOTE,
            f"Promote {candidate}: it is more accurate than {control} ({figures}); "
            "the difference is unlikely to be chance.",
        )
    elif p < ALPHA:
        verdict, text = Verdict.KEEP, f"Keep {control}: {candidate} is less accurate ({figures})."
    else:
        unit = (
            "labelled images both answer"
            if test.get("labelled")
            else "labelled answers per variant"
        )
        more = f" About {needed} {unit} would detect a difference this size." if needed else ""
        verdict, text = (
            Verdict.NO_DIFFERENCE,
            f"No significant difference between {candidate} and {control} ({figures}); "
            f"keep {control} or collect more feedback.{more}",
        )
    return Comparison(
        control=control,
        candidate=candidate,
        control_accuracy=a,
        candidate_accuracy=b,
        p_value=p,
        verdict=verdict,
        recommendation=text,
        **test,
    )


def compare_variants(control: VariantSummary, candidate: VariantSummary) -> Comparison:
    """Two variants that answered different requests: a two-proportion z-test on accuracy."""
    names = (control.variant, candidate.variant)
    if min(control.labelled, candidate.labelled) < MIN_LABELS:
        reason = (
            f"{control.labelled} labelled answers for {control.variant} and "
            f"{candidate.labelled} for {candidate.variant}; at least {MIN_LABELS} each are needed"
        )
        return _not_enough(*names, reason, control.accuracy, candidate.accuracy)
    z, p = two_proportion_z_test(
        control.correct, control.labelled, candidate.correct, candidate.labelled
    )
    a, b = control.accuracy, candidate.accuracy
    return _judged(
        *names, a, b, p, labels_needed(a, b), test=ComparisonTest.TWO_PROPORTION_Z, statistic=z
    )


def compare_paired(control: VariantSummary, candidate: VariantSummary) -> Comparison:
    """A shadow and the control on the same labelled images: McNemar's exact test."""
    names = (control.variant, candidate.variant)
    shared = candidate.answers.keys() & control.answers.keys() & control.truths.keys()
    if len(shared) < MIN_LABELS:
        reason = (
            f"{len(shared)} labelled images answered by both {control.variant} and "
            f"{candidate.variant}; at least {MIN_LABELS} are needed"
        )
        return _not_enough(*names, reason, control.accuracy, candidate.accuracy)
    control_right = {key for key in shared if control.answers[key] == control.truths[key]}
    candidate_right = {key for key in shared if candidate.answers[key] == control.truths[key]}
    only_control, only_candidate = (
        len(control_right - candidate_right),
        len(candidate_right - control_right),
    )
    discordant = only_control + only_candidate
    return _judged(
        *names,
        len(control_right) / len(shared),
        len(candidate_right) / len(shared),
        mcnemar_exact(only_control, only_candidate),
        paired_labels_needed(only_control, only_candidate, len(shared)),
        test=ComparisonTest.MCNEMAR_EXACT,
        statistic=only_candidate / discordant if discordant else None,
        labelled=len(shared),
        discordant=(only_control, only_candidate),
    )


def summarise(
    engine: Engine, since_hours: float | None = None, now: datetime | None = None
) -> list[VariantSummary]:
    """Per variant and role, from the prediction log joined with feedback."""
    since = (now or datetime.now(UTC)) - timedelta(hours=since_hours) if since_hours else None
    summaries: dict[tuple[str, str], VariantSummary] = {}
    requests: dict[tuple[str, str], set[str]] = defaultdict(set)
    for row in predictions_with_labels(engine, since):
        key = (row.variant, row.role)
        summary = summaries.setdefault(
            key, VariantSummary(row.variant, row.role, row.model_version)
        )
        summary.predictions += 1
        summary.confidences.append(row.confidence)
        summary.latencies_ms.append(row.latency_ms)
        requests[key].add(row.request_id)
        image = (row.request_id, row.item_index)
        summary.answers[image] = row.class_index
        if row.true_class_index is not None:
            summary.truths[image] = row.true_class_index
            summary.labelled += 1
            summary.correct += row.class_index == row.true_class_index
    for key, summary in summaries.items():
        summary.requests = len(requests[key])
    return sorted(summaries.values(), key=lambda s: (s.role != Role.SERVE, -s.requests))


def ab_report(engine: Engine, control: str | None = None, since_hours: float | None = None):
    """The summaries (control first) and one comparison per other variant."""
    summaries = summarise(engine, since_hours)
    if not summaries:
        return [], []
    if control:
        matches = [s for s in summaries if s.variant == control and s.role == Role.SERVE]
        if not matches:
            raise ValueError(f"no served predictions from a variant named {control!r}")
        summaries.remove(matches[0])
        summaries.insert(0, matches[0])
    head, others = summaries[0], summaries[1:]
    for other in others:  # shadows answered the control's own images: compare them one by one
        shared = other.answers.keys() & head.answers.keys()
        other.compared = len(shared)
        if shared:
            other.agreement = sum(other.answers[k] == head.answers[k] for k in shared) / len(shared)
    return summaries, [
        (compare_paired if other.role == Role.SHADOW else compare_variants)(head, other)
        for other in others
    ]

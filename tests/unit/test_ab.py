"""The A/B report on a seeded log: known accuracies give the expected verdicts."""

import json
import random
from argparse import Namespace

import pytest
from sqlalchemy import create_engine

from service.cli import ab_report_command
from service.modelops.ab import (
    ab_report,
    compare_variants,
    labels_needed,
    mcnemar_exact,
    paired_labels_needed,
    two_proportion_z_test,
)
from service.settings import Settings
from service.store.db import migrate
from service.store.labels import save_feedback
from service.store.log import PredictionRecord, insert_ignoring_duplicates


def seed(engine, variant, n, accuracy, role="serve", prefix=None, rng=None, answers=None):
    """n labelled predictions of class 1; a share `accuracy` of them right. With `answers`
    (the class per image), those predictions instead, and every image's true class is 1."""
    rng = rng or random.Random(variant)
    prefix = prefix or variant
    records = [
        PredictionRecord(
            request_id=f"{prefix}-{i}",
            model_name="m",
            model_version=variant,
            class_index=answers[i] if answers else 1,
            label="one",
            confidence=rng.uniform(0.5, 1),
            latency_ms=rng.uniform(10, 50),
            image_width=10,
            image_height=10,
            image_bytes=100,
            variant=variant,
            role=role,
            top5="1",
        )
        for i in range(n)
    ]
    insert_ignoring_duplicates(engine, records)
    if role == "serve" and answers:
        for i in range(n):
            save_feedback(engine, f"{prefix}-{i}", 0, 1, "x")
    elif role == "serve":
        right = set(rng.sample(range(n), round(accuracy * n)))
        for i in range(n):
            save_feedback(engine, f"{prefix}-{i}", 0, 1 if i in right else 2, "x")


@pytest.fixture
def engine(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path}/ab.db")
    migrate(engine)
    return engine


def verdicts(engine, control="control"):
    summaries, comparisons = ab_report(engine, control=control)
    return {c.candidate: c.verdict for c in comparisons}, summaries


def test_a_clearly_better_candidate_is_promoted_and_a_worse_one_kept(engine):
    seed(engine, "control", 1000, 0.70)
    seed(engine, "better", 1000, 0.80)
    seed(engine, "worse", 1000, 0.60)
    found, summaries = verdicts(engine)
    assert found == {"better": "promote", "worse": "keep"}
    assert summaries[0].variant == "control" and summaries[0].accuracy == pytest.approx(0.70)


def test_a_small_difference_on_little_data_is_not_significant(engine):
    seed(engine, "control", 200, 0.75)
    seed(engine, "close", 200, 0.77)
    seed(engine, "tiny", 10, 1.0)
    found, _ = verdicts(engine)
    assert found == {"close": "no_difference", "tiny": "not_enough_data"}


def test_agreement_counts_a_shadow_on_the_control_images(engine):
    seed(engine, "control", 100, 0.9)
    seed(engine, "shadow", 100, 0.9, role="shadow", prefix="control")  # same request ids
    _, summaries = verdicts(engine)
    shadow = summaries[1]
    assert (shadow.role, shadow.compared, shadow.agreement) == ("shadow", 100, 1.0)
    assert shadow.labelled == 100  # scored on the control's feedback: same images


def paired_answers(n, right, fixed, broken):
    """The control right on its first `right` images; a shadow that breaks `broken` of those
    and fixes `fixed` of the rest. Class 1 is right, 2 is wrong."""
    control = [1] * right + [2] * (n - right)
    shadow = [2] * broken + [1] * (right - broken) + [1] * fixed + [2] * (n - right - fixed)
    return control, shadow


def test_a_shadow_is_judged_on_the_same_images_which_finds_what_unpaired_misses(engine):
    control, shadow = paired_answers(200, right=140, fixed=20, broken=5)
    seed(engine, "control", 200, None, answers=control)
    seed(engine, "shadow", 200, None, role="shadow", prefix="control", answers=shadow)
    _, (comparison,) = ab_report(engine, control="control")
    assert (comparison.test, comparison.labelled, comparison.discordant) == (
        "mcnemar_exact",
        200,
        (5, 20),
    )
    assert (comparison.control_accuracy, comparison.candidate_accuracy) == (0.70, 0.775)
    assert comparison.verdict == "promote" and comparison.p_value < 0.01
    # the same accuracies as two independent samples would not have been significant
    assert two_proportion_z_test(140, 200, 155, 200)[1] > 0.05


def test_a_shadow_that_breaks_more_than_it_fixes_is_not_promoted(engine):
    control, shadow = paired_answers(200, right=160, fixed=2, broken=15)
    seed(engine, "control", 200, None, answers=control)
    seed(engine, "shadow", 200, None, role="shadow", prefix="control", answers=shadow)
    _, (comparison,) = ab_report(engine, control="control")
    assert comparison.verdict == "keep" and comparison.discordant == (15, 2)


def test_a_shadow_with_few_labelled_shared_images_gets_no_verdict(engine):
    control, shadow = paired_answers(20, right=10, fixed=10, broken=0)
    seed(engine, "control", 20, None, answers=control)
    seed(engine, "shadow", 20, None, role="shadow", prefix="control", answers=shadow)
    _, (comparison,) = ab_report(engine, control="control")
    assert comparison.verdict == "not_enough_data"
    assert "20 labelled images answered by both" in comparison.recommendation


def test_mcnemar_and_its_sample_size_match_textbook_values():
    # 5 vs 20 discordant pairs: P(X <= 5 | Bin(25, 1/2)) doubled
    assert mcnemar_exact(5, 20) == pytest.approx(0.004077, rel=1e-3)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(7, 7) == 1.0
    # Connor (1987): 10% and 5% discordant in each direction needs about 469 pairs
    assert paired_labels_needed(50, 25, 500) == pytest.approx(469, abs=5)
    assert paired_labels_needed(10, 10, 100) is None


def test_z_test_and_sample_size_match_textbook_values():
    z, p = two_proportion_z_test(700, 1000, 800, 1000)
    assert z == pytest.approx(5.16, abs=0.01) and p < 1e-6
    assert labels_needed(0.70, 0.80) == pytest.approx(291, abs=2)


def test_the_cli_prints_the_recommendation_and_writes_json(engine, tmp_path, capsys):
    seed(engine, "control", 1000, 0.70)
    seed(engine, "better", 1000, 0.80)
    settings = Settings(database={"url": str(engine.url)})
    args = Namespace(
        control="control",
        since_hours=None,
        html=str(tmp_path / "ab.html"),
        json=str(tmp_path / "ab.json"),
    )
    assert ab_report_command(args, settings) == 0
    printed = capsys.readouterr().out
    assert "Promote better" in printed and "better vs control: promote" in printed
    report = json.loads((tmp_path / "ab.json").read_text())
    assert report["comparisons"][0]["verdict"] == "promote"
    assert "Promote better" in (tmp_path / "ab.html").read_text()
    args.control = "nobody"
    assert ab_report_command(args, settings) == 2


def test_compare_refuses_a_verdict_below_the_minimum():
    from service.modelops.ab import VariantSummary

    few = VariantSummary("a", "serve", "1", labelled=5, correct=5)
    many = VariantSummary("b", "serve", "2", labelled=500, correct=100)
    assert compare_variants(few, many).verdict == "not_enough_data"

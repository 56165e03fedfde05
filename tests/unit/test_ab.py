"""The A/B report on a seeded log: known accuracies give the expected verdicts."""

import json
import random
from argparse import Namespace

import pytest
from sqlalchemy import create_engine

from service.ab import ab_report, compare_variants, labels_needed, two_proportion_z_test
from service.cli import ab_report_command
from service.settings import Settings
from service.store.feedback import save_feedback
from service.store.log import PredictionRecord, insert_ignoring_duplicates, migrate


def seed(engine, variant, n, accuracy, role="serve", prefix=None, rng=None):
    """n labelled predictions of class 1; a share `accuracy` of them right."""
    rng = rng or random.Random(variant)
    prefix = prefix or variant
    records = [
        PredictionRecord(
            request_id=f"{prefix}-{i}",
            model_name="m",
            model_version=variant,
            class_index=1,
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
    if role == "serve":
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
    from service.ab import VariantSummary

    few = VariantSummary("a", "serve", "1", labelled=5, correct=5)
    many = VariantSummary("b", "serve", "2", labelled=500, correct=100)
    assert compare_variants(few, many).verdict == "not_enough_data"

"""The drift and A/B reports: a table for the terminal, a self-contained HTML page with plots."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from datetime import UTC, datetime

import matplotlib

matplotlib.use("Agg")  # no display on servers; before pyplot is imported
import matplotlib.pyplot as plt

from .ab import Comparison, ComparisonTest, VariantSummary
from .jobs import DriftCheck, DriftStatus


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain, aligned text table (numbers right-aligned)."""

    def cell(value: object) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    body = [[cell(value) for value in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)
    ]
    numeric = [
        all(isinstance(row[i], int | float) or row[i] is None for row in rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, body)])


# -- drift ----------------------------------------------------------------------------------
DRIFT_HEADERS = (
    "feature",
    "test",
    "statistic",
    "p-value",
    "threshold",
    "drifted",
    "ref n",
    "now n",
)


def result_row(result, drifted) -> tuple:
    """One feature's verdict as a table row, `drifted` written as the table shows it."""
    return (
        result.feature,
        result.test,
        result.statistic,
        result.p_value,
        result.threshold,
        drifted,
        result.reference_samples,
        result.current_samples,
    )


def drift_text(checks: Sequence[DriftCheck]) -> str:
    parts = []
    for check in checks:
        title = f"{check.model_name} version {check.model_version}: {check.status}"
        if check.reference_source:
            title += f" (reference: {check.reference_source}; window: {check.current_samples})"
        parts.append(title)
        if check.results:
            rows = [result_row(r, "DRIFT" if r.drifted else "no") for r in check.results]
            parts.append(table(DRIFT_HEADERS, rows))
            drifted = check.drifted
            parts.append(f"drifted: {', '.join(drifted)}" if drifted else "no drift")
        parts.append("")
    return "\n".join(parts)


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _drift_plots(check: DriftCheck) -> str:
    if not (check.reference and check.current):
        return ""
    verdicts = {r.feature: r for r in check.results}
    features = [name for name in check.reference.values if check.current.values.get(name)]
    columns = 3
    rows = -(-len(features) // columns) + 1
    figure, axes = plt.subplots(rows, columns, figsize=(12, 3 * rows))
    axes = axes.flatten()
    for axis, name in zip(axes, features, strict=False):
        axis.hist(
            check.reference.values[name], bins=30, alpha=0.55, density=True, label="reference"
        )
        axis.hist(check.current.values[name], bins=30, alpha=0.55, density=True, label="recent")
        verdict = verdicts.get(name)
        score = f" KS={verdict.statistic:.2f}" if verdict else ""
        axis.set_title(
            f"{name}{score}{' DRIFT' if verdict and verdict.drifted else ''}",
            color="#b42318" if verdict and verdict.drifted else "black",
        )
        axis.legend(fontsize=7)
    classes = sorted(check.reference.classes, key=check.reference.classes.get, reverse=True)[:10]
    axis = axes[len(features)]
    total_ref = sum(check.reference.classes.values()) or 1
    total_now = sum(check.current.classes.values()) or 1
    positions = range(len(classes))
    axis.bar(
        [p - 0.2 for p in positions],
        [check.reference.classes[c] / total_ref for c in classes],
        0.4,
        label="reference",
    )
    axis.bar(
        [p + 0.2 for p in positions],
        [check.current.classes.get(c, 0) / total_now for c in classes],
        0.4,
        label="recent",
    )
    axis.set_xticks(list(positions), classes, rotation=60, fontsize=7)
    axis.set_title("top class share (reference's 10 most frequent)")
    axis.legend(fontsize=7)
    for axis in axes[len(features) + 1 :]:
        axis.axis("off")
    figure.tight_layout()
    alt = f"distributions of version {html.escape(check.model_version)}"
    return f'<img alt="{alt}" src="data:image/png;base64,{_png(figure)}">'


def _html_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], flag: int | None = None
) -> str:
    def cell(value: object) -> str:
        if value is None:
            return "-"
        return f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        f'<tr class="{"alarm" if flag is not None and row[flag] else ""}">'
        + "".join(f"<td>{cell(v)}</td>" for v in row)
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font:14px system-ui,sans-serif;margin:24px;color:#1d2330}}
table{{border-collapse:collapse;margin:8px 0 16px}}
td,th{{border:1px solid #e4e7ec;padding:4px 10px;text-align:right}}th{{background:#f2f4f7}}
td:first-child,th:first-child{{text-align:left}}tr.alarm td{{background:#fee4e2}}
img{{max-width:100%}}
.verdict{{font-size:16px;margin:8px 0}}</style></head><body><h1>{title}</h1>
<p>Generated {when}</p>{body}</body></html>"""


def drift_html(checks: Sequence[DriftCheck]) -> str:
    sections = []
    for check in checks:
        heading = f"{check.model_name} version {check.model_version}"
        sections.append(f"<h2>{html.escape(heading)}</h2>")
        summary = (
            check.status
            if check.status != DriftStatus.CHECKED
            else (f"drifted: {', '.join(check.drifted)}" if check.drifted else "no drift")
        )
        sections.append(
            f'<p class="verdict">{html.escape(summary)}'
            f" &middot; reference: {html.escape(check.reference_source or 'none')}"
            f" &middot; recent window: {check.current_samples} predictions</p>"
        )
        if check.results:
            rows = [result_row(r, r.drifted) for r in check.results]
            sections.append(_html_table(DRIFT_HEADERS, rows, flag=5))
            sections.append(_drift_plots(check))
    return PAGE.format(title="bento-fleet drift report", when=_now(), body="".join(sections))


# -- A/B ------------------------------------------------------------------------------------
AB_HEADERS = (
    "variant",
    "role",
    "version",
    "requests",
    "labelled",
    "accuracy",
    "confidence",
    "p50 ms",
    "p95 ms",
    "agreement",
)


def _ab_rows(summaries: Sequence[VariantSummary]) -> list[tuple]:
    return [
        (
            s.variant,
            s.role,
            s.model_version,
            s.requests,
            s.labelled,
            s.accuracy,
            s.mean_confidence,
            s.latency(50),
            s.latency(95),
            s.agreement,
        )
        for s in summaries
    ]


def ab_text(summaries: Sequence[VariantSummary], comparisons: Sequence[Comparison]) -> str:
    if not summaries:
        return "no predictions in the log yet"
    lines = [table(AB_HEADERS, _ab_rows(summaries)), ""]
    for comparison in comparisons:
        test = _test_figures(comparison)
        lines.append(f"{comparison.candidate} vs {comparison.control}: {comparison.verdict}{test}")
        lines.append(f"  {comparison.recommendation}")
    return "\n".join(lines)


def _test_figures(comparison: Comparison) -> str:
    """Which test gave the verdict and its figures, for a reader who wants to check it."""
    if comparison.test == ComparisonTest.TWO_PROPORTION_Z:
        z, p = comparison.statistic, comparison.p_value
        return f" (two-proportion z-test: z = {z:.2f}, p = {p:.3g})"
    if comparison.test == ComparisonTest.MCNEMAR_EXACT:
        only_control, only_candidate = comparison.discordant
        return (
            f" (McNemar exact test on {comparison.labelled} shared labelled images: "
            f"only {comparison.control} right on {only_control}, only {comparison.candidate} "
            f"right on {only_candidate}, p = {comparison.p_value:.3g})"
        )
    return ""


def ab_html(summaries: Sequence[VariantSummary], comparisons: Sequence[Comparison]) -> str:
    body = _html_table(AB_HEADERS, _ab_rows(summaries)) + "".join(
        f'<p class="verdict"><b>{html.escape(c.candidate)} vs {html.escape(c.control)}: '
        f"{html.escape(c.verdict)}</b>{html.escape(_test_figures(c))} &mdash; "
        f"{html.escape(c.recommendation)}</p>"
        for c in comparisons
    )
    return PAGE.format(title="bento-fleet A/B report", when=_now(), body=body)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")

"""The README's and docs/' links between our own pages lead somewhere: the file exists, and a
#fragment names one of its headings as GitHub turns headings into anchors (lower case, spaces
to hyphens, punctuation dropped). Headings here carry dates and figures, and a heading edited
without its links broke two of them once."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\((?!https?:|mailto:)([^)\s#]*)(?:#([^)\s]+))?\)")
HEADING = re.compile(r"^#{1,6} +(.+?) *#*$", re.MULTILINE)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading (inline code marks dropped, as GitHub renders them)."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.cache  # a page is linked to many times
def anchors(page: Path) -> set[str]:
    return {anchor(h) for h in HEADING.findall(FENCE.sub("", page.read_text()))}


def links(page: Path) -> list[tuple[str, str | None]]:
    return LINK.findall(FENCE.sub("", page.read_text()))


def test_anchor_follows_githubs_rules():
    assert (
        anchor("Python's garbage collector, and `gc.freeze`: 2026-12-05, EfficientNet-Lite0")
        == "pythons-garbage-collector-and-gcfreeze-2026-12-05-efficientnet-lite0"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_links_lead_to_a_page_and_a_heading(page: Path):
    broken = []
    for target, fragment in links(page):
        linked = (page.parent / target).resolve() if target else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{target}#{fragment}: no such heading")
    assert not broken, f"{page.relative_to(REPO)}: {broken}"

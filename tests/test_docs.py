"""The user-facing docs stay navigable: every relative link points to a file of the repository,
and README stays a page for users."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted(
    [REPO / "README.md", REPO / "CHANGELOG.md", REPO / "results" / "README.md", *(REPO / "docs").rglob("*.md")]
)


def relative_links(page: Path) -> list[str]:
    """Markdown link targets of ``page`` outside code blocks, without URLs and in-page anchors."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


@pytest.mark.parametrize("page", [p for p in PAGES if p.exists()], ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_to_a_file(page):
    missing = [t for t in relative_links(page) if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(REPO)} links to missing files: {missing}"


def test_readme_is_at_most_200_lines():
    assert len((REPO / "README.md").read_text().splitlines()) <= 200

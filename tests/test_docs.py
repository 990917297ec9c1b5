"""README.md stays a front door and every link between it and docs/ leads somewhere: each relative
link names a file that exists and, with a `#fragment`, a heading of that file (GitHub's anchors)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """The fragments GitHub gives the headings of a markdown page: lower case, punctuation dropped
    (letters, digits, `_`, `-` and spaces kept), spaces as `-`, repeats numbered `-1`, `-2`, ..."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} +(.+?) *$", FENCE.sub("", page.read_text()), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(page: Path) -> list[str]:
    links = LINK.findall(FENCE.sub("", page.read_text()))
    return [link for link in links if not re.match(r"[a-z][a-z0-9+.-]*:", link)]


def test_anchors_follow_githubs_rules() -> None:
    page = ROOT / "docs" / "exactness.md"
    assert "mmdetections-dyhead-models" in anchors(page)
    assert "deploy-on-a-gpu-weights---onnx---tensorrt-engine---serve" in anchors(
        ROOT / "docs" / "export-and-tensorrt.md"
    )


def test_the_readme_is_a_front_door() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    assert "](docs/architecture.md)" in text


def test_the_readme_test_command_is_the_one_ci_runs() -> None:
    command = 'python -m pytest -m "not slow" -q'
    assert command in README.read_text()
    assert command in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for link in relative_links(page):
        path, _, fragment = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif fragment and target.suffix == ".md" and fragment not in anchors(target):
            broken.append(f"{link}: no such heading")
    assert not broken, broken

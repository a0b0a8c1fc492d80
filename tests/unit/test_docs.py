"""The README and the docs/ pages: every relative link resolves, and the README maps every page."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
_CODE = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target); the text may hold backquoted code (stripped first)
_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def _prose(text: str) -> str:
    """The text without fenced code blocks; inline code spans inside link texts kept as `x`."""
    text = _FENCE.sub("", text)
    return _CODE.sub("`x`", text)


def links(path: Path) -> list[str]:
    return _LINK.findall(_prose(path.read_text(encoding="utf-8")))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    return {_slug(h) for h in _HEADING.findall(text)}


def _is_relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I)  # http:, https:, mailto:, …


def test_pages_found() -> None:
    assert (ROOT / "README.md").exists()
    assert len(PAGES) > 5, "docs/*.md pages are missing"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in links(page):
        if not _is_relative(target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / unquote(file_part)).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_readme_links_every_docs_page() -> None:
    readme = ROOT / "README.md"
    linked = {
        (ROOT / unquote(t.partition("#")[0])).resolve()
        for t in links(readme)
        if _is_relative(t) and t.partition("#")[0]
    }
    unlinked = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not unlinked, f"README.md does not link these docs pages: {unlinked}"


def test_link_finder() -> None:
    text = (
        'see [`a.md`](a.md#x), ![p](img/p.png "t") and [w](https://e.org)\n```\n[no](c.md)\n```\n'
    )
    assert _LINK.findall(_prose(text)) == ["a.md#x", "img/p.png", "https://e.org"]
    assert _slug("Input: manifests") == "input-manifests"
    assert _slug("Reputation and windowed state (Redis)") == "reputation-and-windowed-state-redis"

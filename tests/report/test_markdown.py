"""report.md keeps run labels, dataset names and paths inert (issue 26, item 9): they come
from results files anyone may send, and a Markdown viewer must not fetch a remote image or
offer a script link for them. Checked by rendering report.md with a CommonMark renderer
(markdown-it-py, which Rich depends on) and reading the HTML it makes."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from qamoe_core.evaluation.results import make_table
from qamoe_core.report.build import _md, build_report
from tests.report.test_build import sweep_rows

IMAGE = "![x](http://evil/x.png)"
SCRIPT = "[a](javascript:alert(1))"
HOSTILE = [
    IMAGE,
    SCRIPT,
    "<img src=http://evil/y.png>",
    "<http://evil/auto>",
    "*bold* _it_ `code` ~~gone~~ | cell",
]


def render(markdown: str) -> str:
    return MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(markdown)


def links_and_images(page: str) -> tuple[list[str], list[str]]:
    return re.findall(r'href="([^"]*)"', page), re.findall(r'<img [^>]*src="([^"]*)"', page)


def shown(page: str) -> str:
    """The text a reader sees in the rendered page."""
    return html.unescape(re.sub(r"<[^>]+>", "", page))


@pytest.mark.parametrize("text", HOSTILE)
def test_a_string_renders_as_itself(text: str) -> None:
    page = render(f"| run |\n| --- |\n| {_md(text)} |\n\n- <code>{_md(text)}</code>\n")
    assert links_and_images(page) == ([], [])
    for tag in ("<strong>", "<em>", "<code>code", "<s>", "<img", "<a "):
        assert tag not in page
    assert page.count("<td>") == 1  # the '|' did not split the cell
    assert shown(page).count(text) == 2


def test_bare_urls_are_broken_up_for_autolinking_viewers() -> None:
    """GitHub links "www.x" and "https://x" without syntax; an escaped '.' or ':' stops it."""
    text = _md("see www.evil.example and https://evil.example/z")
    assert "www.evil" not in text and "https://" not in text
    assert shown(render(text)) == "see www.evil.example and https://evil.example/z\n"


def test_report_md_with_hostile_labels(tmp_path: Path) -> None:
    rows = sweep_rows(IMAGE, "qamoe", -0.1, diagnostics=True)
    rows += sweep_rows(SCRIPT, "late-fusion", -0.4, diagnostics=False, seed=1)
    for row in rows:
        row["dataset"] = "<b>" + SCRIPT
    report = build_report(make_table(rows), tmp_path / "rep", title=IMAGE, formats=("png",),
                          sources=[f"/data/{IMAGE}.csv"])  # fmt: skip
    markdown = report.markdown.read_text()
    assert IMAGE not in markdown and SCRIPT not in markdown and "<b>" not in markdown
    page = render(markdown)
    hrefs, images = links_and_images(page)
    assert hrefs == []
    assert images and all(re.fullmatch(r"[\w.-]+\.png", src) for src in images), images
    seen = shown(page)  # the labels read as written: title, table cells, caption, source
    assert seen.count(IMAGE) >= 4 and seen.count(SCRIPT) >= 2 and "<b>" + SCRIPT in seen

"""The README and the hand-written pages of docs/: every relative link resolves, and the README stays a
short front page (at most 250 lines; no dated logs, commit hashes or internal issue numbers)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Pages written by scripts (python -m pkpd.docs, make calibrate, benchmarks/optimize.py --md): their links
#: are checked for the files they name, not for #anchors.
GENERATED = {"model_library.md", "outcome_calibration.md", "outcome_checks.md", "spine72_trial.md"}
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _prose(path: Path) -> str:
    """The page without its fenced code blocks (a link-like text inside code is not a link)."""
    return re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation other than '-' and '_' dropped, spaces -> '-'."""
    return {
        re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        for m in re.finditer(r"^#{1,6}\s+(.*)$", _prose(path), re.M)
    }


def _broken_links(path: Path) -> list[str]:
    problems = []
    for url in LINK.findall(_prose(path)):
        if re.match(r"[a-z][a-z0-9+.-]*:", url):  # http:, https:, mailto:
            continue
        target, _, fragment = url.partition("#")
        resolved = (path.parent / target).resolve() if target else path.resolve()
        if not resolved.exists():
            problems.append(f"{url}: no such file")
        elif (
            fragment and resolved.suffix == ".md" and path.name not in GENERATED and fragment not in _anchors(resolved)
        ):
            problems.append(f"{url}: no heading with that anchor")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page):
    problems = _broken_links(page)
    assert not problems, f"{page.relative_to(ROOT)}: " + "; ".join(problems)


def test_link_check_can_fail(tmp_path):
    (tmp_path / "there.md").write_text("# A heading\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md) [ok](there.md#a-heading) [web](https://example.org)\n"
        "```\n[in code](nowhere.md)\n```\n[gone](missing.md) [bad](there.md#no-such-heading)\n"
    )
    assert _broken_links(page) == ["missing.md: no such file", "there.md#no-such-heading: no heading with that anchor"]


def test_readme_is_a_short_front_page():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250, "README.md: at most 250 lines; move detail to docs/"
    assert not re.search(r"\bissues?[ -]\d+|(?<![\w&])#\d+\b", text, re.I), "internal issue numbers in README.md"
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), "dated logs in README.md (figures belong to docs/ pages)"
    assert not re.search(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b", text), "commit hashes in README.md"
    # what the toolkit does, before the first code block (the first screen)
    intro = text.split("```", 1)[0].lower()
    for word in ("simulat", "nonmem", "fit", "forecast", "optimiz"):
        assert word in intro, f"the README's first screen does not say what pkpd does ({word!r})"
    # the slow checks and benchmarks are one click away
    assert "docs/benchmarks.md" in text
    assert "-m slow" in (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")


def test_cited_reference_notes_are_shipped():
    """Code and pages cite models.md and clinical.md: both are in docs/reference/, linked from the README."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in ("models.md", "clinical.md"):
        path = ROOT / "docs" / "reference" / name
        assert path.is_file() and path.stat().st_size > 10_000, f"docs/reference/{name} missing or truncated"
        assert f"docs/reference/{name}" in readme

"""The generated model-library page (pkpd.docs -> docs/model_library.md) and the sources behind it.

(a) Every number of the drug library carries a source: each PK parameter, covariate effect and PD value
of every drug, the adverse-effect, pain and demand values and every product, checked on the library
objects themselves (not through the generator, so a generator that skipped a row could not hide it), and
each of them appears on the page with its source. (b) The committed page is exactly what the generator
writes now: change the library, then run ``python -m pkpd.docs``.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from pkpd.docs import DEFAULT_PATH, library_rows, main, model_library_markdown
from pkpd.drugs import Source, get_drug, list_drugs
from pkpd.drugs.products import PRODUCTS
from pkpd.pain import DemandModel, PainModel
from pkpd.pd import PD_LIBRARY, AdverseEffectModel, PDValue

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / DEFAULT_PATH
PLACEHOLDERS = {"", "?", "todo", "tbd", "unknown", "none", "n/a", "na", "-", "source"}


def _sourced(what: str, source) -> str | None:
    """A problem message when ``source`` is missing or a placeholder, else None."""
    if source is None or not isinstance(source, Source):
        return f"{what}: no Source"
    if source.citation.strip().lower() in PLACEHOLDERS:
        return f"{what}: placeholder source {source.citation!r}"
    return None


def _all_sourced_items():
    for name in list_drugs():
        d = get_drug(name)
        for p in d.params:
            yield f"{name}.{p.name}", p.source
        for c in d.covariates:
            yield f"{name}.{c.param}~{c.covariate}", c.source
        if name in PD_LIBRARY:
            for k, v in PD_LIBRARY[name].values().items():
                yield f"{name} PD {k}", v.source
    for model in (AdverseEffectModel(), PainModel(), DemandModel()):
        for f in dataclasses.fields(model):
            v = getattr(model, f.name)
            if isinstance(v, PDValue):
                yield f"{type(model).__name__}.{f.name}", v.source
    for key, pr in PRODUCTS.items():
        yield f"product {key}", pr.source


def test_every_parameter_has_a_source():
    problems = [m for what, src in _all_sourced_items() if (m := _sourced(what, src))]
    assert not problems, "numbers without a source:\n" + "\n".join(problems)
    assert len(list(_all_sourced_items())) > 300  # guards the walk itself (347 numbers on 2026-12-02)


def test_source_checker_catches_a_missing_source():
    """The check above can fail: an empty citation is refused when the library is built, a placeholder is
    reported, and a bare number (no Source) is reported."""
    from pkpd import ModelSpecError

    with pytest.raises(ModelSpecError, match="citation must be non-empty"):
        Source("  ")
    assert _sourced("x", Source("TODO")) is not None
    assert _sourced("x", None) is not None
    assert _sourced("x", Source("Agema 2021")) is None


def test_page_lists_every_drug_parameter_with_its_source():
    page = PAGE.read_text(encoding="utf-8")
    sections = re.split(r"^## ", page, flags=re.M)
    by_title = {s.split("\n", 1)[0].strip(): s for s in sections[1:]}
    for name in list_drugs():
        d = get_drug(name)
        assert name in by_title, f"drug {name} has no section on the page"
        sec = by_title[name]
        for p in d.params:
            row = re.search(rf"^\| {re.escape(p.name)} \|.*$", sec, re.M)
            assert row, f"{name}.{p.name} missing from the page"
            src = " ".join(str(p.source).split()).replace("|", "\\|")
            assert src in row.group(0), f"{name}.{p.name}: source not on its row"
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", row.group(0))[1:-1]]
            assert cells[5] == src and cells[6] == ("UNVERIFIED" if p.is_unverified else ""), (
                f"{name}.{p.name}: source or UNVERIFIED flag column"
            )
        for c in d.covariates:
            assert re.search(rf"^\| {re.escape(c.param)} \| {re.escape(c.covariate)} \|", sec, re.M), (
                f"{name}.{c.param}~{c.covariate} missing"
            )
    rows = library_rows()
    assert all(r.source.strip() for r in rows)
    assert {r.owner for r in rows if r.section == "pk"} == set(list_drugs())


def test_committed_page_is_up_to_date(capsys):
    """docs/model_library.md equals the generator's output (run `python -m pkpd.docs` after changing the
    library); `--check` says the same through the command line."""
    assert PAGE.is_file(), f"{DEFAULT_PATH} is missing: run `python -m pkpd.docs`"
    assert PAGE.read_text(encoding="utf-8") == model_library_markdown(), (
        f"{DEFAULT_PATH} is out of date with the drug library: run `python -m pkpd.docs` and commit it"
    )
    assert main(["--check", "--out", str(PAGE)]) == 0


def test_check_fails_on_a_stale_page(tmp_path, capsys):
    stale = tmp_path / "model_library.md"
    stale.write_text(model_library_markdown().replace("| 24 | L/h |", "| 25 | L/h |", 1))
    assert main(["--check", "--out", str(stale)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert main(["--out", str(stale)]) == 0 and main(["--check", "--out", str(stale)]) == 0


def test_readme_quick_start():
    """The README opens with exactly the two make commands; then a Python example of at most 10 lines that
    compiles, and a CLI example whose commands exist (both were run when written: see the README)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```(\w*)\n(.*?)```", text, re.S)
    lang, first = blocks[0]
    assert lang == "bash" and [ln.split("#")[0].strip() for ln in first.strip().splitlines()] == [
        "make demo",
        "make test",
    ]
    py = next(code for lang, code in blocks if lang == "python")
    lines = [ln for ln in py.splitlines() if ln.strip()]
    assert len(lines) <= 10, f"the Python quick start has {len(lines)} lines"
    compile(py, "README quick start", "exec")
    from cli import app

    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    cli_block = blocks[[lang for lang, _ in blocks].index("python") + 1][1]
    for ln in cli_block.strip().splitlines():
        assert ln.startswith("pkpd ") and ln.split()[1] in commands, ln

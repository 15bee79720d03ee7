"""The shape of the command line (issue 24 part 4, "a thin CLI"): shared options declared once, one error
boundary around every command, pkpd.configure called at start-up, the workflows in the package."""

from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd
import pytest
import typer
from cli_helpers import cli_output, runner

import cli
from cli import app

ROOT = Path(__file__).resolve().parents[1]
SOURCE = (ROOT / "cli.py").read_text(encoding="utf-8")
TREE = ast.parse(SOURCE)

#: Options several commands share: each declared once in cli.py (an Annotated alias).
SHARED = {
    "--force": ("simulate", "fit", "forecast", "optimize", "trial", "report"),
    "--out": ("simulate", "fit", "forecast", "optimize", "trial", "report"),
    "--seed": ("simulate", "fit", "forecast", "optimize", "trial"),
    "--precision": ("simulate", "fit", "optimize", "trial", "devices"),
    "--devices": ("simulate", "fit", "optimize", "trial"),
    "--ignore": ("simulate", "fit", "forecast"),
    "--accept": ("simulate", "fit", "forecast"),
    "--resume": ("simulate", "trial"),
    "--keep-chunks": ("simulate", "trial"),
    "--population": ("simulate", "trial"),
    "--steps": ("optimize", "trial"),
    "--coordinator": ("simulate", "trial", "devices"),
    "--num-processes": ("simulate", "trial", "devices"),
    "--process-id": ("simulate", "trial", "devices"),
}


def _declarations(flag: str) -> int:
    """How many ``typer.Option(...)`` calls in cli.py declare ``flag``."""
    return sum(
        isinstance(n, ast.Call)
        and ast.unparse(n.func) == "typer.Option"
        and any(isinstance(a, ast.Constant) and a.value == flag for a in n.args)
        for n in ast.walk(TREE)
    )


def _options(command: str) -> set[str]:
    group = typer.main.get_command(app)
    return {opt for p in group.commands[command].params for opt in p.opts}


@pytest.mark.parametrize("flag", sorted(SHARED))
def test_shared_options_are_declared_once_and_used_by_every_command(flag):
    assert _declarations(flag) == 1, f"{flag} is declared {_declarations(flag)} times in cli.py"
    for command in SHARED[flag]:
        assert flag in _options(command), (flag, command)


def test_chunk_size_is_declared_once_besides_the_trials_alias():
    """`trial --chunk/--chunk-size` (patients per optimizer call) is its own option; the batch size of the
    population simulation and the optimizer's exact simulations is the shared one."""
    assert _declarations("--chunk-size") == 2
    assert "--chunk-size" in _options("simulate") and "--chunk-size" in _options("optimize")


def test_one_error_boundary():
    """No command catches PKPDError itself: every registered command runs inside cli._boundary."""
    handlers = [ast.unparse(h.type) for h in ast.walk(TREE) if isinstance(h, ast.ExceptHandler) and h.type is not None]
    assert not [h for h in handlers if "PKPDError" in h], handlers
    commands = list(app.registered_commands) + list(cli.drugs_app.registered_commands)
    assert len(commands) == 11
    for c in commands:
        assert getattr(c.callback, "__wrapped__", None) is not None, c.callback.__name__


def _toy_app():
    from pkpd.errors import DatasetError, DatasetViolation

    toy = cli._App()

    @toy.command("user")
    def user() -> None:
        raise DatasetError([DatasetViolation((3,), "AMT", "negative")], source="d.csv")

    @toy.command("abort")
    def abort() -> None:
        raise cli._Abort("refused")

    @toy.command("bug")
    def bug() -> None:
        raise ZeroDivisionError("a bug")

    @toy.command("interrupted")
    def interrupted() -> None:
        raise KeyboardInterrupt

    @toy.command("quick", quick=True)
    def quick() -> None:
        raise KeyboardInterrupt

    return toy


def test_the_boundary_prints_user_errors_once_and_keeps_bugs():
    toy = _toy_app()
    res = runner.invoke(toy, ["user"])
    text = cli_output(res)
    assert res.exit_code == 1 and "Traceback" not in text
    assert text.startswith("Error: Dataset d.csv is invalid: 1 problem found\n  - row 3, column AMT: negative")
    res = runner.invoke(toy, ["abort"])
    assert res.exit_code == 1 and cli_output(res).strip() == "Error: refused"
    res = runner.invoke(toy, ["bug"])  # not a user error: the exception (and its traceback) is kept
    assert isinstance(res.exception, ZeroDivisionError)
    res = runner.invoke(toy, ["interrupted"])
    assert res.exit_code == 130 and "Interrupted (Ctrl-C)" in cli_output(res)
    res = runner.invoke(toy, ["quick"])  # a quick command: Typer's own handling of Ctrl-C, as before
    assert res.exit_code == 130 and "Interrupted" not in cli_output(res)


def test_commands_call_configure_with_their_precision(monkeypatch):
    import pkpd

    calls = []
    configure = pkpd.configure
    monkeypatch.setattr(pkpd, "configure", lambda **kw: (calls.append(kw), configure(**kw))[1])
    res = runner.invoke(app, ["devices", "--precision", "float64"])
    assert res.exit_code == 0, cli_output(res)
    assert calls == [{"precision": "float64"}] and "precision: float64" in res.output


def test_simulate_dataset_is_the_commands_workflow(tmp_path):
    """pkpd.simulate.simulate_dataset: the parameter file's model, the plot's dense grid, the summary line."""
    from pkpd.errors import ModelSpecError
    from pkpd.simulate import DENSE_GRID_POINTS, simulate_dataset

    data = tmp_path / "bolus.csv"
    data.write_text("ID,TIME,EVID,AMT,CMT\n1,0,1,100,1\n1,1,0,0,1\n1,2,0,0,1\n")
    params = tmp_path / "p.toml"
    params.write_text('model = "1cmt_iv"\n[parameters]\nCL = 5\nV = 50\n')
    run = simulate_dataset(data, params, plot=True)
    assert len(run.table) == 3 and run.model.name == "1cmt_iv"
    assert run.table["CP"].iloc[0] == pytest.approx(2.0)  # 100 mg / 50 L
    assert run.summary() == "Simulated 3 rows, 1 subject with model 1cmt_iv (solver auto -> analytic)"
    assert (run.curves["GRID"] == 1).sum() == DENSE_GRID_POINTS
    assert run.plot(tmp_path / "p.png") == (1, 1) and (tmp_path / "p.png").stat().st_size > 0
    assert pd.read_csv(run.write_csv(tmp_path / "o.csv")).shape == run.table.shape
    gridded = simulate_dataset(data, params, grid="0:2:1", solver="ode")
    assert gridded.summary().startswith("Simulated 6 rows (3 on the --grid), 1 subject with model 1cmt_iv (solver ode")
    with pytest.raises(ValueError, match="no plot was asked for"):
        gridded.plot(tmp_path / "q.png")
    params.write_text("[parameters]\nCL = 5\nV = 50\n")
    with pytest.raises(ModelSpecError, match="no model given"):
        simulate_dataset(data, params)

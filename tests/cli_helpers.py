"""Helpers shared by the command-line tests."""

from typer.testing import CliRunner

runner = CliRunner()


def cli_output(result) -> str:
    """Everything a command printed (stdout and stderr, which Click may or may not keep apart)."""
    text = result.output
    try:
        err = result.stderr
    except (ValueError, AttributeError):
        err = ""
    return text if err in text else text + err

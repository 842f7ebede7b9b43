"""docs/cli.md is generated from the typer app: it must match what the app says today."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from streamproc.cli import app
from streamproc.clidocs import render

REPO = Path(__file__).resolve().parents[2]


def test_cli_reference_is_current() -> None:
    committed = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    assert committed.strip() == render().strip(), "run: python -m streamproc.clidocs > docs/cli.md"


def test_every_option_has_help_and_every_consume_option_an_env_var() -> None:
    document = render()
    for line in document.splitlines():
        if line.startswith("| `--"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            assert cells[3], f"option without help: {cells[0]}"
    consume = document.split("## `streamproc consume`")[1].split("## ")[0]
    for line in consume.splitlines():
        if line.startswith("| `--"):
            assert "`STREAMPROC_" in line, f"consume option without env var: {line}"


def test_help_and_version_exit_zero() -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["--help"]).exit_code == 0
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0
    assert version.stdout.startswith("streamproc ")

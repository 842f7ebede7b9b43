"""CLI options derived from the settings models (streamproc.cliopts): nothing restated."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from streamproc.cli import CONSUME_SETTINGS, app, parse_error_actions
from streamproc.cliopts import help_text, settings_options
from streamproc.settings import ConsumerSettings

REPO = Path(__file__).resolve().parents[2]


def dummy_app(seen: dict[str, Any]) -> typer.Typer:
    dummy = typer.Typer()

    @dummy.command()
    @settings_options(ConsumerSettings, ("pause_lag", "scope", "pause_delay_s"))
    def run(name: str = "x", *, settings: dict[str, Any] | None = None) -> None:
        seen.update(settings or {}, name=name)

    return dummy


def test_given_options_reach_the_command_as_settings_and_the_rest_stay_out() -> None:
    seen: dict[str, Any] = {}
    result = CliRunner().invoke(dummy_app(seen), ["--pause-lag", "5", "--scope", "group"])
    assert result.exit_code == 0, result.output
    assert seen == {"pause_lag": 5, "scope": "group", "name": "x"}


def test_environment_variables_are_the_ones_the_settings_read() -> None:
    seen: dict[str, Any] = {}
    result = CliRunner().invoke(dummy_app(seen), [], env={"STREAMPROC_PAUSE_DELAY_S": "2.5"})
    assert result.exit_code == 0, result.output
    assert seen == {"pause_delay_s": 2.5, "name": "x"}


def test_a_literal_setting_offers_its_values_as_choices() -> None:
    result = CliRunner().invoke(dummy_app({}), ["--scope", "nowhere"])
    assert result.exit_code == 2
    assert "local" in result.output and "group" in result.output


def test_every_consume_setting_option_is_the_field_itself() -> None:
    consume = typer.main.get_command(app).commands["consume"]  # type: ignore[attr-defined]
    options = {param.name: param for param in consume.params if param.param_type_name == "option"}
    for name in CONSUME_SETTINGS:
        option = options[name]
        field = ConsumerSettings.model_fields[name]
        assert option.opts == [f"--{name.replace('_', '-')}"]
        assert option.envvar == f"STREAMPROC_{name.upper()}"
        assert option.help == help_text(field)
        assert option.default is None  # not given: the settings decide


def test_help_text_is_the_first_sentence_and_the_default() -> None:
    field = ConsumerSettings.model_fields["pause_lag"]
    text = help_text(field)
    assert text.startswith("Pause every lower lane when a lane's lag exceeds this many messages.")
    assert text.endswith("Default: 1000.")


def consume(*args: str) -> subprocess.CompletedProcess[str]:
    """``streamproc consume ARGS`` against a port nothing listens on."""
    return subprocess.run(
        [sys.executable, "-m", "streamproc", "consume", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "250", "STREAMPROC_BOOTSTRAP_SERVERS": "127.0.0.1:1"},
    )


def test_an_out_of_range_setting_is_a_usage_error_before_any_connection() -> None:
    result = consume("--pause-lag", "0", "--sink", "null")
    assert result.returncode == 2, result.stderr
    assert "pause_lag" in result.stderr


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="no fields"):
        settings_options(ConsumerSettings, ("no_such_setting",))


def test_on_error_accepts_retry_for_a_retriable_reason_only() -> None:
    assert parse_error_actions(["sink_unavailable=retry,invalid=stop"]) == {
        "sink_unavailable": "retry",
        "invalid": "stop",
    }
    with pytest.raises(typer.BadParameter, match="REASON=retry"):
        parse_error_actions(["invalid=maybe"])
    result = consume("--on-error", "invalid=retry")
    assert result.returncode == 2, result.stderr
    assert "retriable reasons only" in result.stderr and "not invalid" in result.stderr

"""A malformed bootstrap list is a usage error of the real CLI, before any client connects."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

COMMANDS = [
    ["consume", "--sink", "null", "--metrics-port", "0"],
    ["produce", "-"],
    ["topics", "create"],
    ["topics", "describe"],
    ["lag"],
    ["demo"],
    ["dlq", "summary"],
    ["dlq", "list"],
    ["dlq", "replay"],
]


def streamproc(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamproc", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
        # Wide enough that the error box does not wrap the message.
        env={**os.environ, "COLUMNS": "250", **(env or {})},
        input="",
    )


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_rejects_a_malformed_bootstrap_before_connecting(
    command: list[str],
) -> None:
    started = time.monotonic()
    result = streamproc(*command, "--bootstrap-servers", "kafka-1:9092,kafka-2")
    assert result.returncode == 2, result.stderr
    assert "Invalid value for '--bootstrap-servers'" in result.stderr
    assert "'kafka-2' is not host:port" in result.stderr
    # No client was created: librdkafka logs nothing and nothing waits for a broker.
    assert "%3|" not in result.stderr and "%4|" not in result.stderr
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("localhost", "'localhost' is not host:port"),
        ("broker:99999", "port 99999 is not in 1..65535"),
        (" , ", "must not be empty"),
    ],
)
def test_the_environment_variable_is_checked_the_same_way(value: str, message: str) -> None:
    result = streamproc("lag", env={"STREAMPROC_BOOTSTRAP_SERVERS": value})
    assert result.returncode == 2
    assert message in result.stderr

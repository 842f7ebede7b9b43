"""The public Python API: what ``streamproc`` exports, that it is documented, and
``run_in_thread`` (the asyncio embedding) with a consumer that needs no broker."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import streamproc
from streamproc.aio import run_in_thread

REPO = Path(__file__).resolve().parents[2]


def test_every_exported_name_resolves_to_its_defining_module() -> None:
    names = [name for name in streamproc.__all__ if name != "__version__"]
    assert sorted(streamproc.__all__) == streamproc.__all__
    assert set(names) == set(streamproc._LOCATIONS)
    for name in names:
        module = importlib.import_module(streamproc._LOCATIONS[name])
        assert getattr(streamproc, name) is getattr(module, name), name
    namespace: dict[str, object] = {}
    exec("from streamproc import *", namespace)  # noqa: S102  # the star import users write
    assert set(streamproc.__all__) <= set(namespace)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        getattr(streamproc, "Nope")  # noqa: B009  # the attribute lookup is the test


def test_importing_the_package_stays_cheap() -> None:
    code = "import sys, streamproc; print('confluent_kafka' in sys.modules, streamproc.__version__)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    loaded, version = result.stdout.split()
    assert loaded == "False"
    assert version == streamproc.__version__


def test_every_exported_class_and_function_is_documented_and_in_the_api_reference() -> None:
    reference = (REPO / "docs" / "api.md").read_text(encoding="utf-8")
    for name in streamproc.__all__:
        if name == "__version__":
            continue
        value = getattr(streamproc, name)
        module = streamproc._LOCATIONS[name]
        documented = rf"::: {re.escape(module)}\.{name}\b|^\s+- {name}$|`{name}`"
        assert re.search(documented, reference, re.MULTILINE), f"{name} missing from docs/api.md"
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"{name} has no docstring"


class FakeConsumer:
    """Runs until stopped (or returns ``code`` on its own after ``runs_for_s``)."""

    def __init__(self, *, code: int = 0, runs_for_s: float | None = None) -> None:
        self.code = code
        self.runs_for_s = runs_for_s
        self.stopping = threading.Event()
        self.started = threading.Event()
        self.finished = threading.Event()
        self.signal_handlers: bool | None = None
        self.thread: threading.Thread | None = None

    def run(self, *, install_signal_handlers: bool = True) -> int:
        self.signal_handlers = install_signal_handlers
        self.thread = threading.current_thread()
        self.started.set()
        self.stopping.wait(self.runs_for_s)
        time.sleep(0.2)  # the drain and the commit take a while
        self.finished.set()
        return self.code

    def stop(self) -> None:
        self.stopping.set()


def test_run_in_thread_returns_the_exit_code_from_a_worker_thread() -> None:
    consumer = FakeConsumer(code=1, runs_for_s=0.05)
    assert asyncio.run(run_in_thread(consumer)) == 1
    assert consumer.thread is not threading.main_thread()
    assert consumer.signal_handlers is False


def test_cancelling_stops_the_consumer_and_waits_for_it_before_raising() -> None:
    consumer = FakeConsumer()

    async def main() -> None:
        task = asyncio.create_task(run_in_thread(consumer))
        await asyncio.to_thread(consumer.started.wait)
        task.cancel()
        await asyncio.sleep(0.05)
        task.cancel()  # a second cancellation does not cut the drain short
        with pytest.raises(asyncio.CancelledError):
            await task
        assert consumer.finished.is_set()  # stopped and finished before the cancel went through

    asyncio.run(main())
    assert consumer.stopping.is_set()

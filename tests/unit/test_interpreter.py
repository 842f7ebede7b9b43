"""The garbage collector threshold and the GIL switch interval the consumer loop runs under."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator

import pytest

from streamproc.interpreter import gil_switch_interval, young_gc_threshold


@pytest.fixture(autouse=True)
def _python_defaults() -> Iterator[None]:
    before, interval = gc.get_threshold(), sys.getswitchinterval()
    gc.set_threshold(700, 10, 10)
    sys.setswitchinterval(0.005)
    yield
    gc.set_threshold(*before)
    sys.setswitchinterval(interval)


def test_raises_the_young_threshold_for_the_block_and_restores_it() -> None:
    with young_gc_threshold(20_000):
        assert gc.get_threshold() == (20_000, 10, 10)
    assert gc.get_threshold() == (700, 10, 10)


def test_restores_it_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError), young_gc_threshold(20_000):
        raise RuntimeError("boom")
    assert gc.get_threshold() == (700, 10, 10)


@pytest.mark.parametrize("threshold", [0, 500, 700])
def test_zero_or_lower_leaves_the_interpreter_setting(threshold: int) -> None:
    with young_gc_threshold(threshold):
        assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_threshold() == (700, 10, 10)


def test_a_setting_changed_inside_the_block_is_kept() -> None:
    with young_gc_threshold(20_000):
        gc.set_threshold(50_000, 5, 5)  # the application's own choice
    assert gc.get_threshold() == (50_000, 5, 5)


def test_nested_blocks_unwind_in_order() -> None:
    with young_gc_threshold(5_000):
        with young_gc_threshold(20_000):
            assert gc.get_threshold()[0] == 20_000
        assert gc.get_threshold()[0] == 5_000
    assert gc.get_threshold()[0] == 700


def test_shortens_the_switch_interval_for_the_block_and_restores_it() -> None:
    with gil_switch_interval(0.0005):
        assert sys.getswitchinterval() == pytest.approx(0.0005)
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_the_switch_interval_is_restored_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError), gil_switch_interval(0.0005):
        raise RuntimeError("boom")
    assert sys.getswitchinterval() == pytest.approx(0.005)


@pytest.mark.parametrize("seconds", [0.0, 0.005, 0.01])
def test_zero_or_longer_leaves_the_switch_interval(seconds: float) -> None:
    with gil_switch_interval(seconds):
        assert sys.getswitchinterval() == pytest.approx(0.005)
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_a_switch_interval_changed_inside_the_block_is_kept() -> None:
    with gil_switch_interval(0.001):
        sys.setswitchinterval(0.0002)  # the application's own choice
    assert sys.getswitchinterval() == pytest.approx(0.0002)

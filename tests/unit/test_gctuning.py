"""The garbage collector threshold the consumer loop runs under."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from streamproc.gctuning import young_gc_threshold


@pytest.fixture(autouse=True)
def _python_defaults() -> Iterator[None]:
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*before)


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

"""``streamproc.cli.read_records``: JSON lines or one JSON array, with line numbers for errors."""

from __future__ import annotations

import io
import json

import pytest

from streamproc.cli import InputRecord, read_records

Rejected = tuple[int, str, str]


def read(text: str) -> list[InputRecord | Rejected]:
    return list(read_records(io.StringIO(text)))


def records(text: str) -> list[tuple[int, str, object]]:
    """(line, text, value) of every record; fails on a rejected line."""
    result = []
    for item in read(text):
        assert isinstance(item, InputRecord), item
        result.append((item.line, item.text, item.value))
    return result


def test_json_lines() -> None:
    text = '{"chunk_html": "a"}\n{"chunk_html": "b", "tracking_id": "t"}\n'
    assert records(text) == [
        (1, '{"chunk_html": "a"}', {"chunk_html": "a"}),
        (2, '{"chunk_html": "b", "tracking_id": "t"}', {"chunk_html": "b", "tracking_id": "t"}),
    ]


def test_last_line_without_newline_and_crlf() -> None:
    assert records('{"a": 1}\r\n  {"b": 2}  ') == [
        (1, '{"a": 1}', {"a": 1}),
        (2, '{"b": 2}', {"b": 2}),
    ]


def test_blank_lines_are_skipped_but_counted() -> None:
    text = '{"a": 1}\n\n   \n{"b": 2}\n\n'
    assert [(line, value) for line, _, value in records(text)] == [(1, {"a": 1}), (4, {"b": 2})]


def test_a_line_may_hold_an_array() -> None:
    text = '{"a": 1}\n[{"b": 2}, {"c": 3}]\n{"d": 4}\n'
    assert [(line, value) for line, _, value in records(text)] == [
        (1, {"a": 1}),
        (2, {"b": 2}),
        (2, {"c": 3}),
        (3, {"d": 4}),
    ]


def test_json_array_file() -> None:
    batch = [{"chunk_html": "a"}, {"chunk_html": "b", "low_priority": True}, {"link": "c"}]
    text = "\n  " + json.dumps(batch, indent=2) + "\n"
    result = records(text)
    assert [value for _, _, value in result] == batch
    assert [line for line, _, _ in result] == [1, 2, 3]
    assert [json.loads(item_text) for _, item_text, _ in result] == batch


def test_non_objects_are_passed_on_for_the_caller_to_reject() -> None:
    assert [value for _, _, value in records('3\n"text"\nnull\n')] == [3, "text", None]
    assert [value for _, _, value in records("[1, [2], {}]")] == [1, [2], {}]


def test_malformed_lines_are_reported_and_reading_goes_on() -> None:
    text = '{"a": 1}\n{"b": \n{"c": 3}\nnot json\n{"d": 4}'
    result = read(text)
    assert [item.line if isinstance(item, InputRecord) else item[0] for item in result] == [
        1,
        2,
        3,
        4,
        5,
    ]
    rejected = [item for item in result if not isinstance(item, InputRecord)]
    assert [(line, line_text) for line, line_text, _ in rejected] == [
        (2, '{"b":'),
        (4, "not json"),
    ]
    for _, _, reason in rejected:
        assert reason.startswith("malformed JSON: ")
        assert "column" in reason


def test_malformed_array_file_is_one_rejection() -> None:
    text = '[\n  {"a": 1},\n  {"b": }\n]\n'
    result = read(text)
    assert len(result) == 1
    item = result[0]
    assert not isinstance(item, InputRecord)
    line, rejected_text, reason = item
    assert line == 3
    assert rejected_text == text
    assert reason.startswith("malformed JSON")


@pytest.mark.parametrize("text", ["", "\n", "  \n\n  \t\n"])
def test_empty_input(text: str) -> None:
    assert read(text) == []


def test_leading_blank_lines_are_counted() -> None:
    assert [line for line, _, _ in records('\n\n{"a": 1}\n{"b": 2}\n')] == [3, 4]


def test_first_line_may_hold_an_array() -> None:
    text = '[{"a": 1}, {"b": 2}]\n{"c": 3}\n'
    assert [(line, value) for line, _, value in records(text)] == [
        (1, {"a": 1}),
        (1, {"b": 2}),
        (2, {"c": 3}),
    ]


def test_pretty_printed_single_object_is_one_chunk_numbered_by_its_first_line() -> None:
    text = '\n\n{\n  "chunk_html": "a",\n  "tag_set": ["x", "y"]\n}\n'
    assert records(text) == [(3, text.strip(), {"chunk_html": "a", "tag_set": ["x", "y"]})]


def test_one_object_per_line_is_still_json_lines() -> None:
    assert [line for line, _, _ in records('{"a": 1}\n\n{"b": 2}\n')] == [1, 3]

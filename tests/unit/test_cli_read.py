"""``streamproc.jsoninput.read_records``: JSON lines, a JSON array or one object, streamed, with
line numbers for errors."""

from __future__ import annotations

import io
import json

import pytest

from streamproc import jsoninput
from streamproc.jsoninput import BrokenInput, InputRecord, Rejected, read_records


def read(text: str) -> list[InputRecord | Rejected | BrokenInput]:
    """Read ``text`` both as a text stream and as bytes; both must give the same records."""
    from_text = list(read_records(io.StringIO(text)))
    from_bytes = list(read_records(io.BytesIO(text.encode())))
    assert [(type(r), r if isinstance(r, tuple) else r.line) for r in from_text] == [
        (type(r), r if isinstance(r, tuple) else r.line) for r in from_bytes
    ]
    return from_bytes


def number(item: InputRecord | Rejected | BrokenInput) -> int:
    return item[0] if isinstance(item, tuple) else item.line


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
    assert [number(item) for item in result] == [1, 2, 3, 4, 5]
    rejected = [item for item in result if isinstance(item, tuple)]
    assert [(line, line_text) for line, line_text, _ in rejected] == [
        (2, '{"b":'),
        (4, "not json"),
    ]
    for _, _, reason in rejected:
        assert reason.startswith("malformed JSON: ")
        assert "column" in reason


def test_malformed_array_file_stops_where_it_breaks() -> None:
    text = '[\n  {"a": 1},\n  {"b": }\n, {"c": 3}]\n'
    result = read(text)
    assert len(result) == 2
    first, broken = result
    assert isinstance(first, InputRecord)
    assert (first.line, first.value) == (1, {"a": 1})
    assert isinstance(broken, BrokenInput)
    assert broken.line == 2
    assert broken.reason.startswith("malformed JSON array after item 1: parse error")
    assert "not read" in broken.reason


def test_array_broken_before_its_first_item() -> None:
    result = read("[\n  nonsense\n]")
    assert len(result) == 1
    assert isinstance(result[0], BrokenInput)
    assert result[0].line == 1
    assert "before the first item" in result[0].reason


def test_trailing_content_after_an_array_document_is_reported() -> None:
    result = read('[\n{"a": 1}\n]\n{"b": 2}\n')
    assert isinstance(result[0], InputRecord) and result[0].value == {"a": 1}
    assert isinstance(result[1], BrokenInput)
    assert "trailing garbage" in result[1].reason


def test_single_line_array_document_is_numbered_by_item() -> None:
    batch = [{"chunk_html": "a"}, {"chunk_html": "b"}, 7]
    for text in (json.dumps(batch), json.dumps(batch) + "\n\n  \n"):
        assert [(line, value) for line, _, value in records(text)] == [
            (1, batch[0]),
            (2, batch[1]),
            (3, 7),
        ]


def test_array_items_keep_their_text_for_the_rejects_file() -> None:
    item = {"chunk_html": "ü", "tag_set": ["x"]}
    [(_, text, _)] = records(json.dumps([item], indent=2))
    assert json.loads(text) == item


def test_large_array_streams_item_by_item() -> None:
    """ijson hands over items while the rest is still unread: the input is not read whole."""
    items = [{"chunk_html": f"chunk {i}", "tracking_id": str(i)} for i in range(20_000)]
    source = io.BytesIO(json.dumps(items, indent=1).encode())
    reader = read_records(source)
    first = next(reader)
    assert isinstance(first, InputRecord) and first.value == items[0]
    assert source.tell() < len(source.getvalue()) / 4
    rest = list(reader)
    assert [r.value for r in rest if isinstance(r, InputRecord)] == items[1:]


def test_over_long_line_is_rejected_without_being_read_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(jsoninput, "MAX_LINE_BYTES", 64)
    long_line = json.dumps({"chunk_html": "x" * 500})
    result = read('{"a": 1}\n' + long_line + '\n{"b": 2}\n')
    assert [number(item) for item in result] == [1, 2, 3]
    rejected = result[1]
    assert isinstance(rejected, tuple)
    assert rejected[2] == "line longer than 64 bytes (not read whole)"


def test_invalid_utf8_line_is_rejected_and_reading_goes_on() -> None:
    source = io.BytesIO(b'{"a": 1}\n{"b": "\xff"}\n{"c": 3}\n')
    result = list(read_records(source))
    assert isinstance(result[0], InputRecord) and isinstance(result[2], InputRecord)
    rejected = result[1]
    assert isinstance(rejected, tuple)
    assert rejected[0] == 2
    assert rejected[2].startswith("malformed JSON: not UTF-8")


def test_pretty_printed_object_followed_by_json_lines_is_json_lines() -> None:
    result = read('{\n"a": 1\n}\n{"b": 2}\n')
    assert [r[0] for r in result if isinstance(r, tuple)] == [1, 2, 3]
    assert [(r.line, r.value) for r in result if isinstance(r, InputRecord)] == [(4, {"b": 2})]


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

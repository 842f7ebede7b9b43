"""docs/configuration.md is generated from the settings models: it must match them today."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamproc.configdocs import SECTIONS, default_text, env_name, render, type_name
from streamproc.flow import FlowSettings
from streamproc.settings import ConsumerSettings, ProducerSettings

REPO = Path(__file__).resolve().parents[2]


def test_configuration_reference_is_current() -> None:
    committed = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed.strip() == render().strip(), (
        "run: python -m streamproc.configdocs > docs/configuration.md"
    )


def test_every_settings_field_is_documented_once_with_its_env_var() -> None:
    document = render()
    rows = [line for line in document.splitlines() if line.startswith("| `")]
    names = [line.split("`")[1] for line in rows]
    every_field = {*ProducerSettings.model_fields, *ConsumerSettings.model_fields}
    assert sorted(names) == sorted(every_field)
    for line in rows:
        name = line.split("`")[1]
        assert f"| `{name}` | `STREAMPROC_{name.upper()}` |" in line
        assert line.rstrip(" |").split("|")[-1].strip(), f"{name} has no description"


FLOW_VALUES = {
    "pause_lag": "5000",
    "resume_lag": "3",
    "pause_delay_s": "7.5",
    "max_pause_s": "30.0",
    "starvation_slice_s": "2.5",
    "min_bulk_share": "0.25",
    "min_bulk_share_window_s": "120.0",
}


def test_every_flow_field_has_a_value_to_try() -> None:
    assert set(FLOW_VALUES) == set(FlowSettings.model_fields)


@pytest.mark.parametrize(("name", "value"), sorted(FLOW_VALUES.items()))
def test_documented_env_var_sets_the_consumer_field(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(env_name(name), value)
    settings = ConsumerSettings()
    assert str(getattr(settings, name)) == value
    assert str(getattr(settings.flow_settings(), name)) == value


def test_types_and_defaults_are_spelled_for_people() -> None:
    fields = ConsumerSettings.model_fields
    assert type_name(fields["scope"].annotation) == '"local" | "group" | "auto"'
    assert type_name(fields["pause_delay_s"].annotation) == "float | None"
    assert type_name(fields["lanes"].annotation) == "tuple[str, ...]"
    assert default_text(fields["lanes"]) == '["realtime", "bulk"]'
    assert default_text(fields["error_actions"]) == "{}"
    assert default_text(fields["pause_delay_s"]) == ""
    assert default_text(fields["pause_lag"]) == "1000"


def test_placeholders_become_code_so_markdown_keeps_them() -> None:
    connection = next(section for section in SECTIONS if section[0].startswith("Connection"))
    assert connection[1].model_fields["topic_prefix"].description
    assert "`<prefix>.realtime` and `<prefix>.bulk`." in render()

"""Unit tests of the flow-control policy: thresholds, hysteresis, starvation guards, N lanes,
scopes and lag arithmetic, plus property tests over random snapshot sequences and clocks."""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from streamproc import flow
from streamproc.errors import ConfigError
from streamproc.flow import (
    OFFSET_INVALID,
    FlowController,
    FlowDecision,
    FlowSettings,
    LaneLag,
    Scope,
    effective_scope,
    lane_lag,
    partition_lag,
)

REALTIME = "realtime"
BULK = "bulk"
TWO_LANES = (REALTIME, BULK)
THREE_LANES = (REALTIME, "standard", BULK)
FOUR_LANES = ("lane0", "lane1", "lane2", "lane3")

# Small thresholds keep the arithmetic in the tests obvious.
PAUSE_LAG = 100
RESUME_LAG = 10
SMALL = FlowSettings(pause_lag=PAUSE_LAG, resume_lag=RESUME_LAG)


def lags(**lag_messages: int | None) -> dict[str, LaneLag]:
    """A snapshot with message lag only: ``lags(realtime=5000, bulk=3)``."""
    return {lane: LaneLag(lag_messages=lag) for lane, lag in lag_messages.items()}


def controller(
    lane_names: Sequence[str] = TWO_LANES, flow_settings: FlowSettings = SMALL
) -> FlowController:
    return FlowController(lane_names, flow_settings)


# --- settings --------------------------------------------------------------------------------


def test_default_settings_are_strict_priority_on_message_lag() -> None:
    defaults = FlowSettings()
    assert defaults.pause_lag == 1000
    assert defaults.resume_lag == 0
    assert defaults.pause_delay_s is None
    assert defaults.max_pause_s is None
    assert defaults.starvation_slice_s == 5.0
    assert defaults.min_bulk_share is None
    assert defaults.min_bulk_share_window_s == 60.0


def test_controller_without_settings_uses_defaults() -> None:
    assert FlowController(TWO_LANES).settings == FlowSettings()


def test_every_setting_has_a_description_for_the_generated_docs() -> None:
    for name, field_info in FlowSettings.model_fields.items():
        assert field_info.description, name


@pytest.mark.parametrize(("pause_lag", "resume_lag"), [(100, 100), (100, 101), (1, 1)])
def test_resume_lag_not_below_pause_lag_is_rejected_naming_both(
    pause_lag: int, resume_lag: int
) -> None:
    with pytest.raises(ValidationError, match=r"resume_lag.*pause_lag"):
        FlowSettings(pause_lag=pause_lag, resume_lag=resume_lag)


def test_smallest_valid_hysteresis() -> None:
    tight = FlowSettings(pause_lag=1, resume_lag=0)
    assert (tight.pause_lag, tight.resume_lag) == (1, 0)


@pytest.mark.parametrize(
    ("field_name", "value"),
    [
        ("pause_lag", 0),
        ("pause_lag", -5),
        ("resume_lag", -1),
        ("pause_delay_s", 0.0),
        ("pause_delay_s", -1.0),
        ("pause_delay_s", math.nan),
        ("pause_delay_s", math.inf),
        ("max_pause_s", 0.0),
        ("max_pause_s", -3.0),
        ("max_pause_s", math.inf),
        ("starvation_slice_s", 0.0),
        ("starvation_slice_s", -1.0),
        ("min_bulk_share", 0.0),
        ("min_bulk_share", 1.0),
        ("min_bulk_share", 1.5),
        ("min_bulk_share", -0.1),
        ("min_bulk_share_window_s", 0.0),
        ("min_bulk_share_window_s", -60.0),
    ],
)
def test_out_of_range_setting_is_rejected_naming_the_field(field_name: str, value: float) -> None:
    with pytest.raises(ValidationError, match=field_name):
        FlowSettings.model_validate({field_name: value})


def test_unknown_setting_is_rejected() -> None:
    with pytest.raises(ValidationError, match="pause_lags"):
        FlowSettings.model_validate({"pause_lags": 5})


def test_settings_are_frozen() -> None:
    frozen = FlowSettings()
    with pytest.raises(ValidationError):
        frozen.pause_lag = 5  # type: ignore[misc]  # the point: assignment must fail


def test_settings_accept_optional_guards() -> None:
    guarded = FlowSettings(
        pause_delay_s=1.5, max_pause_s=30, starvation_slice_s=2, min_bulk_share=0.25
    )
    assert guarded.pause_delay_s == 1.5
    assert guarded.max_pause_s == 30.0
    assert guarded.min_bulk_share == 0.25


@pytest.mark.parametrize("lane_names", [(), (REALTIME,), (REALTIME, BULK, REALTIME)])
def test_controller_rejects_too_few_or_duplicate_lanes(lane_names: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError):
        FlowController(lane_names, SMALL)


# --- thresholds and hysteresis ---------------------------------------------------------------


def test_everything_runs_before_the_first_update() -> None:
    fresh = controller()
    assert fresh.paused == frozenset()
    assert fresh.decision == FlowDecision(paused=frozenset())
    assert fresh.lanes == TWO_LANES


def test_lag_exactly_at_pause_lag_does_not_pause() -> None:
    decision = controller().update(lags(realtime=PAUSE_LAG), now=0.0)
    assert decision.paused == frozenset()
    assert not decision.changed
    assert decision.congested == frozenset()


def test_lag_above_pause_lag_pauses_lower_lane() -> None:
    flow_controller = controller()
    decision = flow_controller.update(lags(realtime=PAUSE_LAG + 1), now=0.0)
    assert decision.paused == {BULK}
    assert decision.to_pause == {BULK}
    assert decision.to_resume == frozenset()
    assert decision.congested == {REALTIME}
    assert decision.changed
    assert decision.reasons == {BULK: f"realtime lag {PAUSE_LAG + 1} > pause_lag {PAUSE_LAG}"}
    assert flow_controller.paused == {BULK}
    assert flow_controller.congested == {REALTIME}


def test_lower_lane_lag_never_pauses_itself_or_the_top_lane() -> None:
    decision = controller().update(lags(realtime=0, bulk=10**9), now=0.0)
    assert decision.paused == frozenset()
    # The bottom lane is reported congested for metrics but holds nothing back.
    assert decision.congested == {BULK}


def test_resume_exactly_at_resume_lag() -> None:
    flow_controller = controller()
    flow_controller.update(lags(realtime=PAUSE_LAG + 1), now=0.0)
    still_paused = flow_controller.update(lags(realtime=RESUME_LAG + 1), now=1.0)
    assert still_paused.paused == {BULK}
    assert not still_paused.changed
    resumed = flow_controller.update(lags(realtime=RESUME_LAG), now=2.0)
    assert resumed.paused == frozenset()
    assert resumed.to_resume == {BULK}
    assert resumed.to_pause == frozenset()
    assert resumed.congested == frozenset()
    assert resumed.reasons == {}


def test_default_resume_lag_waits_until_drained() -> None:
    flow_controller = controller(flow_settings=FlowSettings(pause_lag=5))
    flow_controller.update(lags(realtime=6), now=0.0)
    assert flow_controller.update(lags(realtime=1), now=1.0).paused == {BULK}
    assert flow_controller.update(lags(realtime=0), now=2.0).paused == frozenset()


def test_transitions_are_reported_exactly_once() -> None:
    flow_controller = controller()
    first = flow_controller.update(lags(realtime=5000), now=0.0)
    assert first.to_pause == {BULK}
    for tick in range(1, 5):
        repeat = flow_controller.update(lags(realtime=5000), now=float(tick))
        assert repeat.to_pause == frozenset()
        assert repeat.to_resume == frozenset()
        assert repeat.paused == {BULK}
        assert repeat.reasons == first.reasons
    resumed = flow_controller.update(lags(realtime=0), now=5.0)
    assert resumed.to_resume == {BULK}
    again = flow_controller.update(lags(realtime=0), now=6.0)
    assert not again.changed
    assert again.paused == frozenset()
    assert flow_controller.pause_counts == {REALTIME: 0, BULK: 1}
    assert flow_controller.resume_counts == {REALTIME: 0, BULK: 1}


def test_steady_ticks_reuse_one_decision_object() -> None:
    flow_controller = controller()
    flow_controller.update(lags(realtime=5000), now=0.0)
    steady = flow_controller.update(lags(realtime=5000), now=1.0)
    assert flow_controller.update(lags(realtime=4000), now=2.0) is steady
    assert flow_controller.decision is steady


@pytest.mark.parametrize("start_congested", [False, True])
def test_lag_oscillating_between_thresholds_never_flaps(start_congested: bool) -> None:
    flow_controller = controller()
    start_lag = PAUSE_LAG + 1 if start_congested else 0
    expected = frozenset({BULK}) if start_congested else frozenset()
    assert flow_controller.update(lags(realtime=start_lag), now=0.0).paused == expected
    for tick in range(1, 200):
        lag = RESUME_LAG + 1 if tick % 2 else PAUSE_LAG
        decision = flow_controller.update(lags(realtime=lag), now=float(tick))
        assert decision.paused == expected
        assert not decision.changed
    assert flow_controller.pause_counts[BULK] == (1 if start_congested else 0)
    assert flow_controller.resume_counts[BULK] == 0


def test_decision_is_hashable_and_reports_no_change_by_default() -> None:
    empty = FlowDecision(paused=frozenset())
    assert not empty.changed
    assert hash(empty) == hash(FlowDecision(paused=frozenset()))
    assert empty.reasons == {}


# --- delay-based pause -----------------------------------------------------------------------

DELAYED = FlowSettings(pause_lag=PAUSE_LAG, resume_lag=RESUME_LAG, pause_delay_s=2.0)


def test_delay_above_pause_delay_with_backlog_pauses() -> None:
    decision = controller(flow_settings=DELAYED).update(
        {REALTIME: LaneLag(lag_messages=RESUME_LAG + 1, delay_s=2.5)}, now=0.0
    )
    assert decision.paused == {BULK}
    assert decision.reasons[BULK] == (
        f"realtime delay 2.5 s > pause_delay_s 2 with {RESUME_LAG + 1} messages waiting"
    )


def test_delay_exactly_at_pause_delay_does_not_pause() -> None:
    decision = controller(flow_settings=DELAYED).update(
        {REALTIME: LaneLag(lag_messages=50, delay_s=2.0)}, now=0.0
    )
    assert decision.paused == frozenset()


@pytest.mark.parametrize("drained_lag", [0, RESUME_LAG])
def test_delay_of_a_drained_lane_is_idleness_not_backlog(drained_lag: int) -> None:
    decision = controller(flow_settings=DELAYED).update(
        {REALTIME: LaneLag(lag_messages=drained_lag, delay_s=3600.0)}, now=0.0
    )
    assert decision.paused == frozenset()


def test_delay_is_ignored_when_pause_delay_is_disabled() -> None:
    decision = controller().update({REALTIME: LaneLag(lag_messages=50, delay_s=3600.0)}, now=0.0)
    assert decision.paused == frozenset()


def test_unknown_delay_does_not_pause() -> None:
    decision = controller(flow_settings=DELAYED).update(
        {REALTIME: LaneLag(lag_messages=50, delay_s=None)}, now=0.0
    )
    assert decision.paused == frozenset()


def test_delay_congestion_ends_only_when_drained() -> None:
    flow_controller = controller(flow_settings=DELAYED)
    flow_controller.update({REALTIME: LaneLag(lag_messages=50, delay_s=5.0)}, now=0.0)
    fresh_but_backlogged = flow_controller.update(
        {REALTIME: LaneLag(lag_messages=40, delay_s=0.1)}, now=1.0
    )
    assert fresh_but_backlogged.paused == {BULK}
    drained = flow_controller.update({REALTIME: LaneLag(lag_messages=RESUME_LAG)}, now=2.0)
    assert drained.paused == frozenset()


# --- unknown lag -----------------------------------------------------------------------------


def test_unknown_lag_at_start_keeps_everything_running() -> None:
    decision = controller().update(lags(realtime=None), now=0.0)
    assert decision.paused == frozenset()


def test_unknown_lag_keeps_a_pause() -> None:
    flow_controller = controller(flow_settings=DELAYED)
    flow_controller.update(lags(realtime=5000), now=0.0)
    for tick in range(1, 5):
        decision = flow_controller.update(
            {REALTIME: LaneLag(lag_messages=None, delay_s=0.0)}, now=float(tick)
        )
        assert decision.paused == {BULK}
        assert not decision.changed


def test_unknown_lag_with_huge_delay_does_not_pause() -> None:
    flow_controller = controller(flow_settings=DELAYED)
    decision = flow_controller.update(
        {REALTIME: LaneLag(lag_messages=None, delay_s=3600.0)}, now=0.0
    )
    assert decision.paused == frozenset()


def test_lane_missing_from_snapshot_counts_as_unknown() -> None:
    flow_controller = controller()
    flow_controller.update(lags(realtime=5000), now=0.0)
    assert flow_controller.update({}, now=1.0).paused == {BULK}
    assert flow_controller.update(lags(bulk=0), now=2.0).paused == {BULK}
    assert flow_controller.update(lags(realtime=0), now=3.0).paused == frozenset()
    assert flow_controller.update({}, now=4.0).paused == frozenset()


def test_lanes_unknown_to_the_controller_are_ignored() -> None:
    decision = controller().update(lags(elsewhere=10**9, realtime=0), now=0.0)
    assert decision.paused == frozenset()


# --- max_pause_s starvation guard and time accounting -----------------------------------------

GUARDED = FlowSettings(
    pause_lag=PAUSE_LAG, resume_lag=RESUME_LAG, max_pause_s=30.0, starvation_slice_s=5.0
)


def test_max_pause_grants_a_slice_then_pauses_again() -> None:
    flow_controller = controller(flow_settings=GUARDED)
    congested = lags(realtime=5000)
    assert flow_controller.update(congested, now=0.0).to_pause == {BULK}
    for tick in range(1, 30):
        assert flow_controller.update(congested, now=float(tick)).paused == {BULK}

    released = flow_controller.update(congested, now=30.0)
    assert released.to_resume == {BULK}
    assert released.paused == frozenset()
    assert released.in_starvation_slice == {BULK}
    assert released.reasons == {BULK: "starvation slice: paused 30.0 s >= max_pause_s 30"}
    assert released.congested == {REALTIME}
    for tick in range(31, 35):
        in_slice = flow_controller.update(congested, now=float(tick))
        assert in_slice.paused == frozenset()
        assert in_slice.in_starvation_slice == {BULK}
        assert not in_slice.changed

    repaused = flow_controller.update(congested, now=35.0)
    assert repaused.to_pause == {BULK}
    assert repaused.in_starvation_slice == frozenset()
    assert repaused.reasons == {BULK: "realtime lag 5000 > pause_lag 100"}
    # The next slice is due max_pause_s after the pause that followed the slice.
    assert flow_controller.update(congested, now=64.9).paused == {BULK}
    assert flow_controller.update(congested, now=65.0).to_resume == {BULK}
    assert flow_controller.slice_counts == {REALTIME: 0, BULK: 2}
    assert flow_controller.pause_counts[BULK] == 2
    assert flow_controller.resume_counts[BULK] == 2


def test_seconds_paused_follow_the_clock() -> None:
    flow_controller = controller(flow_settings=GUARDED)
    congested = lags(realtime=5000)
    flow_controller.update(congested, now=100.0)
    flow_controller.update(congested, now=112.5)
    assert flow_controller.paused_seconds == {REALTIME: 0.0, BULK: 12.5}
    flow_controller.update(congested, now=130.0)  # slice granted: paused 30 s so far
    assert flow_controller.paused_seconds[BULK] == 30.0
    flow_controller.update(congested, now=133.0)  # running in the slice: no paused time
    assert flow_controller.paused_seconds[BULK] == 30.0
    flow_controller.update(congested, now=135.0)  # slice over: paused again
    flow_controller.update(lags(realtime=0), now=140.0)  # drained: resumed after 5 s
    assert flow_controller.paused_seconds[BULK] == 35.0
    flow_controller.update(lags(realtime=0), now=200.0)
    assert flow_controller.paused_seconds[BULK] == 35.0


def test_clock_going_backwards_counts_as_no_time() -> None:
    flow_controller = controller()
    congested = lags(realtime=5000)
    flow_controller.update(congested, now=10.0)
    flow_controller.update(congested, now=5.0)
    assert flow_controller.paused_seconds[BULK] == 0.0
    flow_controller.update(congested, now=12.0)
    assert flow_controller.paused_seconds[BULK] == 2.0


def test_counter_views_are_read_only() -> None:
    flow_controller = controller()
    with pytest.raises(TypeError):
        flow_controller.pause_counts[BULK] = 5  # type: ignore[index]  # must be read-only


def test_slice_ends_when_the_higher_lane_drains_and_recongestion_pauses_at_once() -> None:
    flow_controller = controller(flow_settings=GUARDED)
    flow_controller.update(lags(realtime=5000), now=0.0)
    assert flow_controller.update(lags(realtime=5000), now=30.0).in_starvation_slice == {BULK}
    drained = flow_controller.update(lags(realtime=0), now=31.0)
    assert drained.in_starvation_slice == frozenset()
    assert drained.paused == frozenset()
    assert not drained.changed
    # The slice was not carried over: a new congestion pauses immediately.
    recongested = flow_controller.update(lags(realtime=5000), now=32.0)
    assert recongested.to_pause == {BULK}


def test_coarse_ticks_grant_the_slice_on_the_first_tick_past_max_pause() -> None:
    flow_controller = controller(flow_settings=GUARDED)
    congested = lags(realtime=5000)
    flow_controller.update(congested, now=0.0)
    assert flow_controller.update(congested, now=29.0).paused == {BULK}
    released = flow_controller.update(congested, now=47.0)
    assert released.to_resume == {BULK}
    assert released.reasons[BULK] == "starvation slice: paused 47.0 s >= max_pause_s 30"
    assert flow_controller.update(congested, now=52.0).to_pause == {BULK}


# --- min_bulk_share starvation guard ---------------------------------------------------------

SHARED = FlowSettings(
    pause_lag=PAUSE_LAG, resume_lag=RESUME_LAG, min_bulk_share=0.1, min_bulk_share_window_s=60.0
)


def run_ticks(
    flow_controller: FlowController, snapshot: Mapping[str, LaneLag], start: int, stop: int
) -> list[tuple[int, FlowDecision]]:
    """Update once a second over ``[start, stop)``; return the ticks that had transitions."""
    transitions = []
    for tick in range(start, stop):
        decision = flow_controller.update(snapshot, now=float(tick))
        if decision.changed:
            transitions.append((tick, decision))
    return transitions


def test_starved_lane_runs_its_share_at_the_end_of_each_window() -> None:
    flow_controller = controller(flow_settings=SHARED)
    transitions = run_ticks(flow_controller, lags(realtime=5000), 0, 180)
    assert [(tick, decision.to_pause, decision.to_resume) for tick, decision in transitions] == [
        (0, {BULK}, frozenset()),
        (54, frozenset(), {BULK}),
        (60, {BULK}, frozenset()),
        (114, frozenset(), {BULK}),
        (120, {BULK}, frozenset()),
        (174, frozenset(), {BULK}),
    ]
    share_slice = transitions[1][1]
    assert share_slice.in_starvation_slice == {BULK}
    assert share_slice.reasons == {BULK: "minimum share: ran 0.0 s of 6 s owed in this 60 s window"}
    assert flow_controller.paused_seconds[BULK] == pytest.approx(3 * 54)


def test_lane_that_already_ran_its_share_gets_no_share_slice() -> None:
    flow_controller = controller(flow_settings=SHARED)
    assert run_ticks(flow_controller, lags(realtime=0), 0, 10) == []
    transitions = run_ticks(flow_controller, lags(realtime=5000), 10, 60)
    assert [tick for tick, _ in transitions] == [10]
    # The next window owes the full share again.
    later = run_ticks(flow_controller, lags(realtime=5000), 60, 120)
    assert [tick for tick, _ in later] == [114]


def test_starved_lane_is_resumed_once_the_time_left_equals_the_time_owed() -> None:
    flow_controller = controller(flow_settings=SHARED)
    flow_controller.update(lags(realtime=0), now=0.0)
    flow_controller.update(lags(realtime=5000), now=2.0)  # ran 2 s of the 6 s owed: 4 s left
    assert flow_controller.update(lags(realtime=5000), now=55.9).paused == {BULK}
    decision = flow_controller.update(lags(realtime=5000), now=56.0)
    assert decision.to_resume == {BULK}
    assert decision.reasons == {BULK: "minimum share: ran 2.0 s of 6 s owed in this 60 s window"}


def test_share_slice_counts_the_interval_across_a_window_boundary() -> None:
    flow_controller = controller(flow_settings=SHARED)
    flow_controller.update(lags(realtime=0), now=0.0)
    # One coarse tick from 0 to 130 skips a whole window; the lane ran 10 s of the current one.
    flow_controller.update(lags(realtime=5000), now=130.0)
    assert flow_controller.paused == {BULK}
    assert flow_controller.update(lags(realtime=5000), now=179.0).paused == {BULK}
    assert flow_controller.update(lags(realtime=5000), now=180.0).paused == {BULK}


def test_both_guards_together() -> None:
    flow_controller = controller(
        flow_settings=FlowSettings(
            pause_lag=PAUSE_LAG,
            max_pause_s=20.0,
            starvation_slice_s=2.0,
            min_bulk_share=0.5,
            min_bulk_share_window_s=60.0,
        )
    )
    congested = lags(realtime=5000)
    run_ticks(flow_controller, congested, 0, 20)
    first = flow_controller.update(congested, now=20.0)
    assert first.to_resume == {BULK}
    assert first.reasons[BULK].startswith("starvation slice")
    assert flow_controller.update(congested, now=22.0).to_pause == {BULK}
    assert flow_controller.update(congested, now=42.0).to_resume == {BULK}  # max_pause_s again
    # At 44 the max_pause_s slice ends, the lane has run 4 s of the 30 s owed with 16 s left:
    # the share guard takes over without a pause in between.
    handover = flow_controller.update(congested, now=44.0)
    assert not handover.changed
    assert handover.in_starvation_slice == {BULK}
    assert handover.reasons[BULK] == "minimum share: ran 4.0 s of 30 s owed in this 60 s window"
    assert flow_controller.update(congested, now=60.0).to_pause == {BULK}
    assert flow_controller.slice_counts[BULK] == 3


# --- N lanes ---------------------------------------------------------------------------------


def test_three_lanes_top_congestion_pauses_both_lower_lanes() -> None:
    decision = controller(THREE_LANES).update(lags(realtime=5000), now=0.0)
    assert decision.paused == {"standard", BULK}
    assert decision.to_pause == {"standard", BULK}
    assert decision.reasons == {
        "standard": "realtime lag 5000 > pause_lag 100",
        BULK: "realtime lag 5000 > pause_lag 100",
    }


def test_three_lanes_middle_congestion_pauses_only_the_bottom() -> None:
    decision = controller(THREE_LANES).update(lags(realtime=0, standard=5000), now=0.0)
    assert decision.paused == {BULK}
    assert decision.congested == {"standard"}


def test_paused_middle_lane_still_holds_the_bottom_lane_back() -> None:
    flow_controller = controller(THREE_LANES)
    flow_controller.update(lags(realtime=5000, standard=0), now=0.0)
    # The middle lane's backlog grows while it is paused.
    grown = flow_controller.update(lags(realtime=5000, standard=5000), now=1.0)
    assert grown.paused == {"standard", BULK}
    assert grown.congested == {REALTIME, "standard"}
    # Realtime drains: the middle lane resumes, the bottom lane stays paused without a flap.
    drained = flow_controller.update(lags(realtime=0, standard=5000), now=2.0)
    assert drained.to_resume == {"standard"}
    assert drained.to_pause == frozenset()
    assert drained.paused == {BULK}
    assert drained.reasons == {BULK: "standard lag 5000 > pause_lag 100"}
    done = flow_controller.update(lags(realtime=0, standard=0), now=3.0)
    assert done.to_resume == {BULK}
    assert done.paused == frozenset()
    assert flow_controller.pause_counts == {REALTIME: 0, "standard": 1, BULK: 1}


def test_four_lanes_cascade() -> None:
    flow_controller = controller(FOUR_LANES)
    lane1, lane2, lane3 = FOUR_LANES[1:]
    step1 = flow_controller.update(lags(lane0=0, lane1=0, lane2=5000, lane3=5000), now=0.0)
    assert step1.paused == {lane3}
    step2 = flow_controller.update(lags(lane1=5000), now=1.0)
    assert step2.to_pause == {lane2}
    assert step2.paused == {lane2, lane3}
    assert step2.reasons[lane3] == "lane1 lag 5000 > pause_lag 100"
    step3 = flow_controller.update(lags(lane0=5000), now=2.0)
    assert step3.to_pause == {lane1}
    assert step3.paused == {lane1, lane2, lane3}
    assert step3.reasons == dict.fromkeys((lane1, lane2, lane3), "lane0 lag 5000 > pause_lag 100")
    step4 = flow_controller.update(lags(lane0=0, lane1=0), now=3.0)
    assert step4.to_resume == {lane1, lane2}
    assert step4.paused == {lane3}
    step5 = flow_controller.update(lags(lane2=RESUME_LAG), now=4.0)
    assert step5.to_resume == {lane3}
    assert step5.paused == frozenset()


def test_four_lanes_each_paused_lane_gets_its_own_starvation_slice() -> None:
    flow_controller = controller(FOUR_LANES, GUARDED)
    flow_controller.update(lags(lane0=0, lane1=0, lane2=5000), now=0.0)  # lane3 paused at 0
    flow_controller.update(lags(lane0=5000), now=10.0)  # lane1, lane2 paused at 10
    at_30 = flow_controller.update({}, now=30.0)
    assert at_30.in_starvation_slice == {"lane3"}
    assert at_30.paused == {"lane1", "lane2"}
    at_40 = flow_controller.update({}, now=40.0)
    assert at_40.to_resume == {"lane1", "lane2"}
    assert at_40.to_pause == {"lane3"}


# --- scopes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "owns_top_lane_partition", "expected"),
    [
        ("local", True, "local"),
        ("local", False, "local"),
        ("group", True, "group"),
        ("group", False, "group"),
        ("auto", True, "local"),
        ("auto", False, "group"),
    ],
)
def test_effective_scope(scope: Scope, owns_top_lane_partition: bool, expected: str) -> None:
    assert effective_scope(scope, owns_top_lane_partition) == expected


def test_unknown_scope_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cluster"):
        effective_scope("cluster", owns_top_lane_partition=True)  # type: ignore[arg-type]  # bad on purpose


# --- lag arithmetic --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("low", "high", "position", "committed", "reset", "expected"),
    [
        # Plain position.
        (0, 100, 40, 10, "earliest", 60),
        (20, 100, 100, 100, "earliest", 0),
        (0, 0, 0, OFFSET_INVALID, "earliest", 0),
        # Position not known yet: the committed offset is where reading starts.
        (0, 100, OFFSET_INVALID, 70, "earliest", 30),
        (0, 100, OFFSET_INVALID, 70, "latest", 30),
        # Neither known: auto.offset.reset decides.
        (20, 100, OFFSET_INVALID, OFFSET_INVALID, "earliest", 80),
        (20, 100, OFFSET_INVALID, OFFSET_INVALID, "latest", 0),
        # Other negative logical offsets count as "not known" too.
        (20, 100, -1, -2, "earliest", 80),
        (20, 100, -1000, OFFSET_INVALID, "latest", 0),
        # Offsets below the low watermark were deleted by retention: out of range, reset.
        (50, 100, 10, 10, "earliest", 50),
        (50, 100, 10, 10, "latest", 0),
        (50, 100, OFFSET_INVALID, 10, "earliest", 50),
        # Past the high watermark (stale cached watermarks): never negative.
        (0, 100, 150, 10, "earliest", 0),
        (0, 100, OFFSET_INVALID, 150, "earliest", 0),
        # Unknown or contradictory watermarks.
        (OFFSET_INVALID, 100, 40, 10, "earliest", None),
        (0, OFFSET_INVALID, 40, 10, "earliest", None),
        (-1, -1, 40, 10, "earliest", None),
        (100, 50, 60, 60, "earliest", None),
    ],
)
def test_partition_lag(
    low: int,
    high: int,
    position: int,
    committed: int,
    reset: flow.OffsetReset,
    expected: int | None,
) -> None:
    assert (
        partition_lag(low=low, high=high, position=position, committed=committed, reset=reset)
        == expected
    )


def test_partition_lag_resets_to_earliest_by_default() -> None:
    assert partition_lag(low=5, high=25, position=OFFSET_INVALID, committed=OFFSET_INVALID) == 20


@given(
    low=st.integers(-1001, 10**6),
    span=st.integers(-10, 10**6),
    position=st.integers(-1001, 2 * 10**6),
    committed=st.integers(-1001, 2 * 10**6),
    reset=st.sampled_from(["earliest", "latest"]),
)
def test_partition_lag_is_none_or_within_the_retained_log(
    low: int, span: int, position: int, committed: int, reset: flow.OffsetReset
) -> None:
    high = low + span
    lag = partition_lag(low=low, high=high, position=position, committed=committed, reset=reset)
    if low < 0 or high < 0 or span < 0:
        assert lag is None
    else:
        assert lag is not None
        assert 0 <= lag <= high - low


@pytest.mark.parametrize(
    ("partition_lags", "expected"),
    [
        ([], None),
        ([None], None),
        ([None, None], None),
        ([0], 0),
        ([3, 4, 5], 12),
        ([3, None, 5], 8),
        ([None, 0], 0),
    ],
)
def test_lane_lag(partition_lags: list[int | None], expected: int | None) -> None:
    assert lane_lag(partition_lags) == expected
    assert lane_lag(iter(partition_lags)) == expected


# --- purity ----------------------------------------------------------------------------------


def test_flow_module_imports_nothing_that_does_io() -> None:
    source = Path(flow.__file__).read_text(encoding="utf-8")
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            imported.add(node.module.split(".")[0])
    allowed = {"__future__", "collections", "dataclasses", "math", "pydantic", "streamproc"}
    allowed |= {"types", "typing"}
    assert imported <= allowed


# --- properties over random snapshot sequences -----------------------------------------------

lane_lag_values = st.builds(
    LaneLag,
    lag_messages=st.one_of(st.none(), st.integers(0, 60)),
    delay_s=st.one_of(st.none(), st.floats(0.0, 10.0)),
)


@st.composite
def flow_settings(draw: st.DrawFn, *, guards: bool = True) -> FlowSettings:
    pause_lag = draw(st.integers(1, 40))
    return FlowSettings(
        pause_lag=pause_lag,
        resume_lag=draw(st.integers(0, pause_lag - 1)),
        pause_delay_s=draw(st.one_of(st.none(), st.floats(0.1, 5.0))),
        max_pause_s=draw(st.one_of(st.none(), st.floats(0.5, 20.0))) if guards else None,
        starvation_slice_s=draw(st.floats(0.1, 10.0)),
        min_bulk_share=draw(st.one_of(st.none(), st.floats(0.05, 0.9))) if guards else None,
        min_bulk_share_window_s=draw(st.floats(1.0, 60.0)),
    )


@st.composite
def scenarios(
    draw: st.DrawFn, *, guards: bool = True
) -> tuple[FlowSettings, tuple[str, ...], list[tuple[float, dict[str, LaneLag]]]]:
    """Settings, lanes, and ticks of (seconds since the previous tick, snapshot)."""
    lane_names = FOUR_LANES[: draw(st.integers(2, 4))]
    snapshot = st.fixed_dictionaries({}, optional=dict.fromkeys(lane_names, lane_lag_values))
    ticks = draw(st.lists(st.tuples(st.floats(0.0, 10.0), snapshot), max_size=30))
    return draw(flow_settings(guards=guards)), lane_names, ticks


def over_pause_threshold(lane_lag_now: LaneLag, flow_settings: FlowSettings) -> bool:
    """The documented congestion trigger, written independently of the controller."""
    lag = lane_lag_now.lag_messages
    if lag is None:
        return False
    delay = lane_lag_now.delay_s
    delay_limit = flow_settings.pause_delay_s
    return lag > flow_settings.pause_lag or (
        delay_limit is not None
        and delay is not None
        and delay > delay_limit
        and lag > flow_settings.resume_lag
    )


# Enough examples to hit every rule many times while keeping the whole file well under 2 s.
PROPERTY_SETTINGS = settings(max_examples=100, deadline=None)


@PROPERTY_SETTINGS
@given(scenarios())
def test_property_decisions_are_consistent(
    scenario: tuple[FlowSettings, tuple[str, ...], list[tuple[float, dict[str, LaneLag]]]],
) -> None:
    flow_settings_drawn, lane_names, ticks = scenario
    flow_controller = FlowController(lane_names, flow_settings_drawn)
    previous_paused: frozenset[str] = frozenset()
    paused_since: dict[str, float] = {}
    expected_paused_seconds = dict.fromkeys(lane_names, 0.0)
    now = 1000.0
    for elapsed, snapshot in ticks:
        for lane in previous_paused:
            expected_paused_seconds[lane] += elapsed
        now += elapsed
        decision = flow_controller.update(snapshot, now)

        # (a) The top lane is never paused nor needs a slice.
        assert lane_names[0] not in decision.paused
        assert lane_names[0] not in decision.in_starvation_slice
        # (b) No lower lane runs while a more urgent lane is over its threshold (or still
        # congested) unless it is in a starvation slice.
        for rank, lane in enumerate(lane_names):
            above = lane_names[:rank]
            over = any(
                over_pause_threshold(snapshot.get(higher, LaneLag()), flow_settings_drawn)
                for higher in above
            )
            blocked = any(higher in decision.congested for higher in above)
            assert blocked >= over
            if blocked:
                assert (lane in decision.paused) != (lane in decision.in_starvation_slice)
            else:
                assert lane not in decision.paused
                assert lane not in decision.in_starvation_slice
        # (c) Transitions are exactly the difference between consecutive paused sets.
        assert decision.to_pause == decision.paused - previous_paused
        assert decision.to_resume == previous_paused - decision.paused
        assert flow_controller.paused == decision.paused
        # Every paused or sliced lane says why.
        assert set(decision.reasons) == decision.paused | decision.in_starvation_slice
        # The ceiling on continuous pause holds at every tick.
        for lane in decision.to_pause:
            paused_since[lane] = now
        if flow_settings_drawn.max_pause_s is not None:
            for lane in decision.paused:
                assert now - paused_since[lane] < flow_settings_drawn.max_pause_s
        if flow_settings_drawn.max_pause_s is None and flow_settings_drawn.min_bulk_share is None:
            assert decision.in_starvation_slice == frozenset()
        previous_paused = decision.paused

    for lane in lane_names:
        assert flow_controller.paused_seconds[lane] == pytest.approx(expected_paused_seconds[lane])
    assert sum(flow_controller.pause_counts.values()) - sum(
        flow_controller.resume_counts.values()
    ) == len(previous_paused)


@PROPERTY_SETTINGS
@given(
    band_settings=flow_settings(guards=False),
    lane_count=st.integers(2, 4),
    starts_congested=st.lists(st.booleans(), min_size=4, max_size=4),
    ticks=st.lists(
        st.tuples(st.floats(0.0, 100.0), st.lists(st.integers(0, 10**6), min_size=4, max_size=4)),
        min_size=1,
        max_size=30,
    ),
)
def test_property_lag_between_thresholds_never_changes_state(
    band_settings: FlowSettings,
    lane_count: int,
    starts_congested: list[bool],
    ticks: list[tuple[float, list[int]]],
) -> None:
    lane_names = FOUR_LANES[:lane_count]
    flow_controller = FlowController(lane_names, band_settings)
    # Put each lane on either side of the hysteresis band first.
    initial = {
        lane: LaneLag(band_settings.pause_lag + 1 if congested else band_settings.resume_lag)
        for lane, congested in zip(lane_names, starts_congested, strict=False)
    }
    settled = flow_controller.update(initial, now=0.0)
    # Raw draws are folded into the band: above resume_lag and at most pause_lag. Delay 0 is below
    # any pause_delay_s, so only the message lag matters.
    band_width = band_settings.pause_lag - band_settings.resume_lag
    now = 0.0
    for elapsed, raw_lags in ticks:
        now += elapsed
        snapshot = {
            lane: LaneLag(band_settings.resume_lag + 1 + raw % band_width, delay_s=0.0)
            for lane, raw in zip(lane_names, raw_lags, strict=False)
        }
        decision = flow_controller.update(snapshot, now)
        assert decision.paused == settled.paused
        assert decision.congested == settled.congested
        assert not decision.changed

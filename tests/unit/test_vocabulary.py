"""The core's enums (jobs/model.py) are the contract's enums, stored without their prefix."""

from __future__ import annotations

from enum import StrEnum

import pytest
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from jobs.model import TERMINAL_STATES, ErrorCode, EventType, Phase, Priority, State, WebhookState
from longhaul.download.v1 import download_pb2 as pb


@pytest.mark.parametrize(
    ("ours", "contract", "prefix", "not_stored"),
    [
        (State, pb.JobState, "JOB_STATE_", set()),
        (Phase, pb.JobPhase, "JOB_PHASE_", set()),
        (Priority, pb.Priority, "PRIORITY_", set()),
        (ErrorCode, pb.JobErrorCode, "JOB_ERROR_CODE_", set()),
        (WebhookState, pb.WebhookState, "WEBHOOK_STATE_", set()),
        # Heartbeats and errors exist only on the wire, never in a job's history.
        (EventType, pb.EventType, "EVENT_TYPE_", {"HEARTBEAT", "ERROR"}),
    ],
)
def test_each_stored_value_is_a_contract_value(
    ours: type[StrEnum], contract: EnumTypeWrapper, prefix: str, not_stored: set[str]
) -> None:
    names = {name.removeprefix(prefix) for name in contract.keys()} - {"UNSPECIFIED"}
    assert {member.value for member in ours} == names - not_stored


def test_the_terminal_states_are_the_ones_the_contract_marks() -> None:
    assert TERMINAL_STATES == {State.COMPLETED, State.FAILED, State.CANCELLED, State.EXPIRED}

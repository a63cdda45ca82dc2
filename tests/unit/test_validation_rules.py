"""Validation rules in isolation (the gRPC tests check the same rules through the wire)."""

from __future__ import annotations

import pytest

from jobs.model import Priority
from longhaul.download.v1 import download_pb2 as pb
from server import validation
from server.validation import InvalidRequest


def test_bounds_are_inclusive() -> None:
    ids, request_id, priority = validation.initiate(pb.InitiateDownloadRequest(file_ids=[10_000, 100_000_000]))
    assert ids == [10_000, 100_000_000] and request_id == "" and priority == Priority.NORMAL


def test_violations_stop_after_ten() -> None:
    with pytest.raises(InvalidRequest) as error:
        validation.initiate(pb.InitiateDownloadRequest(file_ids=[1] * 500))
    assert len(error.value.violations) == 10


@pytest.mark.parametrize("value", ["7c65afa7-2378-44ea-bf71-1a4be622d5d2"])
def test_job_id_accepts_the_ids_the_service_makes(value: str) -> None:
    assert validation.job_id(value) == value


def test_page_defaults() -> None:
    assert validation.page(pb.ListDownloadsRequest()) == (validation.DEFAULT_PAGE_SIZE, "")

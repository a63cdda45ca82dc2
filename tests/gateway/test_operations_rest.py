"""google.longrunning.Operations through Envoy: transcoded from the HTTP bindings of
google/longrunning/operations.proto, on the same port as everything else."""

from __future__ import annotations

from tests.conftest import MISSING_IDS, SMALL_IDS
from tests.web_clients import rest, sse


def start(gateway, file_ids: list[int]) -> str:
    _, _, created = rest(gateway.port, "POST", "/v1/download/initiate", {"file_ids": file_ids})
    return created["job"]["jobId"]


def test_operations_over_rest(gateway) -> None:
    job_id = start(gateway, SMALL_IDS[:2])
    status, _, running = rest(gateway.port, "GET", f"/v1/operations/{job_id}")
    assert status == 200 and running["name"] == f"operations/{job_id}" and not running.get("done")
    assert running["metadata"]["@type"] == "type.googleapis.com/longhaul.download.v1.Job"

    sse(gateway.port, f"/v1/download/{job_id}/events")  # until the job ends
    status, _, done = rest(gateway.port, "GET", f"/v1/operations/{job_id}")
    assert status == 200 and done["done"] is True
    assert done["response"]["@type"] == "type.googleapis.com/longhaul.download.v1.DownloadResult"
    assert done["response"]["downloadUrl"].startswith("http://127.0.0.1:")

    status, _, listed = rest(gateway.port, "GET", "/v1/operations?page_size=50")
    assert status == 200 and f"operations/{job_id}" in [op["name"] for op in listed["operations"]]

    status, _, _ = rest(gateway.port, "DELETE", f"/v1/operations/{job_id}")
    assert status == 200
    status, _, gone = rest(gateway.port, "GET", f"/v1/operations/{job_id}")
    assert status == 404 and gone["message"]


def test_cancel_and_errors_over_rest(gateway) -> None:
    job_id = start(gateway, SMALL_IDS[2:4])
    status, _, _ = rest(gateway.port, "POST", f"/v1/operations/{job_id}:cancel", {})
    assert status == 200
    _, _, cancelled = rest(gateway.port, "GET", f"/v1/operations/{job_id}")
    assert cancelled["done"] is True and cancelled["error"]["code"] == 1  # google.rpc.Code.CANCELLED

    failed_id = start(gateway, MISSING_IDS)
    sse(gateway.port, f"/v1/download/{failed_id}/events")
    _, _, failed = rest(gateway.port, "GET", f"/v1/operations/{failed_id}")
    assert failed["error"]["code"] == 5 and failed["error"]["details"][0]["reason"] == "ALL_FILES_MISSING"

    status, _, bad = rest(gateway.port, "GET", "/v1/operations/not-a-job")
    assert status == 400 and bad["message"].startswith("name:")
    status, _, bad = rest(gateway.port, "GET", "/v1/operations?filter=done")
    assert status == 400 and bad["message"].startswith("filter:")

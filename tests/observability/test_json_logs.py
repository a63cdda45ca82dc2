"""LOG_FORMAT=json in real server and worker processes: every line is JSON, and the lines about a job
name the job and its tenant."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from longhaul_client import Client, JobCancelled
from tests.conftest import SMALL_IDS
from tests.credentials import TENANT, TOKEN
from tests.gateway.conftest import start_gateway, stop_gateway


def lines(path: Path) -> list[dict]:
    return [json.loads(text) for text in path.read_text().splitlines() if text]


def test_the_lines_about_a_job_carry_its_id_and_tenant(base_settings, work_dir: Path) -> None:
    os.environ["LOG_FORMAT"] = "json"  # the processes inherit it
    try:
        gateway = start_gateway(base_settings, work_dir, delay_min_ms=5_000, delay_max_ms=5_000)
    finally:
        del os.environ["LOG_FORMAT"]
    try:
        worker_log = gateway.worker.log_path
        with Client(gateway.address, token=TOKEN) as client:
            job = client.initiate(SMALL_IDS[:2])
            deadline = time.monotonic() + 20
            while not client.status(job.job_id).worker:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            client.cancel(job.job_id)
            try:
                client.wait(job.job_id)
            except JobCancelled:
                pass
        deadline = time.monotonic() + 10
        while not any("cancelled while running" in line["message"] for line in lines(worker_log)):
            assert time.monotonic() < deadline, worker_log.read_text()
            time.sleep(0.05)
    finally:
        stop_gateway(gateway)
    cancelled = next(line for line in lines(worker_log) if "cancelled while running" in line["message"])
    assert (cancelled["job_id"], cancelled["tenant"], cancelled["process"]) == (job.job_id, TENANT, "worker")
    server_log = work_dir / "logs" / f"server-{gateway.settings.redis_prefix}-0.log"
    assert any(line["message"].startswith("serving gRPC") for line in lines(server_log))  # and every line parsed

"""The `longhaul` command, run as a user runs it, through a real Envoy in front of a server and a
worker running as processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
import zipfile

import pytest

from devstack.processes import free_port, port_open
from longhaul.download.v1 import download_pb2 as pb
from longhaul_client import Client
from tests.conftest import MISSING_IDS, SMALL_IDS
from tests.credentials import TOKEN
from tests.gateway.conftest import start_gateway, stop_gateway, wait_healthy
from tests.web_clients import rest

LONGHAUL = [sys.executable, "-m", "longhaul_client.cli"]
ENV = {**os.environ, "LONGHAUL_TOKEN": TOKEN}


def longhaul(gateway, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LONGHAUL, *args, "--target", gateway.address], capture_output=True, text=True, timeout=timeout_s, env=ENV
    )


@pytest.fixture(scope="module")
def slow_gateway(base_settings, work_dir):
    """Jobs of 5 s: long enough to interrupt and to drop streams under."""
    started = start_gateway(base_settings, work_dir, delay_min_ms=5_000, delay_max_ms=5_000)
    yield started
    stop_gateway(started)


def test_download_watches_then_saves_the_archive(slow_gateway, tmp_path) -> None:
    out = tmp_path / "out.zip"
    result = longhaul(slow_gateway, "download", *map(str, SMALL_IDS[:3]), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "started; if interrupted, resume with: longhaul watch" in result.stderr
    assert sorted(zipfile.ZipFile(out).namelist()) == sorted(f"{i}.zip" for i in SMALL_IDS[:3])
    # Off a terminal the bars are drawn once, at the end: the job at 100 %, then the file.
    assert "100.0 %" in result.stderr and "3/3 files" in result.stderr and "out.zip" in result.stderr


def test_json_output_is_one_document_and_the_exit_code_says_how_it_ended(slow_gateway, tmp_path) -> None:
    out = tmp_path / "j.zip"
    result = longhaul(slow_gateway, "download", str(SMALL_IDS[0]), "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["job"]["state"] == "JOB_STATE_COMPLETED" and document["file"] == str(out)
    job_id = document["job"]["jobId"]

    status = json.loads(longhaul(slow_gateway, "status", job_id, "--json").stdout)
    assert status["job"]["result"]["sha256"] == document["job"]["result"]["sha256"]
    _, _, over_rest = rest(slow_gateway.port, "GET", f"/v1/download/status/{job_id}")
    assert set(status["job"]) == set(over_rest["job"]), "the same field names as the REST API"
    assert set(status["job"]["result"]["files"][0]) == set(over_rest["job"]["result"]["files"][0])
    listed = longhaul(slow_gateway, "list", "--json")
    assert job_id in [j["jobId"] for j in json.loads(listed.stdout)["jobs"]]
    assert longhaul(slow_gateway, "check", str(SMALL_IDS[0])).returncode == 0
    assert longhaul(slow_gateway, "check", str(MISSING_IDS[0])).returncode == 3


def test_a_reader_that_leaves_early_is_no_error(slow_gateway) -> None:
    with Client(slow_gateway.address, token=TOKEN) as client:
        client.initiate(SMALL_IDS[:1])  # something to list
    command = f"set -o pipefail; {' '.join(LONGHAUL)} list --target {slow_gateway.address} | true"
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60, env=ENV)
    assert (result.returncode, result.stderr) == (0, "")


def test_a_failed_job_exits_1_with_the_reason(slow_gateway) -> None:
    result = longhaul(slow_gateway, "download", *map(str, MISSING_IDS))
    assert result.returncode == 1
    assert "ALL_FILES_MISSING" in result.stderr and "none of the 2 requested files exist" in result.stderr


def test_bad_input_and_unknown_jobs_have_their_own_exit_codes(slow_gateway) -> None:
    bad = longhaul(slow_gateway, "status", "not-a-job-id")
    assert bad.returncode == 2 and "INVALID_ARGUMENT" in bad.stderr
    unknown = longhaul(slow_gateway, "status", str(uuid.uuid4()))
    assert unknown.returncode == 3 and "NOT_FOUND" in unknown.stderr
    out_of_range = longhaul(slow_gateway, "download", "5")
    assert out_of_range.returncode == 2 and "file_ids" in out_of_range.stderr
    nobody = subprocess.run([*LONGHAUL, "status", str(uuid.uuid4()), "--target", f"127.0.0.1:{free_port()}"],
                            capture_output=True, text=True, timeout=60)
    assert nobody.returncode == 5 and "UNAVAILABLE" in nobody.stderr
    no_key = subprocess.run([*LONGHAUL, "list", "--target", slow_gateway.address], capture_output=True, text=True,
                            timeout=60, env={k: v for k, v in os.environ.items() if k != "LONGHAUL_TOKEN"})
    assert no_key.returncode == 6 and "UNAUTHENTICATED" in no_key.stderr and "no credentials" in no_key.stderr


def _start_download(gateway, *extra: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [*LONGHAUL, "download", *map(str, SMALL_IDS[:2]), "--no-file", "--target", gateway.address, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
        # As from a terminal: a test run started in the background (`make test &`) ignores SIGINT,
        # and its children would inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    first_line = proc.stderr.readline()
    assert first_line.startswith("job "), first_line
    return proc, first_line.split()[1]


@pytest.mark.parametrize("cancel", [False, True], ids=["keeps-running", "cancel-on-interrupt"])
def test_ctrl_c_leaves_the_job_running_unless_asked(slow_gateway, cancel: bool) -> None:
    proc, job_id = _start_download(slow_gateway, *(["--cancel-on-interrupt"] if cancel else []))
    with Client(slow_gateway.address, token=TOKEN) as client:
        deadline = time.monotonic() + 20
        while client.status(job_id).state != pb.JOB_STATE_RUNNING:  # interrupted mid-job
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130
    with Client(slow_gateway.address, token=TOKEN) as client:
        if cancel:
            assert f"job {job_id} cancelled" in stderr
            assert client.status(job_id).state == pb.JOB_STATE_CANCELLED
        else:
            assert f"resume with: longhaul watch {job_id}" in stderr
            assert client.wait(job_id).state == pb.JOB_STATE_COMPLETED


def test_watch_resumes_across_an_envoy_restart_without_a_gap(slow_gateway) -> None:
    with Client(slow_gateway.address, token=TOKEN) as client:
        job_id = client.initiate(SMALL_IDS[:4]).job_id
    watch = subprocess.Popen([*LONGHAUL, "watch", job_id, "--json", "--target", slow_gateway.address],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    first = json.loads(watch.stdout.readline())
    # Envoy goes away mid-job and comes back on the same port: the stream drops, the command resumes.
    slow_gateway.envoy.kill()
    time.sleep(0.5)  # away for a moment, as in a restart
    slow_gateway.envoy.start()
    slow_gateway.envoy.wait_until(lambda: port_open(slow_gateway.port), 30, "listening")
    rest, stderr = watch.communicate(timeout=60)
    assert watch.returncode == 0, stderr
    events = [first] + [json.loads(line) for line in rest.splitlines()]
    seqs = [int(e["seq"]) for e in events]
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), seqs
    assert events[-1]["job"]["state"] == "JOB_STATE_COMPLETED"
    wait_healthy(slow_gateway.port)

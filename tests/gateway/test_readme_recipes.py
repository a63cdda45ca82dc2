"""Every grpcurl, curl and `longhaul` line and every Python snippet of the README, run as written (ports
and job ids filled in) against a real Envoy and, for grpcurl, the server directly: the README cannot go
stale."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.services import ROOT
from longhaul.admin.v1 import admin_pb2 as apb
from longhaul.admin.v1 import admin_pb2_grpc as apb_grpc
from longhaul.download.v1 import download_pb2 as pb
from longhaul_client import Client, JobFailed
from tests import credentials
from tests.conftest import MISSING_IDS, SMALL_IDS
from tests.credentials import OPERATOR_TOKEN, TOKEN, WEBHOOK_SECRET
from tests.e2e.test_run_command import GRPCURL
from tests.webhook_receiver import Receiver

README = (ROOT / "README.md").read_text()
# The venv's commands (longhaul), as for a user who activated it or installed the client.
ENV = {
    **os.environ,
    "LONGHAUL_TOKEN": TOKEN,
    "LONGHAUL_OPERATOR_TOKEN": OPERATOR_TOKEN,
    "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
}


def recipes(kind: str, block_name: str = "") -> list[str]:
    """The `kind` command lines of the README's recipes block `block_name` (by default `kind`'s own)."""
    block = README.split(f"<!-- recipes: {block_name or kind} -->\n```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.startswith(f"{kind} ")]


def run(command: str, cwd, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60, cwd=cwd, env=ENV | env)


class Jobs:
    """Job ids for the recipes: a finished one to watch and fetch, a fresh running one to cancel or
    delete, a cancelled one to retry, a failed one for the operator's dead-letter lines."""

    def __init__(self, address: str) -> None:
        self.address = address
        with Client(address, token=TOKEN) as client:
            self.finished = client.wait(client.initiate(SMALL_IDS[:2]).job_id).job_id

    def fill(self, command: str, target: str) -> str:
        if "JOB_ID" in command:
            job_id = self.finished
            if "OPERATOR" in command:
                with Client(self.address, token=TOKEN) as client, contextlib.suppress(JobFailed):
                    job_id = client.initiate(MISSING_IDS).job_id
                    client.wait(job_id)  # a dead letter
            elif any(verb in command for verb in ("Retry", "retry")):
                with Client(self.address, token=TOKEN) as client:
                    job_id = client.cancel(client.initiate(SMALL_IDS[2:4]).job_id).job_id
            elif any(verb in command for verb in ("Cancel", "cancel", "Delete", "DELETE")):
                with Client(self.address, token=TOKEN) as client:
                    job_id = client.initiate(SMALL_IDS[2:4]).job_id
            command = command.replace("JOB_ID", job_id)
        return self.address_filled(command, target)

    @staticmethod
    def address_filled(command: str, target: str) -> str:
        return command.replace("localhost:8080", target).replace("127.0.0.1:8080", target)


@pytest.mark.parametrize("direct", [False, True], ids=["through-envoy", "direct"])
def test_every_grpcurl_recipe_works(gateway, tmp_path, direct: bool) -> None:
    target = gateway.server.env["GRPC_LISTEN"] if direct else gateway.address
    lines = recipes("grpcurl")
    assert len(lines) >= 13
    jobs = Jobs(gateway.address)
    for line in lines:
        result = run(re.sub(r"^grpcurl ", f"{GRPCURL} ", jobs.fill(line, target)), tmp_path)
        assert result.returncode == 0, f"{line}\n{result.stderr}"
        assert result.stdout.strip(), line


def test_every_curl_recipe_works(gateway, tmp_path) -> None:
    lines = recipes("curl")
    assert len(lines) >= 13
    jobs = Jobs(gateway.address)
    for line in lines:
        # Print the HTTP status after the body, to check it.
        result = run(re.sub(r"^curl ", "curl -w '\\n%{http_code}' ", jobs.fill(line, gateway.address)), tmp_path)
        status = result.stdout.rsplit("\n", 1)[-1]
        assert result.returncode == 0 and status.startswith("2"), f"{line}\n{status}\n{result.stdout[:500]}"
    assert (tmp_path / "out.zip").stat().st_size > 0


def test_every_operator_recipe_works(gateway, tmp_path) -> None:
    lines = recipes("grpcurl", "operator") + recipes("curl", "operator")
    assert len(lines) == 14
    jobs = Jobs(gateway.address)
    try:
        for line in lines:
            command = jobs.fill(line, gateway.address)
            if line.startswith("curl "):
                command = re.sub(r"^curl ", "curl -w '\\n%{http_code}' ", command)
            else:
                command = re.sub(r"^grpcurl ", f"{GRPCURL} ", command)
            result = run(command, tmp_path)
            assert result.returncode == 0 and result.stdout.strip(), f"{line}\n{result.stderr}"
            if line.startswith("curl "):
                assert result.stdout.rsplit("\n", 1)[-1].startswith("2"), f"{line}\n{result.stdout[:500]}"
            if "RetryDeadLetters" in line or "dead-letters:retry" in line:
                retried = json.loads(result.stdout.rsplit("\n", 1)[0] if line.startswith("curl ") else result.stdout)
                assert retried.get("retriedJobIds", retried.get("retried_job_ids")) == re.findall(r"[0-9a-f-]{36}", command)
        with Client(gateway.address, token=TOKEN) as client:  # the last line resumed intake
            assert client.initiate(SMALL_IDS[:1]).state == pb.JOB_STATE_QUEUED
    finally:
        with credentials.sync_channel(gateway.address, OPERATOR_TOKEN) as channel:  # whatever failed
            apb_grpc.AdminServiceStub(channel).ResumeIntake(apb.ResumeIntakeRequest())


async def test_every_webhook_recipe_is_delivered_signed(gateway, tmp_path) -> None:
    receiver = await Receiver(WEBHOOK_SECRET).start()
    try:
        lines = recipes("grpcurl", "webhooks") + recipes("curl", "webhooks")
        assert len(lines) == 2
        for line in lines:
            command = line.replace("127.0.0.1:9000", f"127.0.0.1:{receiver.port}")
            command = re.sub(r"^grpcurl ", f"{GRPCURL} ", Jobs.address_filled(command, gateway.address))
            result = await asyncio.to_thread(run, command, tmp_path)
            assert result.returncode == 0, f"{line}\n{result.stderr}"
            job_id = re.findall(r'"job(?:Id|_id)":\s*"([0-9a-f-]{36})"', result.stdout)
            delivery = await receiver.next(timeout_s=30)
            assert (delivery.answered, delivery.payload["type"]) == (200, "download.completed"), line
            assert [delivery.payload["data"]["jobId"]] == job_id, line
    finally:
        await receiver.stop()
    # The key tool's line for a tenant's own secret and default URL.
    key_tool = re.findall(r"^    (python -m server\.apikeys --file keys\.txt webhook .+)$", README, re.MULTILINE)
    assert len(key_tool) == 1
    result = run(key_tool[0].replace("python ", f"{sys.executable} ", 1), tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("whsec_"), result.stderr
    assert f"webhook acme {result.stdout.strip()} https://hooks.acme.example/longhaul" in (tmp_path / "keys.txt").read_text()


def test_every_longhaul_command_works(gateway, tmp_path) -> None:
    lines = recipes("longhaul")
    assert len(lines) >= 8
    jobs = Jobs(gateway.address)
    for line in lines:
        result = run(jobs.fill(line, gateway.address), tmp_path, LONGHAUL_TARGET=gateway.address)
        assert result.returncode == 0, f"{line}\n{result.stderr}"
    assert (tmp_path / "out.zip").stat().st_size > 0


@pytest.mark.parametrize(("index", "prints"), [(0, "saved out.zip"), (1, "http://")], ids=["client", "google-api-core"])
def test_every_python_snippet_works(gateway, tmp_path, index: int, prints: str) -> None:
    snippets = re.findall(r"```python\n(.*?)```", README, re.DOTALL)
    assert len(snippets) == 2
    script = tmp_path / "snippet.py"
    script.write_text(Jobs(gateway.address).fill(snippets[index], gateway.address))
    result = run(f"{sys.executable} {script}", tmp_path)
    assert result.returncode == 0, result.stderr
    assert prints in result.stdout, result.stdout

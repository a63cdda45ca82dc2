"""TLS end to end with a throwaway CA: clients to Envoy, Envoy to the server, and clients straight to
the server, each verified against the CA; plaintext is refused where TLS is on."""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from devstack.services import HSTS, envoy_tls
from longhaul.download.v1 import download_pb2 as pb
from longhaul_client import Client, DeadlineExceeded, Unavailable
from tests.conftest import SMALL_IDS
from tests.credentials import BEARER, TOKEN
from tests.gateway.conftest import start_gateway, stop_gateway


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA and a server certificate for localhost and 127.0.0.1, signed by it (openssl)."""
    files = {name: directory / f"{name}.pem" for name in ("ca", "ca-key", "server", "server-key")}

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", "/CN=Longhaul test CA", "-keyout", str(files["ca-key"]), "-out", str(files["ca"]))
    csr = directory / "server.csr"
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=localhost",
            "-keyout", str(files["server-key"]), "-out", str(csr))
    extensions = directory / "san.ext"
    extensions.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(files["ca"]), "-CAkey", str(files["ca-key"]),
            "-CAcreateserial", "-days", "2", "-extfile", str(extensions), "-out", str(files["server"]))
    return files


@pytest.fixture(scope="module")
def tls_gateway(base_settings, work_dir, tmp_path_factory):
    certs = make_certificates(tmp_path_factory.mktemp("certs"))
    started = start_gateway(
        base_settings, work_dir, wait=False,
        envoy_changes=lambda config: envoy_tls(config, certs["server"], certs["server-key"], certs["ca"]),
        tls_cert_file=str(certs["server"]), tls_key_file=str(certs["server-key"]),
    )
    context = ssl.create_default_context(cafile=str(certs["ca"]))
    deadline = time.monotonic() + 20
    while True:  # until Envoy's health checks (over TLS) have put the server in rotation
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{started.port}/health", context=context, timeout=2):
                break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    yield started, certs, context
    stop_gateway(started)


def test_through_envoy_with_tls_both_ways(tls_gateway) -> None:
    gateway, certs, context = tls_gateway
    with Client(gateway.address, token=TOKEN, root_certificates=certs["ca"].read_bytes()) as client:
        done = client.wait(client.initiate(SMALL_IDS[:2]).job_id)
    assert done.state == pb.JOB_STATE_COMPLETED
    status = urllib.request.Request(f"https://127.0.0.1:{gateway.port}/v1/download/status/{done.job_id}", headers=dict(BEARER))
    with urllib.request.urlopen(status, context=context) as reply:
        assert b"JOB_STATE_COMPLETED" in reply.read()
        assert reply.headers["strict-transport-security"] == HSTS, "browsers are told to keep to https"
    cli = subprocess.run(
        [sys.executable, "-m", "longhaul_client.cli", "status", done.job_id, "--json",
         "--target", gateway.address, "--ca", str(certs["ca"]), "--token", TOKEN],
        capture_output=True, text=True, timeout=60,
    )
    assert cli.returncode == 0 and "JOB_STATE_COMPLETED" in cli.stdout, cli.stderr


def test_straight_to_the_server_with_tls_and_plaintext_refused(tls_gateway) -> None:
    gateway, certs, _ = tls_gateway
    server = gateway.server.env["GRPC_LISTEN"]
    with Client(server, token=TOKEN, root_certificates=certs["ca"].read_bytes()) as client:
        job = client.initiate(SMALL_IDS[:1])
        assert client.status(job.job_id).job_id == job.job_id
    with Client(server, token=TOKEN, timeout_s=3) as plaintext:
        with pytest.raises((Unavailable, DeadlineExceeded)):  # no connection ever becomes ready
            plaintext.status(job.job_id)


def test_a_client_that_does_not_trust_the_ca_is_refused(tls_gateway) -> None:
    gateway, _, _ = tls_gateway
    with Client(gateway.address, token=TOKEN, tls=True, timeout_s=3) as client:  # the system's CAs only
        with pytest.raises((Unavailable, DeadlineExceeded)):
            client.status("00000000-0000-4000-8000-000000000000")
    with grpc.insecure_channel(gateway.address) as channel, pytest.raises(grpc.FutureTimeoutError):
        grpc.channel_ready_future(channel).result(timeout=3)  # plaintext to a TLS port never connects

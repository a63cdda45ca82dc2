"""deploy/prometheus/ for real: promtool checks the configuration and unit-tests the alerts, and a real
Prometheus with the shipped scrape configuration (targets moved to the test's ports) scrapes a
server, a worker and Envoy, each its own process, through a known set of jobs. PromQL through
Prometheus's HTTP API then gives the right counts, and every panel of the Grafana dashboard has data."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml

from devstack.processes import ManagedProcess, free_port
from devstack.services import ROOT
from longhaul.download.v1 import download_pb2 as pb
from longhaul.download.v1 import download_pb2_grpc as pb_grpc
from longhaul_client import Client, JobFailed
from tests.conftest import MISSING_IDS, SMALL_IDS
from tests.credentials import BEARER, TOKEN
from tests.gateway.conftest import Gateway, start_gateway, stop_gateway

PROMETHEUS = ROOT / "deploy" / "prometheus"


def promtool(*args: str) -> str:
    result = subprocess.run(["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_scrape_configuration_and_the_alert_rules_pass_promtool() -> None:
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml")


def test_each_alert_fires_when_it_should_and_not_before() -> None:
    tested = {case["alertname"] for test in _rule_tests() for case in test["alert_rule_test"]}
    assert tested == _alerts(), "every alert has a unit test"
    assert "SUCCESS" in promtool("test", "rules", "alerts.test.yml")


def _alerts() -> set[str]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return {rule["alert"] for group in groups for rule in group["rules"]}


def _rule_tests() -> list[dict]:
    return yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())["tests"]


@dataclass
class Observed:
    gateway: Gateway
    prometheus_port: int

    def query(self, expr: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.prometheus_port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as reply:
            body = json.load(reply)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def by(self, expr: str, label: str) -> dict[str, float]:
        return {sample["metric"].get(label, ""): float(sample["value"][1]) for sample in self.query(expr)}

    def scalar(self, expr: str) -> float:
        (sample,) = self.query(expr)
        return float(sample["value"][1])

    def until(self, expr: str, expected: float, timeout_s: float = 30) -> None:
        """Until Prometheus has scraped what the stack did (it scrapes every second here)."""
        deadline = time.monotonic() + timeout_s
        while (samples := self.query(expr)) == [] or float(samples[0]["value"][1]) != expected:
            assert time.monotonic() < deadline, f"{expr} = {samples}, expected {expected}"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def observed(base_settings, work_dir: Path) -> Iterator[Observed]:
    reserved: set[int] = set()
    worker_metrics, envoy_metrics, prometheus_port = (free_port(reserved) for _ in range(3))

    def metrics_listener(config: dict) -> None:
        config["static_resources"]["listeners"][1]["address"]["socket_address"]["port_value"] = envoy_metrics

    gateway = start_gateway(
        base_settings, work_dir, envoy_changes=metrics_listener,
        delay_min_ms=1_000, delay_max_ms=1_000, tenant_max_active_jobs=2, metrics_listen=f"127.0.0.1:{worker_metrics}",
    )
    ((_, server_http),) = gateway.upstreams
    targets = {
        "longhaul-server": [f"127.0.0.1:{server_http}"],
        "longhaul-worker": [f"127.0.0.1:{worker_metrics}"],
        "envoy": [f"127.0.0.1:{envoy_metrics}"],
    }
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    config["global"] |= {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROMETHEUS / name) for name in config["rule_files"]]
    assert {job["job_name"] for job in config["scrape_configs"]} == set(targets)
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": targets[job["job_name"]]}]
    home = work_dir / f"prometheus-{prometheus_port}"
    home.mkdir()
    (home / "prometheus.yml").write_text(yaml.safe_dump(config))
    argv = [
        shutil.which("prometheus") or "/usr/bin/prometheus",
        f"--config.file={home / 'prometheus.yml'}",
        f"--storage.tsdb.path={home / 'data'}",
        f"--web.listen-address=127.0.0.1:{prometheus_port}",
    ]
    prometheus = ManagedProcess("prometheus", argv, work_dir / "logs" / f"prometheus-{prometheus_port}.log").start()
    try:
        prometheus.wait_until(lambda: _ready(prometheus_port), 30, "ready")
        yield Observed(gateway, prometheus_port)
    finally:
        prometheus.stop()
        stop_gateway(gateway)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as reply:
            return reply.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def known_jobs(observed: Observed) -> Observed:
    """Through Envoy: two jobs completed, one failed (no file exists), one cancelled, one refused by the
    tenant's limit of two active jobs, and one status call for a job that does not exist."""
    address = observed.gateway.address
    with grpc.insecure_channel(address) as channel, Client(address, token=TOKEN) as client:
        stub = pb_grpc.DownloadServiceStub(channel)
        first = client.initiate(SMALL_IDS[:2])
        cancelled = client.initiate(SMALL_IDS[2:3])
        with pytest.raises(grpc.RpcError) as refused:
            stub.InitiateDownload(pb.InitiateDownloadRequest(file_ids=SMALL_IDS[3:4]), metadata=BEARER)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        client.cancel(cancelled.job_id)
        assert client.wait(first.job_id).state == pb.JOB_STATE_COMPLETED
        with pytest.raises(JobFailed, match="ALL_FILES_MISSING"):
            client.wait(client.initiate(MISSING_IDS).job_id)
        assert client.wait(client.initiate(SMALL_IDS[4:6]).job_id).state == pb.JOB_STATE_COMPLETED
        with pytest.raises(grpc.RpcError) as unknown:
            stub.GetStatus(pb.GetStatusRequest(job_id=str(uuid.UUID(int=0))), metadata=BEARER)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    observed.until("sum(download_jobs_finished_total)", 4)
    observed.until('sum(grpc_server_handled_total{grpc_method="GetStatus", grpc_code="NotFound"})', 1)
    return observed


def test_every_process_is_scraped(observed: Observed) -> None:
    observed.until('count(up == 1)', 3)
    assert observed.by("up", "job") == {"longhaul-server": 1, "longhaul-worker": 1, "envoy": 1}


def test_the_job_counts_are_right(known_jobs: Observed) -> None:
    o = known_jobs
    assert o.scalar("sum(download_jobs_created_total)") == 4
    assert o.by("sum by (state) (download_jobs_finished_total)", "state") == {"COMPLETED": 2, "FAILED": 1, "CANCELLED": 1}
    failed = o.by("sum by (error_code) (download_job_failed_total)", "error_code")
    assert {code: n for code, n in failed.items() if n} == {"ALL_FILES_MISSING": 1}
    assert o.scalar("sum(download_job_duration_seconds_count)") == 4
    assert 3 <= o.scalar("sum(download_job_attempts_total)") <= 4  # the cancelled one may not have started
    refused = o.by("sum by (reason) (download_requests_refused_total)", "reason")
    assert refused == {"active_jobs": 1, "rate_limit": 0, "intake_paused": 0}
    assert o.scalar("sum(download_s3_uploaded_bytes_total)") > 0
    assert o.scalar("max(download_workers_alive)") == 1
    assert o.by("download_dependency_up", "dependency") == {"redis": 1, "s3": 1}


def test_the_grpc_metrics_have_go_grpc_prometheus_names_and_codes(known_jobs: Observed) -> None:
    o = known_jobs
    handled = o.by('sum by (grpc_code) (grpc_server_handled_total{grpc_method="InitiateDownload"})', "grpc_code")
    assert handled == {"OK": 4, "ResourceExhausted": 1}
    labels = 'grpc_service="longhaul.download.v1.DownloadService", grpc_method="InitiateDownload", grpc_type="unary"'
    assert o.scalar(f"sum(grpc_server_started_total{{{labels}}})") == 5
    assert o.scalar('sum(grpc_server_handling_seconds_count{grpc_method="InitiateDownload"})') == 5
    watched = o.by('sum by (grpc_type) (grpc_server_msg_sent_total{grpc_method="WatchProgress"})', "grpc_type")
    assert watched["server_stream"] >= 3  # a snapshot and the final state of each of three watched jobs
    assert o.scalar('sum(grpc_server_msg_received_total{grpc_method="WatchProgress"})') >= 3


def test_servers_and_workers_time_their_event_loop_and_their_collections(known_jobs: Observed) -> None:
    o = known_jobs
    lag_samples = o.by("sum by (job) (event_loop_lag_seconds_count)", "job")
    assert lag_samples.keys() == {"longhaul-server", "longhaul-worker"} and min(lag_samples.values()) > 0, lag_samples
    collections = o.by("sum by (job) (python_gc_pause_seconds_count)", "job")
    assert collections.keys() == {"longhaul-server", "longhaul-worker"} and min(collections.values()) > 0, collections


def test_every_panel_of_the_dashboard_has_data(known_jobs: Observed) -> None:
    dashboard = json.loads((PROMETHEUS / "grafana-dashboard.json").read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(queries) > 15
    empty = [expr for expr in queries if not known_jobs.query(expr)]
    assert empty == []


def test_the_alert_rules_run_on_the_real_metrics(known_jobs: Observed) -> None:
    """One job in four failed: LonghaulJobsFailing (over 10 %) is pending; nothing else is wrong."""
    deadline = time.monotonic() + 30
    while True:
        url = f"http://127.0.0.1:{known_jobs.prometheus_port}/api/v1/rules"
        with urllib.request.urlopen(url, timeout=10) as reply:
            rules = [rule for group in json.load(reply)["data"]["groups"] for rule in group["rules"]]
        active = {rule["name"]: rule["state"] for rule in rules if rule["state"] != "inactive"}
        if active or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(rules) == len(_alerts()) and all(rule["health"] == "ok" for rule in rules), rules
    assert active == {"LonghaulJobsFailing": "pending"}

"""Redis as production runs it when one host is not enough: a primary, its replicas and Sentinels
that promote a replica when the primary dies. Real `redis-server` processes (a sentinel is
`redis-server --sentinel`), on loopback ports, for the failover tests; `wait_for_replicas` also
serves the tests and benchmarks that start a replica of their own."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from devstack.processes import ManagedProcess, free_port, port_open
from devstack.services import binary, start_redis

MASTER_NAME = "longhaul"


class SentinelRedis:
    """`replicas` replicas of one primary, watched by `sentinels` sentinels (a majority must agree)."""

    def __init__(self, data_dir: Path, log_dir: Path, replicas: int = 2, sentinels: int = 3, down_after_ms: int = 1_500) -> None:
        self._data_dir = data_dir
        self._log_dir = log_dir
        self._down_after_ms = down_after_ms
        reserved: set[int] = set()
        self.node_ports = [free_port(reserved) for _ in range(1 + replicas)]
        self.sentinel_ports = [free_port(reserved) for _ in range(sentinels)]
        self.nodes: dict[int, ManagedProcess] = {}
        self.sentinels: list[ManagedProcess] = []

    @property
    def sentinel_addresses(self) -> str:
        """The REDIS_SENTINELS setting for this topology."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def start(self) -> SentinelRedis:
        try:
            primary, *replicas = self.node_ports
            self.start_node(primary)
            for port in replicas:
                self.start_node(port, replica_of=primary)
            for port in self.sentinel_ports:
                self.sentinels.append(self._start_sentinel(port, primary))
            self.wait_until_settled(primary)
        except BaseException:
            self.stop()
            raise
        return self

    def start_node(self, port: int, replica_of: int | None = None) -> None:
        """Starts (or restarts) a data node; a restarted old primary is turned into a replica by the
        sentinels, as they would any returning node."""
        # A replica re-pointed at a new primary often needs a full copy (the old primary took the
        # sentinels' own writes after its promotion); Redis waits 5 s by default before sending one,
        # for more replicas to share it, and creates wait for a replica meanwhile (REDIS_WAIT_REPLICAS).
        extra = ["--repl-diskless-sync-delay", "0"]
        extra += ["--replicaof", "127.0.0.1", str(replica_of)] if replica_of else []
        self.nodes[port] = start_redis(port, self._data_dir / str(port), self._log_dir, extra_args=extra)

    def _start_sentinel(self, port: int, primary: int) -> ManagedProcess:
        config = self._data_dir / f"sentinel-{port}.conf"  # a sentinel rewrites its file as it learns
        config.parent.mkdir(parents=True, exist_ok=True)
        quorum = len(self.sentinel_ports) // 2 + 1
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {self._data_dir}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {primary} {quorum}\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {self._down_after_ms}\n"
            # A sentinel starts no failover of a master within twice this of the last one: short, so
            # that one test's failover does not hold back the next test's.
            f"sentinel failover-timeout {MASTER_NAME} {self._down_after_ms * 2}\n"
            f"sentinel parallel-syncs {MASTER_NAME} {len(self.node_ports)}\n"
        )
        argv = [binary("redis-server"), str(config), "--sentinel"]
        proc = ManagedProcess("sentinel", argv, self._log_dir / f"sentinel-{port}.log")
        proc.start().wait_until(lambda: port_open(port), 10, "accepting connections")
        return proc

    def primary_port(self) -> int | None:
        return primary_port(self.sentinel_ports)

    def wait_until_settled(self, primary: int, timeout_s: float = 30) -> None:
        """Until the sentinels agree on `primary` and it has every other live node as a replica."""
        live = [port for port, proc in self.nodes.items() if proc.alive() and port != primary]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.primary_port() == primary and replicas_of(primary) >= len(live):
                return
            time.sleep(0.1)
        raise TimeoutError(f"the sentinels did not settle on 127.0.0.1:{primary} with {len(live)} replicas")

    def wait_for_new_primary(self, old: int, timeout_s: float = 30) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            port = self.primary_port()
            if port is not None and port != old:
                return port
            time.sleep(0.05)
        raise TimeoutError(f"no failover away from 127.0.0.1:{old} within {timeout_s:.0f} s")

    def stop(self) -> None:
        for proc in [*self.sentinels, *self.nodes.values()]:
            proc.stop()


def primary_port(sentinel_ports: list[int]) -> int | None:
    """The primary's port as a majority of the sentinels on these ports of 127.0.0.1 report it."""
    answers: dict[int, int] = {}
    for port in sentinel_ports:
        try:
            with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as sentinel:
                address = sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
        except redis.RedisError:
            continue
        if address:
            answers[int(address[1])] = answers.get(int(address[1]), 0) + 1
    best = max(answers.items(), key=lambda item: item[1], default=None)
    return best[0] if best and best[1] > len(sentinel_ports) // 2 else None


def replicas_of(port: int) -> int:
    """How many replicas the primary on `port` has connected; -1 when it is down or not a primary."""
    try:
        with redis.Redis(port=port, socket_timeout=1) as node:
            role = node.execute_command("ROLE")
    except redis.RedisError:
        return -1
    return len(role[2]) if role[0] in (b"master", "master") else -1


def wait_for_replicas(primary_port: int, count: int, timeout_s: float = 30) -> None:
    """Until the primary on `primary_port` has `count` replicas connected and confirming its writes
    (a replica is listed as soon as its copy is sent, and confirms only after it has loaded it)."""
    deadline = time.monotonic() + timeout_s
    while replicas_of(primary_port) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"127.0.0.1:{primary_port} did not get {count} replicas within {timeout_s:.0f} s")
        time.sleep(0.05)
    with redis.Redis(port=primary_port) as primary:
        primary.incr("devstack:replication-probe")  # WAIT waits for this connection's writes
        remaining_ms = max(1, int((deadline - time.monotonic()) * 1000))
        if primary.execute_command("WAIT", count, remaining_ms) < count:
            raise TimeoutError(f"the replicas of 127.0.0.1:{primary_port} did not confirm a write within {timeout_s:.0f} s")

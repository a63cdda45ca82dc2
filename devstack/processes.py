"""Child processes that are started, waited for, and always stopped: no strays after Ctrl-C."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class ProcessFailed(RuntimeError):
    pass


class ManagedProcess:
    """A child in its own process group, logging to a file, stopped with SIGTERM then SIGKILL."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_until(self, ready: Callable[[], bool], timeout_s: float = 30.0, what: str = "ready") -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise ProcessFailed(f"{self.name} exited before it was {what}; see {self.log_path}\n{self.tail()}")
            if ready():
                return
            time.sleep(0.05)
        raise ProcessFailed(f"{self.name} was not {what} within {timeout_s:.0f}s; see {self.log_path}\n{self.tail()}")

    def signal(self, sig: int) -> None:
        if self.alive():
            os.killpg(self.pid, sig)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM to the whole group, SIGKILL if it has not exited after `timeout_s`."""
        if self.proc is None:
            return
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGTERM)
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        else:
            self.proc.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.alive():
            os.killpg(self.pid, signal.SIGKILL)
            assert self.proc is not None
            self.proc.wait()

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def free_port(reserved: set[int] | None = None, also_free: Sequence[int] = ()) -> int:
    """A port free on 127.0.0.1 now, optionally with `port + offset` free too for each offset.

    SeaweedFS listens on every HTTP port + 10000 for gRPC, hence `also_free`. Chosen below the
    kernel's ephemeral range, from which outgoing connections take their local ports: a port from
    that range, free when chosen, can be taken by any connection before its process binds it (seen:
    a worker's metrics port, taken by one of the stack's own Redis connections).
    """
    reserved = reserved if reserved is not None else set()
    lowest = max(10_000, 1024 - min((0, *also_free)))
    for _ in range(500):
        port = random.randrange(lowest, _EPHEMERAL_LOW)
        candidates = [port, *(port + offset for offset in also_free)]
        if any(p in reserved or p > 65535 or not _bindable(p) for p in candidates):
            continue
        reserved.update(candidates)
        return port
    raise RuntimeError("no free port found")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


_EPHEMERAL_LOW = _ephemeral_low()


def port_holder(port: int) -> str:
    """Who listens on a TCP port of this machine, as "pid N (command line)", from /proc; "" if no
    process of ours can be seen holding it (another user's, or none)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port, state, inode = int(fields[1].rsplit(":", 1)[1], 16), fields[3], fields[9]
            if local_port == port and state == "0A":  # LISTEN
                inodes.add(f"socket:[{inode}]")
    for process in Path("/proc").iterdir():
        if not process.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (process / "fd").iterdir()):
                command = (process / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                return f"pid {process.name} ({command})"
        except OSError:
            continue
    return ""

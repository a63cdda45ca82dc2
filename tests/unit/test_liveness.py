"""The worker's liveness file: fresh while its event loop runs, stale (probe fails) once it stops."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from worker import liveness


async def test_the_file_is_kept_fresh_while_the_loop_runs_and_the_probe_says_so(tmp_path: Path) -> None:
    path = tmp_path / "run" / "alive"
    toucher = asyncio.create_task(liveness.keep_touching(path))
    while not path.exists():
        await asyncio.sleep(0.01)
    assert liveness.main([str(path), "30"]) == 0
    toucher.cancel()


def test_a_stale_or_missing_file_fails_the_probe(tmp_path: Path) -> None:
    path = tmp_path / "alive"
    assert liveness.main([str(path), "30"]) == 1, "missing"
    path.touch()
    old = time.time() - 60
    os.utime(path, (old, old))
    assert liveness.main([str(path), "30"]) == 1, "a minute old"
    assert liveness.main([str(path), "90"]) == 0

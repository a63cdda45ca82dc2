"""Whether a worker's event loop still runs, for a liveness probe that needs no port.

The worker touches `LIVENESS_FILE` every few seconds from its event loop; a loop wedged by a blocking
call stops touching it.

    python -m worker.liveness FILE MAX_AGE_S   exits 0 while FILE is younger than MAX_AGE_S, else 1
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

TOUCH_EVERY_S = 5.0


async def keep_touching(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        path.touch()
        await asyncio.sleep(TOUCH_EVERY_S)


def age_s(path: Path) -> float:
    return time.time() - path.stat().st_mtime


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    path, max_age_s = Path(argv[0]), float(argv[1])
    try:
        age = age_s(path)
    except FileNotFoundError:
        print(f"{path} does not exist: the worker has not started, or LIVENESS_FILE differs", file=sys.stderr)
        return 1
    if age > max_age_s:
        print(f"the worker's event loop last ran {age:.0f} s ago (over {max_age_s:g} s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

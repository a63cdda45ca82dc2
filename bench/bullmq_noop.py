"""`python -m bench.bullmq_noop REDIS_URL PREFIX QUEUE COUNT CONCURRENCY`: the queue library's own
rate, the baseline for ours: a bullmq Worker with a processor that does nothing, over COUNT jobs
added beforehand with the options Longhaul uses. Prints {"jobs_per_s": ...}."""

from __future__ import annotations

import asyncio
import json
import sys
import time

from bullmq import Queue, Worker
from redis.connection import parse_url


async def main(redis_url: str, prefix: str, queue_name: str, count: int, concurrency: int) -> None:
    connection = parse_url(redis_url) | {"socket_timeout": 30}
    options = {"connection": connection, "prefix": prefix}
    queue = Queue(queue_name, options)
    for start in range(0, count, 500):
        await asyncio.gather(*(
            queue.add("noop", {"job_id": str(i)}, {"jobId": str(i), "priority": 5, "removeOnComplete": True})
            for i in range(start, min(start + 500, count))
        ))
    times: list[float] = []
    done = asyncio.Event()

    async def process(job: object, token: str) -> None:
        times.append(time.perf_counter())
        if len(times) == count:
            done.set()

    worker = Worker(queue_name, process, options | {"concurrency": concurrency})
    await asyncio.wait_for(done.wait(), 300)
    await worker.close()
    await queue.close()
    print(json.dumps({"jobs_per_s": (count - 1) / (times[-1] - times[0])}))


if __name__ == "__main__":
    url, prefix, name, count, concurrency = sys.argv[1:6]
    asyncio.run(main(url, prefix, name, int(count), int(concurrency)))

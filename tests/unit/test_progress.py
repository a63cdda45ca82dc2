"""Percent and ETA: monotonic, never ahead of the work or of the paced clock."""

from __future__ import annotations

from jobs.model import Phase
from worker.progress import Progress


def make(paced_s: float) -> Progress:
    progress = Progress(store=None, job_id="j", token="t", paced_s=paced_s)  # type: ignore[arg-type]
    progress.phase = Phase.PACKAGING
    progress.files_total, progress.bytes_total = 4, 400
    return progress


def test_percent_follows_the_slower_of_work_and_time() -> None:
    progress = make(paced_s=100)
    progress.started -= 50  # half the paced time has passed
    progress.bytes_done = 400  # all the work is done
    assert 49 < progress.percent() < 51
    progress.bytes_done = 100
    assert 27 < progress.percent() < 29  # 5 + 90 * 0.25


def test_no_pacing_means_work_alone_counts() -> None:
    progress = make(paced_s=0)
    progress.bytes_done = 200
    assert progress.percent() == 50


def test_eta_covers_the_paced_time_left() -> None:
    progress = make(paced_s=30)
    progress.started -= 10
    progress.bytes_done = 400
    assert 19_000 < progress.eta_ms() <= 20_000

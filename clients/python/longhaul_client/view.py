"""What the command line shows: a live bar for the job (phase, percent, files, time left) and one
for the file download, drawn on stderr so stdout stays clean for scripts."""

from __future__ import annotations

from collections.abc import Callable

from rich import filesize
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from longhaul.download.v1 import download_pb2 as pb
from longhaul_client.errors import error_code


def _name(enum: object, value: int, prefix: str) -> str:
    return enum.Name(value)[len(prefix):].lower()  # type: ignore[attr-defined]


class JobView:
    def __init__(self) -> None:
        self._progress = Progress(
            TextColumn("{task.description:<10}"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f} %"),
            TextColumn("{task.fields[detail]}"),
            console=Console(stderr=True),
        )
        self._job_task: TaskID | None = None

    def __enter__(self) -> JobView:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, job: pb.Job) -> None:
        detail = f"{job.files_done}/{job.files_total} files"
        if job.HasField("estimated_time_remaining"):
            detail += f" · {job.estimated_time_remaining.ToTimedelta().total_seconds():.0f} s left"
        if job.state == pb.JOB_STATE_QUEUED and job.error.code:
            detail += f" · retrying ({error_code(job)})"
        phase = _name(pb.JobPhase, job.phase, "JOB_PHASE_")
        if self._job_task is None:
            self._job_task = self._progress.add_task(phase, total=100, detail=detail)
        self._progress.update(self._job_task, description=phase, completed=job.percent, detail=detail)

    def file_progress(self, name: str) -> Callable[[int, int], None]:
        task = self._progress.add_task("file", total=None, detail=name)

        def on_progress(done: int, total: int) -> None:
            detail = f"{filesize.decimal(done)} / {filesize.decimal(total)}  {name}"
            self._progress.update(task, completed=done, total=total, detail=detail)

        return on_progress

    @staticmethod
    def line(job: pb.Job) -> str:
        state = _name(pb.JobState, job.state, "JOB_STATE_")
        created = job.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") if job.HasField("create_time") else ""
        return f"{job.job_id}  {state:<9}  {job.percent:5.1f} %  {job.files_total:>4} files  {created}"

    @staticmethod
    def describe(job: pb.Job) -> str:
        lines = [
            f"job       {job.job_id}",
            f"state     {_name(pb.JobState, job.state, 'JOB_STATE_')} ({_name(pb.JobPhase, job.phase, 'JOB_PHASE_')})",
            f"progress  {job.percent:.1f} %, {job.files_done}/{job.files_total} files",
            f"message   {job.message}",
            f"attempts  {job.attempts}",
        ]
        if job.error.code:
            lines.append(f"error     {error_code(job)}: {job.error.message}")
        if job.HasField("result"):
            result = job.result
            lines += [
                f"file      {result.file_name} ({result.size_bytes} bytes, sha256 {result.sha256})",
                f"url       {result.download_url}",
            ]
        return "\n".join(lines)

"""`longhaul`: start, watch, fetch, cancel, retry and list downloads from a terminal or a script.

Exit codes (stable, for scripts):
  0  done                          4  the job was cancelled or has expired
  1  the job failed                5  the service is unreachable
  2  bad usage or bad argument     6  any other error (authentication, quota, ...)
  3  no such job                   7  the archive could not be downloaded
  130 interrupted (Ctrl-C): the job keeps running unless --cancel-on-interrupt
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from longhaul.download.v1 import download_pb2 as pb
from longhaul_client.aio import DEFAULT_TARGET, PRIORITIES, AsyncClient
from longhaul_client.errors import DownloadError, JobCancelled, JobExpired, JobFailed, LonghaulError, job_error
from longhaul_client.view import JobView

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_ENDED, EXIT_UNAVAILABLE, EXIT_ERROR, EXIT_DOWNLOAD = range(8)
EXIT_INTERRUPTED = 130

_EXIT_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: EXIT_USAGE,
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.UNAVAILABLE: EXIT_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNAVAILABLE,
}


def exit_code(error: LonghaulError) -> int:
    if isinstance(error, JobFailed):
        return EXIT_FAILED
    if isinstance(error, (JobCancelled, JobExpired)):
        return EXIT_ENDED
    if isinstance(error, DownloadError):
        return EXIT_DOWNLOAD
    return _EXIT_BY_CODE.get(error.code, EXIT_ERROR)


def to_dict(message: Any) -> dict[str, Any]:
    """The message as the REST API writes it (proto3 JSON: jobId, filesDone, …, zero values included)."""
    return MessageToDict(message, always_print_fields_with_no_presence=True)


def emit(document: dict[str, Any]) -> None:
    print(json.dumps(document, separators=(",", ":")), flush=True)


class Session:
    """One command's run: its client, its output mode, and the job it is busy with (for Ctrl-C)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.job_id = ""
        self.trace_id = secrets.token_hex(16)
        self.client: AsyncClient

    def connect(self) -> AsyncClient:
        """A client for the running event loop (gRPC channels belong to the loop that made them)."""
        args = self.args
        ca = Path(args.ca).read_bytes() if args.ca else None
        # One trace for the whole command: its calls' spans, and any error it prints, name it.
        self.client = AsyncClient(
            args.target, token=args.token or None, tls=args.tls, root_certificates=ca, trace_id=self.trace_id
        )
        return self.client

    def note(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    async def follow(self, job_id: str, after_seq: int = 0) -> pb.Job:
        """Watches to the end with a live bar (or JSON lines); returns the final job."""
        self.job_id = job_id
        final = None
        if self.args.json_events:
            async for event in self.client.watch(job_id, after_seq=after_seq):
                emit(to_dict(event))
                final = event.job
        else:
            with JobView() as view:
                async for event in self.client.watch(job_id, after_seq=after_seq):
                    view.update(event.job)
                    final = event.job
        if final is None:  # resumed after the end: nothing new to show
            final = await self.client.status(job_id)
        return final

    async def fetch(self, job: pb.Job, output: str | None) -> Path:
        path = Path(output or job.result.file_name)
        if self.args.json:
            return await self.client.download(job, path)
        with JobView() as view:
            return await self.client.download(job, path, view.file_progress(job.result.file_name))

    def finish(self, job: pb.Job, path: Path | None = None) -> int:
        """Prints the outcome; returns the exit code."""
        error = job_error(job)
        if self.args.json_events:
            pass  # the events, the last one included, are already out
        elif self.args.json:
            emit({"job": to_dict(job)} | ({"file": str(path)} if path else {}))
        elif error is None:
            self.note(f"job {job.job_id}: {job.message}" + (f" -> {path}" if path else ""))
        if error is not None:
            return self.fail(error)
        return EXIT_OK

    def fail(self, error: LonghaulError) -> int:
        """Prints an error with the id that names it to the service's operators (a job's own failure:
        the command's trace, in which the job was created); returns the exit code."""
        error.request_id = error.request_id or self.trace_id
        self.note(str(error))
        return exit_code(error)


async def cmd_download(session: Session) -> int:
    args = session.args
    job = await session.client.initiate(args.file_ids, request_id=args.request_id, priority=args.priority)
    session.job_id = job.job_id
    session.note(f"job {job.job_id} started; if interrupted, resume with: longhaul watch {job.job_id}")
    return await see_through(session, job)


async def cmd_retry(session: Session) -> int:
    job = await session.client.retry(session.args.job_id)
    session.job_id = job.job_id
    session.note(f"job {job.job_id} queued again (retry {job.retries}); if interrupted, resume with: longhaul watch {job.job_id}")
    return await see_through(session, job)


async def see_through(session: Session, job: pb.Job) -> int:
    """Watches a job just started to its end and fetches its archive, unless told not to."""
    args = session.args
    if args.no_wait:
        return session.finish(job)
    job = await session.follow(job.job_id)
    if job.state != pb.JOB_STATE_COMPLETED or args.no_file:
        return session.finish(job)
    return session.finish(job, await session.fetch(job, args.output))


async def cmd_watch(session: Session) -> int:
    return session.finish(await session.follow(session.args.job_id, session.args.after_seq))


async def cmd_fetch(session: Session) -> int:
    job = await session.client.status(session.args.job_id)
    error = job_error(job)
    if error is None and job.state != pb.JOB_STATE_COMPLETED:
        session.note(f"job {job.job_id} is {pb.JobState.Name(job.state)[10:]}; wait with: longhaul watch {job.job_id}")
        return EXIT_ERROR
    if error is not None:
        return session.finish(job)
    return session.finish(job, await session.fetch(job, session.args.output))


async def cmd_status(session: Session) -> int:
    job = await session.client.status(session.args.job_id)
    if session.args.json:
        emit({"job": to_dict(job)})
    else:
        print(JobView.describe(job))
    return EXIT_OK


async def cmd_cancel(session: Session) -> int:
    job = await session.client.cancel(session.args.job_id)
    if session.args.json:
        emit({"job": to_dict(job)})
    else:
        print(f"job {job.job_id} cancelled")
    return EXIT_OK


async def cmd_list(session: Session) -> int:
    jobs = [job async for job in session.client.list(limit=session.args.limit)]
    if session.args.json:
        emit({"jobs": [to_dict(job) for job in jobs]})
    else:
        for job in jobs:
            print(JobView.line(job))
    return EXIT_OK


async def cmd_check(session: Session) -> int:
    reply = await session.client.availability(session.args.file_id)
    if session.args.json:
        emit(to_dict(reply))
    else:
        print(f"{reply.file_id}: " + (f"available, {reply.size_bytes} bytes" if reply.available else "not found"))
    return EXIT_OK if reply.available else EXIT_NOT_FOUND


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--target", default=os.environ.get("LONGHAUL_TARGET", DEFAULT_TARGET),
                        help="host:port of Envoy or a server (env LONGHAUL_TARGET; default %(default)s)")
    common.add_argument("--token", default=os.environ.get("LONGHAUL_TOKEN", ""),
                        help="bearer token (env LONGHAUL_TOKEN)")
    common.add_argument("--tls", action="store_true", help="connect with TLS")
    common.add_argument("--ca", help="CA certificate file for TLS (implies --tls)")
    common.add_argument("--json", action="store_true", help="machine-readable output on stdout, no bars")

    top = argparse.ArgumentParser(prog="longhaul", description="Long-running downloads from the command line.",
                                  epilog=__doc__.split("\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Any, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.set_defaults(run=run)
        return sub

    def seen_through(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("-o", "--output", help="where to save the archive (default: its own name)")
        sub.add_argument("--no-wait", action="store_true", help="print the job and return at once")
        sub.add_argument("--no-file", action="store_true", help="wait for the job but do not fetch the archive")
        sub.add_argument("--cancel-on-interrupt", action="store_true", help="cancel the job on Ctrl-C")

    download = command("download", cmd_download, "start a download, watch it, and fetch the archive")
    download.add_argument("file_ids", nargs="+", type=int, metavar="FILE_ID")
    download.add_argument("--request-id", help="idempotency key: the same key returns the same job")
    download.add_argument("--priority", choices=sorted(PRIORITIES), default="normal")
    seen_through(download)

    watch = command("watch", cmd_watch, "watch a job until it ends (JSON lines of events with --json)")
    watch.add_argument("job_id")
    watch.add_argument("--after-seq", type=int, default=0, help="resume after this event")
    watch.add_argument("--cancel-on-interrupt", action="store_true", help="cancel the job on Ctrl-C")

    fetch = command("fetch", cmd_fetch, "download a completed job's archive (resumes a partial one)")
    fetch.add_argument("job_id")
    fetch.add_argument("-o", "--output", help="where to save the archive (default: its own name)")

    status = command("status", cmd_status, "show a job")
    status.add_argument("job_id")
    cancel = command("cancel", cmd_cancel, "cancel a job")
    cancel.add_argument("job_id")
    retry = command("retry", cmd_retry, "run a failed or cancelled job again, watch it, and fetch the archive")
    retry.add_argument("job_id")
    seen_through(retry)
    listing = command("list", cmd_list, "list jobs, newest first")
    listing.add_argument("--limit", type=int, default=20)
    check = command("check", cmd_check, "is a file available?")
    check.add_argument("file_id", type=int)
    return top


async def run(session: Session) -> int:
    async with session.connect():
        return await session.args.run(session)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.tls = args.tls or bool(args.ca)
    # `watch --json` streams every event; elsewhere --json prints one document at the end.
    args.json_events = args.json and args.command == "watch"
    session = Session(args)
    try:
        return asyncio.run(run(session))
    except BrokenPipeError:
        # The reader left (`longhaul list | head`): not an error of ours. Python would complain again
        # when it flushes stdout at exit, so stdout goes nowhere from here.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except LonghaulError as error:
        return session.fail(error)
    except KeyboardInterrupt:
        if not session.job_id:
            return EXIT_INTERRUPTED
        if getattr(args, "cancel_on_interrupt", False):
            asyncio.run(_cancel(session))
            session.note(f"\ninterrupted: job {session.job_id} cancelled")
        else:
            session.note(f"\ninterrupted: job {session.job_id} keeps running; resume with: longhaul watch {session.job_id}")
        return EXIT_INTERRUPTED


async def _cancel(session: Session) -> None:
    async with session.connect() as client:
        await client.cancel(session.job_id)


if __name__ == "__main__":
    sys.exit(main())

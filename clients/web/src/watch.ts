// A watch of one job that survives dropped streams: it resumes from the last seq it delivered,
// with backoff, so the caller sees every event once and in order.

import type { Client } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
import { getOption } from "@bufbuild/protobuf";
import { DownloadService, EventType, JobStateSchema, terminal, type Job, type JobState } from "./gen/longhaul/download/v1/download_pb";

// The states a job never leaves, as the contract marks them (the `terminal` option).
export const TERMINAL: ReadonlySet<JobState> = new Set(
  JobStateSchema.values.filter((value) => getOption(value, terminal)).map((value) => value.number),
);

// Anything but a definite answer about the request itself is worth a reconnect.
const FINAL_CODES = new Set([Code.InvalidArgument, Code.NotFound, Code.PermissionDenied, Code.Unauthenticated]);

export interface WatchHandlers {
  onJob(job: Job, seq: bigint): void;
  onConnection(state: "live" | "reconnecting", detail?: string): void;
  onFatal(error: ConnectError): void;
}

export async function watchJob(
  client: Client<typeof DownloadService>,
  jobId: string,
  fromSeq: bigint,
  handlers: WatchHandlers,
  signal: AbortSignal,
): Promise<void> {
  let lastSeq = fromSeq;
  let delayMs = 500;
  while (!signal.aborted) {
    try {
      for await (const event of client.watchProgress({ jobId, afterSeq: lastSeq }, { signal })) {
        delayMs = 500;
        handlers.onConnection("live");
        if (event.type === EventType.HEARTBEAT || event.type === EventType.ERROR || !event.job) continue;
        if (event.seq <= lastSeq) continue; // already seen before a reconnect
        lastSeq = event.seq;
        handlers.onJob(event.job, lastSeq);
        if (TERMINAL.has(event.job.state)) return;
      }
      return; // the server ends the stream only once the job has ended
    } catch (thrown) {
      if (signal.aborted) return;
      const error = ConnectError.from(thrown);
      if (FINAL_CODES.has(error.code)) return handlers.onFatal(error);
      if (error.code === Code.OutOfRange) lastSeq = 0n; // our seq is ahead of the job's: start afresh
      handlers.onConnection("reconnecting", error.rawMessage);
      await sleep(delayMs * (0.5 + Math.random()), signal);
      delayMs = Math.min(delayMs * 2, 10_000);
    }
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

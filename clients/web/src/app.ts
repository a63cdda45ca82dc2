// Longhaul's page: start downloads, watch them live over grpc-web, cancel, retry, get the file.

import { fromJson, toJson } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { credentials } from "./credentials";
import { DownloadService, JobErrorCode, JobPhase, JobSchema, JobState, type Job } from "./gen/longhaul/download/v1/download_pb";
import { load, store, type Saved } from "./saved";
import { newTrace, traceIdOf, withTrace } from "./tracing";
import { TERMINAL, watchJob } from "./watch";

const { setToken, takeTokenFromLink, token, withToken } = credentials("longhaul.token.v1");
takeTokenFromLink();
const client = createClient(
  DownloadService,
  createGrpcWebTransport({ baseUrl: location.origin, interceptors: [withToken, withTrace] }),
);
const downloads = new Map<string, Download>();

const byId = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const form = byId<HTMLFormElement>("start");
const input = byId<HTMLInputElement>("file-ids");
const formError = byId<HTMLParagraphElement>("form-error");
const availability = byId<HTMLUListElement>("availability");
const list = byId<HTMLUListElement>("downloads");
const keyForm = byId<HTMLFormElement>("key-form");
const keyInput = byId<HTMLInputElement>("api-key");
const keyStatus = byId<HTMLParagraphElement>("key-status");

// What a failed call says to a person, with the trace to quote when asking for help; a missing or
// refused key points at the key field.
function explain(thrown: unknown): string {
  const error = ConnectError.from(thrown);
  const traceId = traceIdOf(error);
  const trace = traceId ? ` (trace ${traceId})` : "";
  if (error.code === Code.Unauthenticated) {
    keyInput.setAttribute("aria-invalid", "true");
    return `${error.rawMessage}. Enter a valid API key above.${trace}`;
  }
  return error.rawMessage + trace;
}

function stateName(state: JobState): string {
  return JobState[state] ?? "UNKNOWN";
}

function phaseLabel(phase: JobPhase): string {
  const name = JobPhase[phase] ?? "";
  return name.charAt(0) + name.slice(1).toLowerCase();
}

function size(bytes: bigint): string {
  const n = Number(bytes);
  if (n < 1_000) return `${n} bytes`;
  if (n < 1_000_000) return `${(n / 1_000).toFixed(1)} kB`;
  return `${(n / 1_000_000).toFixed(1)} MB`;
}

function element<K extends keyof HTMLElementTagNameMap>(tag: K, className = "", text = ""): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text) node.textContent = text;
  return node;
}

class Download {
  readonly card = element("li", "download");
  private readonly state = element("span", "state");
  private readonly bar = element("div", "bar");
  private readonly fill = element("div", "fill");
  private readonly detail = element("p", "detail");
  private readonly message = element("p", "message");
  private readonly cancel = element("button", "secondary", "Cancel");
  private readonly retry = element("button", "", "Retry");
  private readonly link = element("a", "button", "Download");
  private readonly remove = element("button", "secondary", "Remove");
  private readonly stop = new AbortController();
  private job?: Job;
  private lastSeq: bigint;
  private connection = "";

  constructor(readonly jobId: string, readonly fileIds: string[], readonly traceId = "", saved?: Saved) {
    this.lastSeq = BigInt(saved?.lastSeq ?? "0");
    if (saved?.job) this.job = fromJson(JobSchema, saved.job as never, { ignoreUnknownFields: true });
    const title = element("span", "title", `Files ${fileIds.join(", ")}`);
    const head = element("div", "head");
    head.append(title, this.state);
    this.card.dataset.jobId = jobId;
    this.bar.setAttribute("role", "progressbar");
    this.bar.setAttribute("aria-valuemin", "0");
    this.bar.setAttribute("aria-valuemax", "100");
    this.bar.setAttribute("aria-label", `Progress of the download of files ${fileIds.join(", ")}`);
    this.bar.append(this.fill);
    this.message.setAttribute("aria-live", "polite");
    this.link.setAttribute("download", "");
    const actions = element("div", "actions");
    actions.append(this.cancel, this.retry, this.link, this.remove);
    this.card.append(head, this.bar, this.detail, this.message, actions);
    this.cancel.addEventListener("click", () => this.onCancel());
    this.retry.addEventListener("click", () => void this.onRetry());
    this.remove.addEventListener("click", () => this.forget());
    this.render();
  }

  follow(): void {
    void watchJob(client, this.jobId, this.lastSeq, {
      onJob: (job, seq) => {
        this.job = job;
        this.lastSeq = seq;
        this.connection = "";
        save();
        this.render();
      },
      onConnection: (state, detail) => {
        this.connection = state === "reconnecting" ? `Connection lost (${detail ?? "no answer"}); reconnecting…` : "";
        this.render();
      },
      onFatal: (error) => {
        this.connection = explain(error);
        this.render();
      },
    }, this.stop.signal);
  }

  saved(): Saved {
    return {
      jobId: this.jobId,
      fileIds: this.fileIds,
      lastSeq: this.lastSeq.toString(),
      job: this.job ? toJson(JobSchema, this.job) : undefined,
      traceId: this.traceId,
    };
  }

  forget(): void {
    this.stop.abort();
    this.card.remove();
    downloads.delete(this.jobId);
    save();
  }

  private async onCancel(): Promise<void> {
    this.cancel.disabled = true;
    try {
      const reply = await client.cancelDownload({ jobId: this.jobId });
      if (reply.job) this.job = reply.job; // the watch delivers the same change too
    } catch (thrown) {
      this.connection = `Could not cancel: ${ConnectError.from(thrown).rawMessage}`;
    }
    this.cancel.disabled = false;
    this.render();
  }

  private async onRetry(): Promise<void> {
    // An expired job's record is gone: only a new job can fetch those files again.
    if (this.job?.state === JobState.EXPIRED) return start(this.fileIds, this);
    this.retry.disabled = true;
    try {
      const reply = await client.retryDownload({ jobId: this.jobId, requestId: crypto.randomUUID() });
      if (reply.job) this.job = reply.job;
      this.connection = "";
      this.follow(); // the last watch ended with the job; the retry's events follow lastSeq
    } catch (thrown) {
      this.connection = `Could not retry: ${explain(thrown)}`;
    }
    this.retry.disabled = false;
    this.render();
  }

  private render(): void {
    const job = this.job;
    const state = job ? stateName(job.state) : "QUEUED";
    const done = job ? TERMINAL.has(job.state) : false;
    const percent = Math.round(job?.percent ?? 0);
    this.card.dataset.state = state;
    this.state.textContent = state.charAt(0) + state.slice(1).toLowerCase();
    this.fill.style.width = `${percent}%`;
    this.bar.setAttribute("aria-valuenow", String(percent));
    this.bar.setAttribute("aria-valuetext", `${percent} percent, ${state.toLowerCase()}`);

    const parts = [job ? phaseLabel(job.phase) : "Starting", `${percent} %`];
    if (job?.filesTotal) parts.push(`${job.filesDone} of ${job.filesTotal} files`);
    const left = job?.estimatedTimeRemaining;
    if (left && !done) parts.push(`about ${Number(left.seconds)} s left`);
    this.detail.textContent = parts.join(" · ");

    let message = this.connection || job?.message || "";
    if (job?.state === JobState.FAILED && job.error) {
      const trace = this.traceId ? `; trace ${this.traceId}` : "";
      message = `Failed: ${job.error.message} (${JobErrorCode[job.error.code]}${trace})`;
    }
    this.message.textContent = message;
    this.message.classList.toggle("error", job?.state === JobState.FAILED || this.connection !== "");

    this.cancel.hidden = done;
    this.retry.hidden = !(job?.state === JobState.FAILED || job?.state === JobState.CANCELLED || job?.state === JobState.EXPIRED);
    const result = job?.state === JobState.COMPLETED ? job.result : undefined;
    this.link.hidden = !result;
    if (result) {
      this.link.href = result.downloadUrl;
      this.link.textContent = `Download ${result.fileName} (${size(result.sizeBytes)})`;
    }
    this.remove.hidden = !done;
  }
}

function save(): void {
  store([...downloads.values()].map((d) => d.saved()));
  byId("empty").hidden = downloads.size > 0;
}

function show(download: Download): void {
  downloads.set(download.jobId, download);
  list.prepend(download.card);
  save();
  download.follow();
}

function parseIds(text: string): string[] | undefined {
  const ids = text.split(/[\s,]+/).filter(Boolean);
  // File ids are 32-bit in the contract; the server says which range it accepts.
  if (ids.length === 0 || ids.some((id) => !/^\d{1,10}$/.test(id) || Number(id) > 2 ** 31 - 1)) return undefined;
  return ids;
}

async function start(fileIds: string[], replacing?: Download): Promise<void> {
  formError.textContent = "";
  try {
    // The download keeps its trace: a failure later on names it too.
    const trace = newTrace();
    const request = { fileIds: fileIds.map(Number), requestId: crypto.randomUUID() };
    const reply = await client.initiateDownload(request, { headers: { traceparent: trace.traceparent } });
    replacing?.forget();
    if (reply.job) show(new Download(reply.job.jobId, fileIds, trace.traceId));
  } catch (thrown) {
    formError.textContent = explain(thrown);
  }
}

async function checkAvailability(fileIds: string[]): Promise<void> {
  availability.replaceChildren();
  availability.hidden = false;
  for (const id of fileIds) {
    const item = element("li", "", `${id}: checking…`);
    availability.append(item);
    try {
      const reply = await client.checkAvailability({ fileId: Number(id) });
      item.textContent = reply.available ? `${id}: available (${size(reply.sizeBytes)})` : `${id}: not found`;
      item.classList.toggle("missing", !reply.available);
    } catch (thrown) {
      item.textContent = `${id}: ${explain(thrown)}`;
      item.classList.add("missing");
    }
  }
}

function idsOrComplain(): string[] | undefined {
  const ids = parseIds(input.value);
  formError.textContent = ids ? "" : "Enter one or more file ids: numbers separated by spaces or commas.";
  input.setAttribute("aria-invalid", String(!ids));
  return ids;
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const ids = idsOrComplain();
  if (ids) void start(ids);
});
byId("check-button").addEventListener("click", () => {
  const ids = idsOrComplain();
  if (ids) void checkAvailability(ids);
});

keyStatus.textContent = token() ? "A key is saved in this browser." : "No key yet: calls will be refused.";
keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  setToken(keyInput.value.trim());
  location.reload(); // every watch starts again with the new key
});

for (const saved of load().reverse()) {
  show(new Download(saved.jobId, saved.fileIds, saved.traceId, saved));
}
save();

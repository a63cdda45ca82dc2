// Longhaul's operator page: the queue, its workers and the last hour at a glance, the dead letters to
// retry or discard, the jobs across tenants, and intake paused or resumed. grpc-web to Envoy, as the
// downloads page; it refreshes itself every few seconds.

import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { barsByName, lineChart, stackedBars } from "./charts";
import { credentials } from "./credentials";
import { AdminService, type JobEntry } from "./gen/longhaul/admin/v1/admin_pb";
import { JobErrorCode, JobState } from "./gen/longhaul/download/v1/download_pb";

const REFRESH_MS = 3_000;
const { setToken, takeTokenFromLink, token, withToken } = credentials("longhaul.operator-token.v1");
takeTokenFromLink();
const client = createClient(AdminService, createGrpcWebTransport({ baseUrl: location.origin, interceptors: [withToken] }));

const byId = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const problem = byId<HTMLParagraphElement>("problem");
const keyInput = byId<HTMLInputElement>("api-key");

function cell(row: HTMLTableRowElement, text: string, className = ""): HTMLTableCellElement {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function time(stamp?: Timestamp): string {
  return stamp ? timestampDate(stamp).toLocaleTimeString() : "";
}

function name(enumObject: Record<number, string>, value: number, prefix: string): string {
  return (enumObject[value] ?? "").replace(prefix, "");
}

function explain(thrown: unknown): string {
  const error = ConnectError.from(thrown);
  if (error.code === Code.Unauthenticated || error.code === Code.PermissionDenied) {
    keyInput.setAttribute("aria-invalid", "true");
    return `${error.rawMessage}. Enter an operator key above.`;
  }
  return error.rawMessage;
}

// -- the queue and the last hour --------------------------------------------------------------------

async function showStats(): Promise<void> {
  const stats = await client.getQueueStats({});
  const tiles: [string, bigint][] = [
    ["Waiting for a relay", stats.fresh], ["Waiting for a worker", stats.waiting], ["Backing off", stats.delayed],
    ["Running", stats.active], ["Queued or running", stats.live], ["Dead letters", stats.deadLetters],
    ["Webhooks to deliver", stats.webhooksPending],
  ];
  byId("stats").replaceChildren(...tiles.flatMap(([label, value]) => {
    const term = document.createElement("dt");
    term.textContent = label;
    const figure = document.createElement("dd");
    figure.textContent = value.toString();
    return [term, figure];
  }));
  const intake = stats.intake;
  const status = byId("intake-status");
  status.textContent = intake?.paused
    ? `Intake paused by ${intake.pausedBy} at ${time(intake.pauseTime)}: ${intake.reason || "no reason given"}. New downloads are refused.`
    : "Intake open: new downloads are taken.";
  status.classList.toggle("error", Boolean(intake?.paused));
  byId<HTMLButtonElement>("pause-button").hidden = Boolean(intake?.paused);
  byId<HTMLButtonElement>("resume-button").hidden = !intake?.paused;

  const rows = byId<HTMLTableSectionElement>("workers");
  rows.replaceChildren();
  for (const worker of stats.workers) {
    const row = rows.insertRow();
    cell(row, worker.name);
    cell(row, time(worker.lastSeenTime));
    cell(row, worker.runningJobIds.length ? worker.runningJobIds.join(", ") : "idle", "ids");
  }
  if (stats.workers.length === 0) cell(rows.insertRow(), "No worker has reported in the last 15 s: nothing runs.", "error");
}

async function showHistory(): Promise<void> {
  const minutes = (await client.getQueueHistory({})).minutes;
  const numbers = (pick: (m: (typeof minutes)[number]) => bigint | undefined) => minutes.map((m) => {
    const value = pick(m);
    return value === undefined ? null : Number(value);
  });
  const queued = numbers((m) => m.queued);
  const running = numbers((m) => m.running);
  const now = (values: (number | null)[]) => values[values.length - 1] ?? 0;
  lineChart(byId("depth-chart") as unknown as SVGSVGElement, [
    { name: "waiting", className: "queued", values: queued },
    { name: "running", className: "running", values: running },
  ], `Jobs waiting and running over the last hour: ${now(queued)} waiting and ${now(running)} running now, ` +
    `at most ${Math.max(0, ...queued.map((v) => v ?? 0))} waiting.`);
  const ended = {
    completed: numbers((m) => m.completed), failed: numbers((m) => m.failed), cancelled: numbers((m) => m.cancelled),
  };
  const total = (values: (number | null)[]) => values.reduce<number>((sum, v) => sum + (v ?? 0), 0);
  stackedBars(byId("ended-chart") as unknown as SVGSVGElement, [
    { name: "completed", className: "completed", values: ended.completed },
    { name: "failed", className: "failed", values: ended.failed },
    { name: "cancelled", className: "cancelled", values: ended.cancelled },
  ], `Jobs ended in the last hour: ${total(ended.completed)} completed, ${total(ended.failed)} failed, ` +
    `${total(ended.cancelled)} cancelled.`);
  const failures = new Map<string, number>();
  for (const minute of minutes) {
    for (const [code, count] of Object.entries(minute.failures)) failures.set(code, (failures.get(code) ?? 0) + Number(count));
  }
  barsByName(byId("failures"), failures, "No failures in the last hour.");
}

// -- dead letters and jobs --------------------------------------------------------------------------

function deadLetterFilter() {
  return { tenant: byId<HTMLInputElement>("dead-tenant").value.trim(), errorCode: Number(byId<HTMLSelectElement>("dead-code").value) };
}

function jobCell(row: HTMLTableRowElement, entry: JobEntry): void {
  const td = cell(row, entry.job?.jobId ?? "", "ids");
  if (entry.traceId) td.title = `trace ${entry.traceId}`;
}

async function showDeadLetters(): Promise<void> {
  const reply = await client.listDeadLetters({ filter: deadLetterFilter(), pageSize: 100 });
  const rows = byId<HTMLTableSectionElement>("dead-letters");
  rows.replaceChildren();
  for (const entry of reply.deadLetters) {
    const job = entry.job;
    const row = rows.insertRow();
    row.dataset.jobId = job?.jobId ?? "";
    cell(row, time(job?.finishTime));
    cell(row, entry.tenant);
    cell(row, `${name(JobErrorCode, job?.error?.code ?? 0, "JOB_ERROR_CODE_")}: ${job?.error?.message ?? ""}`);
    cell(row, String(job?.attempts ?? 0));
    cell(row, job?.worker ?? "");
    jobCell(row, entry);
    const actions = row.insertCell();
    for (const [label, act] of [["Retry", retryOne], ["Discard", discardOne]] as const) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = label;
      button.className = label === "Discard" ? "secondary" : "";
      button.addEventListener("click", () => void act(job?.jobId ?? ""));
      actions.append(button);
    }
  }
  if (reply.deadLetters.length === 0) cell(rows.insertRow(), "No dead letters match.", "hint");
}

async function showJobs(): Promise<void> {
  const filter = {
    tenant: byId<HTMLInputElement>("jobs-tenant").value.trim(),
    state: Number(byId<HTMLSelectElement>("jobs-state").value),
  };
  const reply = await client.listJobs({ filter, pageSize: 50 });
  const rows = byId<HTMLTableSectionElement>("jobs");
  rows.replaceChildren();
  for (const entry of reply.jobs) {
    const row = rows.insertRow();
    cell(row, time(entry.job?.createTime));
    cell(row, entry.tenant);
    cell(row, name(JobState, entry.job?.state ?? 0, "JOB_STATE_"));
    cell(row, `${Math.round(entry.job?.percent ?? 0)} %`);
    jobCell(row, entry);
  }
  if (reply.jobs.length === 0) cell(rows.insertRow(), "No jobs match.", "hint");
}

// -- actions ----------------------------------------------------------------------------------------

async function act(action: () => Promise<string>): Promise<void> {
  try {
    problem.textContent = await action();
  } catch (thrown) {
    problem.textContent = explain(thrown);
  }
  await refresh();
}

const retryOne = (jobId: string) => act(async () => said(await client.retryDeadLetters({ jobIds: [jobId] }), "retried"));
const discardOne = (jobId: string) => act(async () => said(await client.discardDeadLetters({ jobIds: [jobId] }), "discarded"));

function said(reply: { retriedJobIds?: string[]; discardedJobIds?: string[]; notRetried?: { jobId: string; reason: string }[]; notDiscarded?: { jobId: string; reason: string }[] }, verb: string): string {
  const done = reply.retriedJobIds ?? reply.discardedJobIds ?? [];
  const left = reply.notRetried ?? reply.notDiscarded ?? [];
  // Success is visible in the tables; what did not happen needs saying.
  return left.length ? `${done.length} ${verb}; not ${verb}: ${left.map((n) => `${n.jobId} (${n.reason})`).join("; ")}` : "";
}

function bulk(kind: "retry" | "discard"): void {
  const filter = deadLetterFilter();
  const everything = !filter.tenant && !filter.errorCode;
  const what = everything ? "every dead letter" : "every dead letter the filter shows";
  if (!confirm(`${kind === "retry" ? "Retry" : "Discard"} ${what}?`)) return;
  const request = { filter, all: everything };
  void act(async () => kind === "retry"
    ? said(await client.retryDeadLetters(request), "retried")
    : said(await client.discardDeadLetters(request), "discarded"));
}

// -- wiring -----------------------------------------------------------------------------------------

function fillSelect(id: string, enumObject: Record<string, string | number>, prefix: string, skip: string[] = []): void {
  const select = byId<HTMLSelectElement>(id);
  for (const [label, value] of Object.entries(enumObject)) {
    if (typeof value !== "number" || value === 0 || skip.includes(label)) continue;
    select.add(new Option(label.replace(prefix, ""), String(value)));
  }
}

let refreshing: Promise<void> | undefined;
let refreshFailed = false;

async function refresh(): Promise<void> {
  refreshing ??= (async () => {
    try {
      await Promise.all([showStats(), showHistory(), showDeadLetters(), showJobs()]);
      keyInput.removeAttribute("aria-invalid");
      if (refreshFailed) problem.textContent = "";
      refreshFailed = false;
    } catch (thrown) {
      problem.textContent = explain(thrown);
      refreshFailed = true;
    } finally {
      refreshing = undefined;
    }
  })();
  return refreshing;
}

fillSelect("dead-code", JobErrorCode, "JOB_ERROR_CODE_");
fillSelect("jobs-state", JobState, "JOB_STATE_", ["JOB_STATE_EXPIRED"]);
byId("key-status").textContent = token() ? "A key is saved in this browser." : "No key yet: calls will be refused.";
byId("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setToken(keyInput.value.trim());
  location.reload();
});
for (const id of ["dead-filter", "jobs-filter"]) {
  byId(id).addEventListener("submit", (event) => {
    event.preventDefault();
    void refresh();
  });
}
byId("retry-all").addEventListener("click", () => bulk("retry"));
byId("discard-all").addEventListener("click", () => bulk("discard"));
byId("pause-button").addEventListener("click", () => void act(async () => {
  await client.pauseIntake({ reason: byId<HTMLInputElement>("pause-reason").value.trim() });
  return "";
}));
byId("resume-button").addEventListener("click", () => void act(async () => {
  await client.resumeIntake({});
  return "";
}));
void refresh();
setInterval(() => void refresh(), REFRESH_MS);

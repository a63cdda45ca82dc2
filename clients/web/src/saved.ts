// The downloads this browser started, kept in localStorage so a reload (or a new tab) brings them
// back and resumes each watch from the last event it saw.

const KEY = "longhaul.downloads.v1";

export interface Saved {
  jobId: string;
  fileIds: string[];
  lastSeq: string; // bigint as text
  job?: unknown; // the last Job seen, as proto JSON
  traceId?: string; // the trace of the call that created the job
}

export function load(): Saved[] {
  try {
    const parsed: unknown = JSON.parse(localStorage.getItem(KEY) ?? "[]");
    return Array.isArray(parsed) ? (parsed as Saved[]).filter((s) => typeof s?.jobId === "string") : [];
  } catch {
    return []; // unreadable storage starts empty rather than breaking the page
  }
}

export function store(all: Saved[]): void {
  localStorage.setItem(KEY, JSON.stringify(all));
}

// Each call the page makes starts a trace of its own (a W3C traceparent header), unless the caller
// chose one (newTrace: a download keeps the trace it was created in). With tracing on, Envoy, the
// server and the worker continue it; on or off, an error the page shows names that trace, so that a
// person asking for help can quote it.

import { ConnectError, type Interceptor } from "@connectrpc/connect";

const traceIds = new WeakMap<ConnectError, string>();

function randomHex(bytes: number): string {
  return Array.from(crypto.getRandomValues(new Uint8Array(bytes)), (b) => b.toString(16).padStart(2, "0")).join("");
}

function tagged(thrown: unknown, traceId: string): ConnectError {
  const error = ConnectError.from(thrown);
  traceIds.set(error, traceId);
  return error;
}

// Errors of a stream arrive while its messages are read, after the call itself has returned.
async function* taggedStream<T>(messages: AsyncIterable<T>, traceId: string): AsyncIterable<T> {
  try {
    yield* messages;
  } catch (thrown) {
    throw tagged(thrown, traceId);
  }
}

export interface Trace {
  traceId: string;
  traceparent: string;
}

export function newTrace(): Trace {
  const traceId = randomHex(16);
  return { traceId, traceparent: `00-${traceId}-${randomHex(8)}-01` };
}

export const withTrace: Interceptor = (next) => async (request) => {
  let traceId = request.header.get("traceparent")?.split("-")[1];
  if (!traceId) {
    const trace = newTrace();
    traceId = trace.traceId;
    request.header.set("traceparent", trace.traceparent);
  }
  try {
    const response = await next(request);
    return response.stream ? { ...response, message: taggedStream(response.message, traceId) } : response;
  } catch (thrown) {
    throw tagged(thrown, traceId);
  }
};

// The trace an error happened in; "" for an error no call of the page raised.
export function traceIdOf(error: ConnectError): string {
  return traceIds.get(error) ?? "";
}

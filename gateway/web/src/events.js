// Server-sent events of one job over fetch() (EventSource cannot send the Authorization header), resuming with
// Last-Event-ID after a dropped connection.
import { ApiError, authHeaders } from "./api.js";

/** Parse one SSE block ("id: 3\nevent: progress\ndata: {...}") into {id, event, data}; null for comments. */
export function parseBlock(block) {
  const fields = { id: "", event: "message", data: [] };
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (name === "data") fields.data.push(value);
    else if (name === "id" || name === "event") fields[name] = value;
  }
  return fields.data.length ? { id: fields.id, event: fields.event, data: JSON.parse(fields.data.join("\n")) } : null;
}

async function* blocks(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      yield buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
    }
  }
}

/**
 * Call `onEvent({id, event, data})` for every event of the job until its "finished" event. A connection that
 * drops (network error or the server closing early) is reopened with `Last-Event-ID` = the last id seen, after
 * 0.5 s, 1 s, 2 s, ... (at most `maxRetries` in a row). HTTP errors (401, 404, ...) are thrown as ApiError.
 */
export async function followEvents(jobId, onEvent, { maxRetries = 8, onReconnect = () => {} } = {}) {
  let lastId = "";
  let retries = 0;
  for (;;) {
    let response;
    try {
      const extra = lastId ? { "Last-Event-ID": lastId, Accept: "text/event-stream" } : { Accept: "text/event-stream" };
      response = await fetch(`/v1/jobs/${encodeURIComponent(jobId)}/events`, { headers: authHeaders(extra) });
    } catch (networkError) {
      response = null;
      if (retries >= maxRetries) throw networkError;
    }
    if (response && !response.ok) {
      const body = await response.json().catch(() => ({}));
      const error = body.error ?? {};
      throw new ApiError(response.status, error.code ?? `HTTP ${response.status}`, error.message ?? "events failed",
        error.details ?? []);
    }
    if (response) {
      try {
        for await (const block of blocks(response.body)) {
          const event = parseBlock(block);
          if (!event) continue;
          retries = 0;
          lastId = event.id || lastId;
          onEvent(event);
          if (event.event === "finished") return;
        }
      } catch (streamError) {
        if (retries >= maxRetries) throw streamError;
      }
    }
    retries += 1;
    if (retries > maxRetries) throw new Error("the progress stream keeps closing; reload the page to retry");
    onReconnect(retries, lastId);
    await new Promise((resolve) => setTimeout(resolve, 500 * 2 ** (retries - 1)));
  }
}

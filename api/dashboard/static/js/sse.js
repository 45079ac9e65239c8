// Server-Sent Events over fetch(): EventSource cannot send an Authorization header.
// SSEParser follows the WHATWG event-stream format (fields, comments, CRLF / CR / LF line ends, chunk
// boundaries anywhere); followStream reconnects after a drop, resuming with Last-Event-ID.

import {ApiError, request} from "./api.js";

export class SSEParser {
  constructor() {
    this.buffer = "";
    this.data = [];
    this.event = "";
    this.id = null;        // the last event id seen (kept across events, as EventSource does)
    this.retry = null;     // reconnection delay the server asked for, ms
  }

  /** Feed decoded text; returns the events completed by it: {event, data, id}. */
  feed(text) {
    this.buffer += text;
    const events = [];
    for (;;) {
      const match = /\r\n|\r|\n/.exec(this.buffer);
      if (!match) break;
      // A lone CR at the very end may be the first half of a CRLF split across chunks: wait.
      if (match[0] === "\r" && match.index === this.buffer.length - 1) break;
      const line = this.buffer.slice(0, match.index);
      this.buffer = this.buffer.slice(match.index + match[0].length);
      const event = this.line(line);
      if (event) events.push(event);
    }
    return events;
  }

  /** The end of the stream: a trailing CR ends its line; an unfinished event is dropped (per spec). */
  end() {
    const events = this.buffer.endsWith("\r") ? this.feed("\n") : [];
    this.buffer = "";
    this.data = [];
    this.event = "";
    return events;
  }

  line(line) {
    if (line === "") {
      if (this.data.length === 0) {
        this.event = "";
        return null;
      }
      const event = {event: this.event || "message", data: this.data.join("\n"), id: this.id};
      this.data = [];
      this.event = "";
      return event;
    }
    if (line.startsWith(":")) return null; // a comment (keep-alive)
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.event = value;
    else if (field === "id") { if (!value.includes("\0")) this.id = value; }
    else if (field === "retry") { if (/^\d+$/.test(value)) this.retry = Number(value); }
    return null;
  }
}

/** Events of one response body, as they arrive. */
export async function* readEvents(body, parser = new SSEParser()) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  try {
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      yield* parser.feed(value);
    }
    yield* parser.end();
  } finally {
    reader.cancel().catch(() => {}); // left early (end event, abort): close the connection
  }
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, {once: true});
});

/**
 * Follow a job's event stream until its `end` event, or until `signal` aborts. Each event's data
 * is parsed JSON: onEvent({event, data, id}). A dropped connection is retried after the server's
 * `retry` delay with `Last-Event-ID` set, so nothing is missed or repeated. onState("open" |
 * "reconnecting" | "ended") reports the connection. A refusal (401, 404, 422) ends it: thrown.
 */
export async function followStream(path, {onEvent, onState = () => {}, signal, lastEventId = null} = {}) {
  let lastId = lastEventId;
  let delay = 1000;
  let connects = 0;
  while (!signal?.aborted) {
    try {
      const headers = {Accept: "text/event-stream"};
      if (lastId) headers["Last-Event-ID"] = lastId;
      const response = await request(path, {headers, signal, raw: true});
      connects += 1;
      onState("open", {connects, lastId});
      const parser = new SSEParser();
      parser.id = lastId;
      for await (const event of readEvents(response.body, parser)) {
        if (parser.retry !== null) delay = parser.retry;
        if (event.id) lastId = event.id;
        let data;
        try { data = JSON.parse(event.data); } catch { data = event.data; }
        onEvent({event: event.event, data, id: event.id});
        if (event.event === "end") {
          onState("ended", {connects, lastId});
          return lastId;
        }
      }
    } catch (err) {
      if (signal?.aborted) break;
      // Refused (401, 404, a bad Last-Event-ID...): retrying would not help. 408, 429, 5xx: retry.
      if (err instanceof ApiError && err.status < 500 && err.status !== 408 && err.status !== 429) throw err;
    }
    if (signal?.aborted) break;
    onState("reconnecting", {connects, lastId});
    await sleep(delay, signal);
  }
  return lastId;
}

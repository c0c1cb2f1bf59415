// The dashboard's one door to the bootstrap: the public API, with the tab's token.
const TOKEN_KEY = "snooze.token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

// A token in the address's fragment (/ui/#token=snz_...) is taken once and wiped from the
// address bar: a fragment never reaches a server, the history keeps no token.
export function tokenFromFragment() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    setToken(decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
}

export class ApiError extends Error {
  constructor(status, body) {
    const err = body && typeof body === "object" && body.error ? body.error : null;
    super(err ? `${err.code}: ${err.message}` : `HTTP ${status}`);
    this.status = status;
    this.code = err ? err.code : null;
    this.field = err ? err.field : null;
  }
}

function headers(extra = {}) {
  const h = { ...extra };
  const t = token();
  if (t) h.Authorization = `Bearer ${t}`;
  return h;
}

function parse(text) {
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return text; // a task id answers as plain text
  }
}

export async function call(path, { method = "GET", body } = {}) {
  const init = { method, headers: headers() };
  if (body !== undefined) {
    const plain = typeof body === "string";
    init.headers["Content-Type"] = plain ? "text/plain" : "application/json";
    init.body = plain ? body : JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  const data = parse(await resp.text());
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

// One of the original's verbs: GET without a body, POST with one.
export function verb(name, body, query = "") {
  const path = `/bootstrap?${name}${query}`;
  return body === undefined ? call(path) : call(path, { method: "POST", body });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function frame(raw) {
  const ev = { id: null, event: "message", data: "" };
  for (const line of raw.split("\n")) {
    if (!line || line.startsWith(":")) continue; // a keepalive
    const i = line.indexOf(":");
    const key = i < 0 ? line : line.slice(0, i);
    const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
    if (key === "id") ev.id = Number(value);
    else if (key === "event") ev.event = value;
    else if (key === "data") ev.data += (ev.data ? "\n" : "") + value;
  }
  return ev.data ? ev : null;
}

// Server-sent events from /events, read with fetch (EventSource cannot send a token), resumed
// after the last id seen whenever the stream breaks. onState("live" | "reconnecting", error).
export async function follow(after, onEvent, onState) {
  let last = after;
  for (;;) {
    try {
      const h = headers({ Accept: "text/event-stream" });
      if (last !== null && last !== undefined) h["Last-Event-ID"] = String(last);
      const resp = await fetch("/events", { headers: h });
      if (!resp.ok) throw new ApiError(resp.status, parse(await resp.text()));
      onState("live");
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value.replace(/\r\n?/g, "\n");
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const ev = frame(buf.slice(0, i));
          buf = buf.slice(i + 2);
          if (!ev) continue;
          if (ev.id !== null && !Number.isNaN(ev.id)) last = ev.id;
          try {
            onEvent(JSON.parse(ev.data));
          } catch (e) {
            console.error("event not shown", e);
          }
        }
      }
      onState("reconnecting", null);
    } catch (e) {
      onState("reconnecting", e);
    }
    await sleep(1000);
  }
}

// The dashboard's only way to the server: /api/v1 with the bearer token kept in this tab's sessionStorage.

const TOKEN_KEY = "ingot.token";

export class Unauthorized extends Error {}

export class ApiError extends Error {
  constructor(status, message, details) {
    super(message);
    this.status = status;
    this.details = details;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

function query(params) {
  const search = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== null && v !== undefined && v !== "") search.set(k, String(v));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/** What the server said went wrong: ingot's {error, details}, or FastAPI's {detail}. */
function problem(status, body, fallback) {
  if (body && typeof body.error === "string") {
    return new ApiError(status, body.error, Array.isArray(body.details) ? body.details.map(String) : []);
  }
  if (body && typeof body.detail === "string") return new ApiError(status, body.detail, []);
  if (body && Array.isArray(body.detail)) {
    const lines = body.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`);
    return new ApiError(status, "the request was refused", lines);
  }
  return new ApiError(status, fallback, []);
}

export async function call(path, {method = "GET", params, body, signal, authToken} = {}) {
  const headers = {
    Accept: "application/json",
    Authorization: `Bearer ${authToken ?? token() ?? ""}`,
  };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(`/api/v1/${path}${query(params)}`, {
      method, headers, signal, cache: "no-store", credentials: "omit",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, `cannot reach ingot serve (${err.message})`, []);
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (response.status === 401) {
    throw new Unauthorized(data && typeof data.detail === "string" ? data.detail : "a valid token is needed");
  }
  if (!response.ok) throw problem(response.status, data, `${response.status} ${response.statusText}`);
  return data;
}

export const get = (path, params, signal) => call(path, {params, signal});
export const post = (path, body) => call(path, {method: "POST", body});

/**
 * Follow an operation's server-sent-event stream (read with fetch: EventSource cannot send the token) until
 * its final `end` event, which is returned; each event before it goes to `onEvent`. A broken stream is
 * opened again from the last event seen.
 */
export async function follow(operation, onEvent) {
  let after = 0;
  for (let breaks = 0; breaks < 10; breaks += 1) {
    let response;
    try {
      response = await fetch(`/api/v1/operations/${encodeURIComponent(operation)}/events${query({after})}`, {
        headers: {Accept: "text/event-stream", Authorization: `Bearer ${token() ?? ""}`},
        cache: "no-store", credentials: "omit",
      });
    } catch (err) {
      await new Promise((resolve) => setTimeout(resolve, 500 * (breaks + 1)));
      continue;
    }
    if (response.status === 401) throw new Unauthorized("a valid token is needed");
    if (!response.ok) {
      let data = null;
      try { data = await response.json(); } catch { data = null; }
      throw problem(response.status, data, `${response.status} ${response.statusText}`);
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5)).join("\n");
          if (!data) continue; // a keep-alive comment
          const event = JSON.parse(data);
          after = event.seq;
          if (event.event === "end") return event;
          onEvent(event);
        }
      }
    } catch (err) {
      if (err instanceof SyntaxError) throw err;
    }
  }
  throw new ApiError(0, `lost the progress of operation ${operation}; see the history`, []);
}

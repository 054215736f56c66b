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

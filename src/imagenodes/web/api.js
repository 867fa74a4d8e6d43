// The service's HTTP API as the page uses it: every call carries the bearer token when
// the server has one. The token is typed by the user and kept in sessionStorage only
// (gone with the tab); the page itself never contains a secret.

const TOKEN_KEY = "imagenodes.token";

/** The API root, relative to the page (works when the app is mounted under a prefix). */
export const API = new URL("v1/", document.baseURI).href.replace(/\/$/, "");

export class ApiError extends Error {
  /** An error body of the service: {code, field, message, solution}. */
  constructor(error, status) {
    super(`${error.code}: ${error.message}`);
    this.error = error;
    this.status = status;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

function headers(extra = {}) {
  const out = { ...extra };
  const t = token();
  if (t) out.Authorization = `Bearer ${t}`;
  return out;
}

/** fetch() under the API root; JSON in and out; coded errors become ApiError. */
export async function call(path, { method = "GET", json, body, headers: extra } = {}) {
  const init = { method, headers: headers(extra) };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  const res = await fetch(`${API}${path}`, init);
  const data = await res.json().catch(() => ({}));
  if (!res.ok) {
    const error = data.error || { code: `HTTP_${res.status}`, message: res.statusText, field: null };
    throw new ApiError(error, res.status);
  }
  return data;
}

/** An image of the service as an object URL (an <img src> could not send the token). */
export async function imageUrl(url) {
  const res = await fetch(new URL(url, document.baseURI), { headers: headers() });
  if (!res.ok) throw new Error(`image ${url}: HTTP ${res.status}`);
  return URL.createObjectURL(await res.blob());
}

export async function upload(file) {
  const form = new FormData();
  form.append("file", file);
  return call("/uploads", { method: "POST", body: form });
}

/**
 * Follow a job's Server-Sent Events until job.completed. fetch() and a small parser
 * rather than EventSource, which cannot send an Authorization header. ``signal`` stops it.
 */
export async function follow(jobId, onEvent, signal) {
  const res = await fetch(`${API}/jobs/${jobId}/events`, { headers: headers(), signal });
  if (!res.ok) throw new Error(`events of ${jobId}: HTTP ${res.status}`);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (!data) continue; // a ping or comment
      const event = JSON.parse(data);
      onEvent(event);
      if (event.type === "job.completed") {
        reader.cancel().catch(() => {});
        return;
      }
    }
  }
}

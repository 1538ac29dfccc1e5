// The console's one door to the API: JSON requests with the in-memory access token, and
// the session kept by the refresh cookie (README: Design, "The console's session").
//
// The access token lives only in this module's memory: no storage an injected script or
// another tab could read. The refresh token is an HttpOnly cookie this code never sees;
// `refresh()` spends it (POST auth/refresh) for a new access token and its successor.

const CSRF = { "X-Smartgen-Session": "refresh" };
let token = null;
let expiresAt = 0;
let timer = null;
let inFlight = null;
const listeners = new Set();
// Signing out in one tab signs out the console's other tabs (their cookie is gone too).
const tabs = "BroadcastChannel" in window ? new BroadcastChannel("smartgen-session") : null;
if (tabs) {
  tabs.addEventListener("message", (event) => {
    if (event.data === "signed-out" && token) forget();
  });
}

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.code = (body && body.error) || "http_error";
    this.details = (body && body.details) || [];
  }
}

export function accessToken() {
  return token;
}

// `fn(session)` after each sign-in or refresh; `fn(null)` when the session ends.
export function onSession(fn) {
  listeners.add(fn);
}

function adopt(body) {
  token = body.accessToken;
  expiresAt = Date.parse(body.expiresAt) || Date.now() + 60_000;
  clearTimeout(timer);
  // Renew at four fifths of the lifetime, so a request never carries a stale token.
  const wait = Math.max(5_000, (expiresAt - Date.now()) * 0.8);
  timer = setTimeout(() => {
    refresh().catch((err) => {
      if (err.status === 401 || err.status === 403) forget();
    });
  }, wait);
  for (const fn of listeners) fn(body);
}

export function forget() {
  token = null;
  expiresAt = 0;
  clearTimeout(timer);
  for (const fn of listeners) fn(null);
}

async function parse(response) {
  if (response.status === 204) return null;
  const text = await response.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return { error: "bad_answer", message: text.slice(0, 200) };
  }
}

async function refreshOnce() {
  const response = await fetch("auth/refresh", {
    method: "POST",
    headers: CSRF,
    credentials: "same-origin",
  });
  const body = await parse(response);
  if (!response.ok) throw new ApiError(response.status, body);
  adopt(body);
  return body;
}

// A new access token from the refresh cookie. Tabs of the same console take turns (Web
// Locks): two tabs spending the same refresh token at once would look like a stolen copy
// and end the session.
export function refresh() {
  if (!inFlight) {
    const run = navigator.locks
      ? navigator.locks.request("smartgen-refresh", refreshOnce)
      : refreshOnce();
    inFlight = run.finally(() => {
      inFlight = null;
    });
  }
  return inFlight;
}

export async function signIn(action, email, password) {
  const path = action === "register" ? "auth/register" : "auth/login";
  const body = await request("POST", `${path}?session=cookie`, {
    body: { email, password },
    anonymous: true,
  });
  adopt(body);
  return body;
}

export async function signOut() {
  try {
    if (token) await request("POST", "auth/logout", { retry: false });
  } finally {
    forget();
    if (tabs) tabs.postMessage("signed-out");
  }
}

// One API call: JSON in and out; an `ApiError` for any answer but 2xx. A 401 on a
// signed-in call refreshes the session once and tries again.
export async function request(method, path, { body, retry = true, anonymous = false, raw = false } = {}) {
  const headers = {};
  if (token && !anonymous) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  if (response.status === 401 && token && !anonymous && retry) {
    try {
      await refresh();
    } catch {
      forget();
      throw new ApiError(401, { error: "session_ended", message: "Your session has ended; sign in again." });
    }
    return request(method, path, { body, retry: false, raw });
  }
  if (raw && response.ok) return response;
  const parsed = await parse(response);
  if (!response.ok) throw new ApiError(response.status, parsed);
  return parsed;
}

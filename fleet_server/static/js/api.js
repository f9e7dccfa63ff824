// Talks to the fleet server's HTTP API with the bearer token kept in sessionStorage (gone when the tab closes).

const TOKEN_KEY = "roadmon.token";
const API = "api/v1";

export class AuthError extends Error {}

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

// The demo prints a link like /#token=...; a fragment never reaches the server's logs. Move it into
// sessionStorage and take it out of the address bar.
export function adoptTokenFromUrl() {
  const match = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
  if (!match) return;
  setToken(decodeURIComponent(match[1]));
  history.replaceState(null, "", location.pathname + location.search);
}

async function request(path, options = {}) {
  const token = getToken();
  if (!token) throw new AuthError("not signed in");
  const headers = { Authorization: `Bearer ${token}`, ...(options.headers || {}) };
  const response = await fetch(`${API}/${path}`, { ...options, headers });
  if (response.status === 401 || response.status === 403) {
    const text = await response.text();
    throw new AuthError(`${response.status}: ${text || response.statusText}`);
  }
  if (!response.ok) {
    const text = await response.text();
    let detail = null;
    try { detail = JSON.parse(text).detail; } catch { /* not a Problem body */ }
    throw Object.assign(new Error(`${options.method || "GET"} ${path}: ${response.status} ${text.slice(0, 200)}`),
      { status: response.status, detail });
  }
  return response;
}

export async function getJson(path) {
  return (await request(path)).json();
}

// The body and its ETag (a defect's version): a change sent with it is refused (412) if someone changed the
// defect since, instead of overwriting what the other manager did unseen.
export async function getJsonTagged(path) {
  const response = await request(path);
  return { body: await response.json(), etag: response.headers.get("ETag") };
}

export async function patchJson(path, body, etag = null) {
  const headers = { "Content-Type": "application/json" };
  if (etag) headers["If-Match"] = etag;
  const response = await request(path, { method: "PATCH", headers, body: JSON.stringify(body) });
  return response.json();
}

// <img src> cannot send an Authorization header, so thumbnails come in as blobs.
export async function imageUrl(path) {
  const blob = await (await request(path)).blob();
  return URL.createObjectURL(blob);
}

// A failed fetch (server down, network gone) is a TypeError with the browser's own words ("Failed to fetch").
export function describe(err) {
  return err instanceof TypeError ? `Server unreachable (${err.message})` : err.message;
}

// An export of the API (CSV, GeoJSON) saved as a file: a link cannot carry the Authorization header.
export async function download(path, filename) {
  const url = URL.createObjectURL(await (await request(path)).blob());
  const link = Object.assign(document.createElement("a"), { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

export function query(params) {
  const entries = Object.entries(params).filter(([, v]) => v !== undefined && v !== null && v !== "");
  return entries.length ? "?" + new URLSearchParams(entries).toString() : "";
}

// The dashboard's own settings (basemap tiles); served without a token since they hold no data.
export async function dashboardConfig() {
  try {
    const response = await fetch("dashboard-config.json");
    if (response.ok) return await response.json();
  } catch (err) {
    console.warn("dashboard config unavailable, using defaults", err);
  }
  return {};
}

// The server's own /health (no token): "ok", or what is degraded. Null when it cannot be read (an older server,
// a proxy that keeps /health private): then nothing is said.
export async function serverHealth() {
  try {
    const response = await fetch("health", { cache: "no-store" });
    const body = await response.json();
    return body && typeof body === "object" ? body : null;
  } catch {
    return null;
  }
}

// The gateway's HTTP/JSON bridge as the page uses it: bearer token from sessionStorage, JSON errors.

const TOKEN_KEY = "synchuman.token";

/** An error answer of the bridge: {"error": {"code", "message", "details"}} plus the HTTP status. */
export class ApiError extends Error {
  constructor(status, code, message, details = []) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }

  /** Every field violation of a google.rpc.BadRequest detail, as "field: description". */
  get violations() {
    return this.details
      .filter((d) => d["@type"] === "google.rpc.BadRequest")
      .flatMap((d) => d.field_violations ?? [])
      .map((v) => `${v.field}: ${v.description}`);
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) ?? "";
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
}

function headers(extra = {}) {
  const auth = token() ? { Authorization: `Bearer ${token()}` } : {};
  return { ...auth, ...extra };
}

async function failure(response) {
  let body = {};
  try {
    body = await response.json();
  } catch {
    // not JSON: keep the status text
  }
  const error = body.error ?? {};
  return new ApiError(response.status, error.code ?? `HTTP ${response.status}`,
    error.message ?? (response.statusText || "request failed"), error.details ?? []);
}

/** fetch() with the token; throws ApiError for any non-2xx answer. */
export async function request(path, init = {}) {
  const response = await fetch(path, { ...init, headers: headers(init.headers) });
  if (!response.ok) throw await failure(response);
  return response;
}

export async function submitJob(file, optionsJson) {
  const form = new FormData();
  form.append("image", file, file.name || "photo");
  if (optionsJson.trim()) form.append("options", optionsJson.trim());
  const response = await request("/v1/jobs", { method: "POST", body: form });
  return (await response.json()).job;
}

/** The gateway's named output profiles (standard first), each with its options and effective options. */
export async function listProfiles() {
  return (await (await request("/v1/profiles")).json()).profiles ?? [];
}

export async function getJob(id) {
  return (await (await request(`/v1/jobs/${encodeURIComponent(id)}`)).json()).job;
}

export async function cancelJob(id) {
  return (await (await request(`/v1/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" })).json()).job;
}

/** A job's file as a Blob (artifacts need the token, so plain links cannot fetch them). */
export async function artifact(id, name) {
  return (await request(`/v1/jobs/${encodeURIComponent(id)}/artifacts/${encodeURIComponent(name)}`)).blob();
}

export { headers as authHeaders };

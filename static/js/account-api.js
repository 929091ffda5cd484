// The account and admin endpoints (issue 24), beside api.js's chat ones.

import { ApiError, api } from "./api.js";

function xsrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)_xsrf=([^;]*)/);
  return match ? decodeURIComponent(match[1]) : "";
}

// JSON in and out, or a raw body (a picture); errors as api.js words them.
async function call(method, path, body, raw = false) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-XSRFToken"] = xsrfToken();
  if (body !== undefined && !raw) headers["Content-Type"] = "application/json";
  let reply;
  try {
    reply = await fetch(path, { method, headers, credentials: "same-origin", cache: "no-store",
      body: body === undefined ? undefined : raw ? body : JSON.stringify(body) });
  } catch {
    throw new ApiError(0, null, "Cannot reach the server. Check your connection and try again.");
  }
  const data = reply.status === 204 ? null : await reply.json().catch(() => null);
  if (!reply.ok) {
    let text = `The request failed (${reply.status}).`;
    if (data && typeof data.detail === "string") text = data.detail;
    else if (data && typeof data === "object") {
      const [field, messages] = Object.entries(data)[0] || [];
      if (field) text = `${field.replace(/_/g, " ")}: ${[].concat(messages)[0]}`;
    }
    throw new ApiError(reply.status, data, text[0].toUpperCase() + text.slice(1));
  }
  return data;
}

const user = (username) => `/api/admin/users/${encodeURIComponent(username)}/`;

export const accounts = {
  ...api,
  signUpWith: (username, password, invite) =>
    call("POST", "/auth/users/create/", { username, password, ...(invite ? { invite } : {}) }),
  updateProfile: (fields) => call("PATCH", "/auth/me/", fields),
  setAvatar: (file) => call("PUT", "/auth/me/avatar/", file, true),
  changePassword: (oldPassword, newPassword) =>
    call("POST", "/auth/password/", { old_password: oldPassword, new_password: newPassword }),
  signOutOthers: () => call("POST", "/auth/sessions/others/"),
  deleteAccount: (password) => call("DELETE", "/auth/me/", { password }),
  requestReset: (username) => call("POST", "/auth/password/reset/", { username }),
  confirmReset: (token, newPassword) =>
    call("POST", "/auth/password/reset/confirm/", { token, new_password: newPassword }),
  users: (q, cursor = "") => call("GET", `/api/admin/users/?${new URLSearchParams({ q, cursor })}`),
  setUser: (username, fields) => call("PATCH", user(username), fields),
  invites: () => call("GET", "/api/admin/invites/"),
  createInvite: (uses, hours) => call("POST", "/api/admin/invites/", { uses, expires_in_hours: hours }),
  revokeInvite: (code) => call("DELETE", `/api/admin/invites/${encodeURIComponent(code)}/`),
  stats: () => call("GET", "/api/admin/stats/"),
};

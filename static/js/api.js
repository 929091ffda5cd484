// The JSON API, authenticated by the HttpOnly login cookie. Writes carry the
// _xsrf cookie's value in X-XSRFToken (the server checks it for cookie auth).

export class ApiError extends Error {
  constructor(status, body, message) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

function xsrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)_xsrf=([^;]*)/);
  return match ? decodeURIComponent(match[1]) : "";
}

// The first readable error of a DRF-style body: {"detail": ...} or {"field": [...]}.
function errorText(body, fallback) {
  if (body && typeof body === "object") {
    if (typeof body.detail === "string") return body.detail;
    for (const [field, value] of Object.entries(body)) {
      const text = Array.isArray(value) ? value[0] : value;
      if (typeof text !== "string") continue;
      return field === "non_field_errors" ? text : `${field[0].toUpperCase()}${field.slice(1)}: ${text}`;
    }
  }
  return fallback;
}

// keepalive lets a request finish after the page is left (at most 64 KB).
async function request(method, path, body, { keepalive = false } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-XSRFToken"] = xsrfToken();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let reply;
  try {
    reply = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      keepalive,
      cache: "no-store",
    });
  } catch {
    throw new ApiError(0, null, "Cannot reach the server. Check your connection and try again.");
  }
  let data = null;
  if (reply.status !== 204) {
    try {
      data = await reply.json();
    } catch {
      data = null;
    }
  }
  if (!reply.ok) {
    const fallback = reply.status >= 500
      ? "The server is having trouble right now. Try again in a moment."
      : `The request failed (${reply.status}).`;
    throw new ApiError(reply.status, data, errorText(data, fallback));
  }
  return data;
}

export const api = {
  me: () => request("GET", "/auth/me/"),
  signIn: (username, password) => request("POST", "/auth/jwt/create/", { username, password }),
  signUp: (username, password) => request("POST", "/auth/users/create/", { username, password }),
  signOut: () => request("POST", "/auth/logout/"),
  chats: () => request("GET", "/api/chats/"),
  // {chats, has_more}: the first page, or the one after a chat's cursor.
  chatPage: (before) => request("GET", `/api/chats/?paged=1${before ? `&before=${encodeURIComponent(before)}` : ""}`),
  newChat: () => request("POST", "/api/chats/"),
  chat: (uri) => request("GET", `/api/chats/${uri}/`),
  join: (uri) => request("PATCH", `/api/chats/${uri}/`, {}),
  history: (uri, params) => request("GET", `/api/chats/${uri}/messages/?${new URLSearchParams(params)}`),
  markRead: (uri, seq, options) => request("PUT", `/api/chats/${uri}/read/`, { seq }, options),
  post: (uri, message, clientId, options) =>
    request("POST", `/api/chats/${uri}/messages/`, { message, client_id: clientId }, options),
  edit: (uri, id, message) => request("PATCH", `/api/chats/${uri}/messages/${id}/`, { message }),
  deleteMessage: (uri, id) => request("DELETE", `/api/chats/${uri}/messages/${id}/`),
  react: (uri, id, emoji, on) =>
    request(on ? "PUT" : "DELETE", `/api/chats/${uri}/messages/${id}/reactions/${encodeURIComponent(emoji)}/`),
  // Your own username leaves; another's removes them (owner and moderators).
  removeMember: (uri, username) => request("DELETE", `/api/chats/${uri}/members/${encodeURIComponent(username)}/`),
  setRole: (uri, username, role) => request("PUT", `/api/chats/${uri}/members/${encodeURIComponent(username)}/`, { role }),
  ban: (uri, username) => request("POST", `/api/chats/${uri}/bans/`, { username }),
  unban: (uri, username) => request("DELETE", `/api/chats/${uri}/bans/${encodeURIComponent(username)}/`),
  search: (params) => request("GET", `/api/search/?${new URLSearchParams(params)}`),
  lock: (uri, locked) => request("PATCH", `/api/chats/${uri}/`, { locked }),
  // Talking to people.
  setRoomInfo: (uri, info) => request("PATCH", `/api/chats/${uri}/`, info),
  startDm: (username) => request("POST", "/api/dms/", { username }),
  blocks: () => request("GET", "/api/blocks/"),
  block: (username) => request("PUT", `/api/blocks/${encodeURIComponent(username)}/`),
  unblock: (username) => request("DELETE", `/api/blocks/${encodeURIComponent(username)}/`),
  // Reaching people who are away (notifications.js).
  setNotificationLevel: (uri, level) => request("PUT", `/api/chats/${uri}/notifications/`, { level }),
  pushKey: () => request("GET", "/api/push/key"),
  addPushSubscription: (subscription) => request("POST", "/api/push/subscriptions/", subscription),
};

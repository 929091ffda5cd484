// Reaching people who are away (issue 21): system notifications while the tab
// is hidden or shows another chat, the `focus` frame that holds pushes back
// while a chat is open and visible, and Web Push through /sw.js.
//
// Until the page reads the user stream itself (the `page` branch), this module
// keeps its own /ws/ stream without subscriptions (events only, no signals).
// Permission is only ever asked from the button (a user gesture), never on load.

import { api } from "./api.js";
import { h } from "./dom.js";

const TEXT_CHARS = 100;
const RETRY_MS = [1000, 2000, 5000, 10000, 30000];

let app = null;
let ws = null;
let attempt = 0;
let shown = null; // the uri of the chat on screen, or null
const chats = new Map(); // uri -> { name, kind, notifications }

export function startNotifications(theApp) {
  if (app || !("WebSocket" in window)) return;
  app = theApp;
  document.addEventListener("visibilitychange", sendFocus);
  window.addEventListener("focus", sendFocus);
  if ("serviceWorker" in navigator) {
    navigator.serviceWorker.register("/sw.js", { scope: "/" }).catch(() => {});
    // A click on a push: the worker asks the open tab to show the chat.
    navigator.serviceWorker.addEventListener("message", (event) => {
      if (event.data && event.data.type === "open" && app) app.navigate(`/chats/${event.data.uri}/`);
    });
  }
  connect();
}

export function stopNotifications() {
  app = null;
  if (ws) ws.close();
  ws = null;
}

// The page now shows this chat (null: another page).
export function showing(uri) {
  shown = uri;
  sendFocus();
}

function visibleUri() {
  return document.visibilityState === "visible" ? shown : null;
}

function sendFocus() {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "focus", uri: visibleUri() }));
}

function connect() {
  if (!app) return;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  ws = new WebSocket(`${scheme}//${location.host}/ws/`);
  ws.onmessage = (event) => onFrame(JSON.parse(event.data));
  ws.onopen = () => {
    attempt = 0;
    sendFocus();
  };
  ws.onclose = (event) => {
    ws = null;
    delete document.body.dataset.notifications;
    if (!app || event.code === 1008) return; // signed out: nothing to resume
    setTimeout(connect, RETRY_MS[Math.min(attempt++, RETRY_MS.length - 1)]);
  };
}

function remember(chat) {
  chats.set(chat.uri, { name: chat.kind === "dm" && chat.other ? chat.other.username : chat.name || "Chat",
    kind: chat.kind, notifications: chat.notifications || (chat.kind === "dm" ? "all" : "mentions") });
}

function onFrame(frame) {
  if (frame.type === "chats") {
    frame.chats.forEach(remember);
    document.body.dataset.notifications = "live"; // what arrives from now on can notify
  }
  else if (frame.type === "chat") remember(frame.chat);
  else if (frame.type === "chat_gone") chats.delete(frame.uri);
  else if (frame.type === "message") maybeNotify(frame);
}

// Whether a message notifies me: not mine, and my level here allows it.
export function notifiable(message, me, chat) {
  if (!chat || !me || message.user.id === me.id || message.deleted) return false;
  if (chat.notifications === "none") return false;
  if (chat.notifications === "all" || chat.kind === "dm") return true;
  const mine = me.username.toLowerCase();
  return Boolean(message.mentions_room)
    || (message.mentions || []).some((name) => name.toLowerCase() === mine);
}

function maybeNotify(message) {
  if (!app || !("Notification" in window) || Notification.permission !== "granted") return;
  const chat = chats.get(message.uri);
  if (!notifiable(message, app.me, chat) || visibleUri() === message.uri) return;
  const sender = message.user.username;
  const note = new Notification(chat.kind === "dm" ? sender : `${sender} · ${chat.name}`, {
    body: (message.message || "").slice(0, TEXT_CHARS), tag: message.uri,
    data: { uri: message.uri },
  });
  note.onclick = () => {
    window.focus();
    app.navigate(`/chats/${message.uri}/`);
    note.close();
  };
}

function base64urlToBytes(text) {
  const padded = (text + "===".slice((text.length + 3) % 4)).replace(/-/g, "+").replace(/_/g, "/");
  return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
}

// Permission (on this click), then this device's push subscription.
async function enable(button) {
  if (!("Notification" in window)) return;
  const permission = await Notification.requestPermission();
  button.hidden = permission !== "default";
  if (permission !== "granted" || !("serviceWorker" in navigator) || !("PushManager" in window)) return;
  try {
    const registration = await navigator.serviceWorker.ready;
    const { key } = await api.pushKey();
    const subscription = await registration.pushManager.subscribe({
      userVisibleOnly: true, applicationServerKey: base64urlToBytes(key) });
    const { endpoint, keys } = subscription.toJSON();
    await api.addPushSubscription({ endpoint, keys });
  } catch {
    // Desktop notifications still work while a tab is open.
  }
}

// The button that asks for permission; hidden once it was answered.
export function notificationsButton() {
  const button = h("button", { type: "button", class: "button secondary enable-notifications",
    text: "Enable notifications" });
  button.hidden = !("Notification" in window) || Notification.permission !== "default";
  button.addEventListener("click", () => enable(button));
  return button;
}

// Reaching people who are away (issue 21): system notifications while the tab
// is hidden or shows another chat, the `focus` frame that holds pushes back
// while a chat is open and visible, and Web Push through /sw.js.
//
// It reads the page's user stream (app.stream): its chats and message events,
// and sends the focus frame through it; levels as they change (levels.js).
// Permission is only ever asked from a button (a user gesture), never on load:
// the home screen's, or the settings page's, which also shows this browser's
// push registration.

import { api } from "./api.js";
import { h } from "./dom.js";
import { defaultLevel, onLevel } from "./levels.js";

const TEXT_CHARS = 100;

let app = null;
let shown = null; // the uri of the chat on screen, or null
let stopLevel = null;
const chats = new Map(); // uri -> { name, kind, notifications }

export function startNotifications(theApp) {
  if (app) return;
  app = theApp;
  stopLevel = onLevel((uri, level) => {
    const chat = chats.get(uri);
    if (chat) chat.notifications = level;
  });
  document.addEventListener("visibilitychange", sendFocus);
  window.addEventListener("focus", sendFocus);
  if ("serviceWorker" in navigator) {
    navigator.serviceWorker.register("/sw.js", { scope: "/" }).catch(() => {});
    // A click on a push: the worker asks the open tab to show the chat.
    navigator.serviceWorker.addEventListener("message", (event) => {
      if (event.data && event.data.type === "open" && app) app.navigate(`/chats/${event.data.uri}/`);
    });
  }
}

export function stopNotifications() {
  if (stopLevel) stopLevel();
  stopLevel = app = null;
  chats.clear();
  delete document.body.dataset.notifications;
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
  if (app && app.stream) app.stream.sendRaw({ type: "focus", uri: visibleUri() });
}

function remember(chat) {
  chats.set(chat.uri, { name: chat.kind === "dm" && chat.other ? chat.other.username : chat.name || "Chat",
    kind: chat.kind, notifications: chat.notifications || defaultLevel(chat.kind) });
}

// A frame of the page's user stream.
export function onStreamFrame(frame) {
  if (!app) return;
  if (frame.type === "chats") {
    chats.clear();
    frame.chats.forEach(remember);
    document.body.dataset.notifications = "live"; // what arrives from now on can notify
    sendFocus(); // a new connection: the server knows nothing of this tab yet
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

// What this browser lets the page do: "granted", "denied", "default" (not
// asked yet) or "unsupported".
export function permission() {
  return "Notification" in window ? Notification.permission : "unsupported";
}

export function pushSupported() {
  return "serviceWorker" in navigator && "PushManager" in window;
}

// Whether this browser is registered for pushes while no tab is open:
// "registered", "unregistered" or "unsupported".
export async function pushState() {
  if (!pushSupported()) return "unsupported";
  const registration = await navigator.serviceWorker.getRegistration("/");
  const subscription = registration && await registration.pushManager.getSubscription();
  return subscription ? "registered" : "unregistered";
}

// Register this browser for pushes (permission granted); throws when it cannot.
export async function registerPush() {
  const registration = await navigator.serviceWorker.ready;
  const { key } = await api.pushKey();
  const subscription = await registration.pushManager.subscribe({
    userVisibleOnly: true, applicationServerKey: base64urlToBytes(key) });
  const { endpoint, keys } = subscription.toJSON();
  await api.addPushSubscription({ endpoint, keys });
}

// Ask for permission (on the click that calls this); the answer.
export async function askPermission() {
  return "Notification" in window ? Notification.requestPermission() : "unsupported";
}

// The button that asks for permission, then registers this device for pushes;
// hidden once it was answered.
export function notificationsButton() {
  const button = h("button", { type: "button", class: "button secondary enable-notifications",
    text: "Enable notifications" });
  button.hidden = permission() !== "default";
  button.addEventListener("click", async () => {
    const answer = await askPermission();
    button.hidden = answer !== "default";
    // Without pushes, desktop notifications still work while a tab is open.
    if (answer === "granted" && pushSupported()) registerPush().catch(() => {});
  });
  return button;
}

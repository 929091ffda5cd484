// My notification level of each chat (issue 21): all messages, mentions only,
// or nothing. The chat's menu and the settings page set it (PUT); whoever
// shows it listens here, and hears of changes made in this tab and, through
// the user stream's `notifications` frame, in any other tab or device of mine.

import { api } from "./api.js";

const NAMES = { all: "All messages", mentions: "Mentions only", none: "Nothing" };

// The server's defaults: DMs notify of everything, rooms of mentions.
export function defaultLevel(kind) {
  return kind === "dm" ? "all" : "mentions";
}

// What a level does in a chat of this kind: in a DM every message is for me,
// so "mentions" notifies of all of them and is not offered there.
export function effectiveLevel(level, kind) {
  const chosen = level || defaultLevel(kind);
  return kind === "dm" && chosen === "mentions" ? "all" : chosen;
}

// The choices for a chat of this kind: [{ level, label }], the default marked.
export function levelChoices(kind) {
  const levels = kind === "dm" ? ["all", "none"] : ["all", "mentions", "none"];
  return levels.map((level) => ({ level,
    label: level === defaultLevel(kind) ? `${NAMES[level]} (default)` : NAMES[level] }));
}

const listeners = new Set();

// listener(uri, level) on every change; returns what stops it.
export function onLevel(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

// A level changed (the stream's frame, or this tab's own save).
export function levelChanged(uri, level) {
  for (const listener of [...listeners]) listener(uri, level);
}

// Store it; the caller shows the error when it fails (the level stays as it was).
export async function saveLevel(uri, level) {
  const { level: saved } = await api.setNotificationLevel(uri, level);
  levelChanged(uri, saved);
  return saved;
}

// The message list. Confirmed messages are kept in seq order, one element per
// seq whatever the mix of history pages, catch-up and live frames that brings
// them; the sender's own pending messages sit below them until their client_id
// comes back on the stream.
//
// A message changes through events (edit, delete, reaction), each with its
// own seq. Every message carries the seq of the last event that changed it
// (last_event_seq): an event applies only when it is newer, and a copy of the
// message (a history page, a catch-up) replaces the shown one only when newer,
// so nothing is applied twice and an older page never undoes a change.

import { h, icon, richText } from "./dom.js";
import { showPicker } from "./menu.js";
import { hiddenBody, isBlocked, mentionsMe, messageBody, personAvatar, personName } from "./people.js";

const GROUP_WINDOW_MS = 5 * 60 * 1000;

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "short" });
const dayFormat = new Intl.DateTimeFormat(undefined, { weekday: "long", month: "long", day: "numeric" });
const yearDayFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "long" });

function startOfDay(ms) {
  const day = new Date(ms);
  day.setHours(0, 0, 0, 0);
  return day.getTime();
}

function dayLabel(ms) {
  const today = startOfDay(Date.now());
  const day = startOfDay(ms);
  if (day === today) return "Today";
  if (day === today - 86_400_000) return "Yesterday";
  const date = new Date(ms);
  return date.getFullYear() === new Date().getFullYear() ? dayFormat.format(date) : yearDayFormat.format(date);
}

// Events that arrived before their message was shown, kept to apply when it is.
const EARLY_LIMIT = 2000;

function lastChange(message) {
  return message.last_event_seq ?? message.seq;
}

// A message after one of its events (the server folds them the same way).
export function applyEvent(message, event) {
  const next = { ...message, last_event_seq: event.seq };
  if (message.deleted) return next;
  if (event.type === "edit") {
    Object.assign(next, { message: event.message, version: event.version, edited: event.edited,
      html: event.html, mentions: event.mentions || [], mentions_room: Boolean(event.mentions_room) });
  } else if (event.type === "delete") {
    Object.assign(next, { message: "", deleted: true, reactions: {}, html: "", mentions: [], mentions_room: false });
  } else if (event.type === "reaction") {
    const reactions = { ...(message.reactions || {}) };
    const users = (reactions[event.emoji] || []).filter((name) => name !== event.user.username);
    if (event.op === "add") users.push(event.user.username);
    if (users.length) reactions[event.emoji] = users;
    else delete reactions[event.emoji];
    next.reactions = reactions;
  }
  return next;
}

export class Timeline {
  // actions: canModerate(), edit(message, text) -> Promise, remove(message), react(message, emoji, on)
  constructor(me, actions) {
    this.me = me;
    this.actions = actions;
    this.bySeq = new Map(); // seq -> element
    this.states = new Map(); // seq -> the message as shown
    this.early = new Map(); // target seq -> [events]
    this.earlyCount = 0;
    this.editing = null; // seq of the message being edited
    this.pending = new Map(); // client_id -> {text, el, state}
    this.confirmed = h("ol", { class: "messages", "aria-label": "Messages" });
    this.outbox = h("ol", { class: "messages outbox", "aria-label": "Messages being sent" });
    this.el = h("div", { class: "timeline" }, this.confirmed, this.outbox);
  }

  get newest() {
    const last = this.confirmed.lastElementChild;
    return last ? Number(last.dataset.seq) : 0;
  }

  get oldest() {
    const first = this.confirmed.firstElementChild;
    return first ? Number(first.dataset.seq) : 0;
  }

  // Insert a stored message unless its seq is already shown (a newer copy of a
  // shown one updates it); true if it was new.
  add(message) {
    const shown = this.states.get(message.seq);
    if (shown) {
      if (lastChange(message) > lastChange(shown)) this.update(message);
      return false;
    }
    const pending = message.client_id && message.user.id === this.me.id && this.pending.get(message.client_id);
    if (pending) {
      clearTimeout(pending.timer);
      pending.el.remove();
      this.pending.delete(message.client_id);
    }
    const el = this.render(message);
    this.bySeq.set(message.seq, el);
    this.states.set(message.seq, message);
    const next = this.nextAfter(message.seq);
    this.confirmed.insertBefore(el, next);
    this.decorate(el);
    this.decorate(next || this.outbox.firstElementChild);
    const waiting = this.early.get(message.seq);
    if (waiting) {
      this.early.delete(message.seq);
      this.earlyCount -= waiting.length;
      for (const event of waiting) this.apply(event);
    }
    return true;
  }

  // An edit, delete or reaction from the stream.
  apply(event) {
    const message = this.states.get(event.target_seq);
    if (!message) {
      // Its message is not shown (yet): a history page may bring it older than this.
      if (this.earlyCount >= EARLY_LIMIT) return;
      const list = this.early.get(event.target_seq) || [];
      list.push(event);
      this.early.set(event.target_seq, list);
      this.earlyCount += 1;
      return;
    }
    if (event.seq > lastChange(message)) this.update(applyEvent(message, event));
  }

  update(message) {
    const el = this.bySeq.get(message.seq);
    this.states.set(message.seq, message);
    if (this.editing === message.seq && message.deleted) this.editing = null;
    if (this.editing !== message.seq) this.fill(el, message);
    else this.fillReactions(el, message);
  }

  // The last message of mine that can still be edited.
  lastEditable() {
    for (let el = this.confirmed.lastElementChild; el; el = el.previousElementSibling) {
      const message = this.states.get(Number(el.dataset.seq));
      if (message.user.id === this.me.id && !message.deleted) return message;
    }
    return null;
  }

  // The first shown element with a larger seq (binary search: seqs are sorted).
  nextAfter(seq) {
    const items = this.confirmed.children;
    if (!items.length || Number(items[items.length - 1].dataset.seq) < seq) return null;
    let low = 0;
    let high = items.length - 1;
    while (low < high) {
      const mid = (low + high) >> 1;
      if (Number(items[mid].dataset.seq) < seq) low = mid + 1;
      else high = mid;
    }
    return items[low];
  }

  render(message) {
    const mine = message.user.id === this.me.id;
    const created = Date.parse(message.created);
    const el = this.shell(message.user, mine, created, message.message);
    if (mine) el.querySelector(".status").append(icon("check"));
    el.dataset.seq = String(message.seq);
    el.dataset.id = message.id;
    if (message.client_id) el.dataset.clientId = message.client_id;
    el.querySelector(".msg-main").after(this.toolbar(message.seq));
    el.querySelector(".bubble").addEventListener("click", (event) => this.onTap(el, event));
    this.fill(el, message);
    return el;
  }

  // Touch screens have no hover: a tap on a message shows (or hides) its tools.
  onTap(el, event) {
    if (!matchMedia("(hover: none)").matches || event.target.closest("a, button, textarea")) return;
    const open = !el.classList.contains("tools-open");
    for (const other of this.confirmed.querySelectorAll(".tools-open")) other.classList.remove("tools-open");
    el.classList.toggle("tools-open", open);
  }

  // The parts of a shown message that its events change.
  fill(el, message) {
    el.classList.toggle("deleted", Boolean(message.deleted));
    const text = el.querySelector(".text");
    if (message.deleted) {
      text.replaceChildren(icon("block"), h("span", { text: "message deleted" }));
    } else if (isBlocked(message.user.id) && !el.dataset.shown) {
      text.replaceChildren(...hiddenBody(message, () => {
        el.dataset.shown = "1";
        this.fill(el, message);
      }));
      text.classList.remove("formatted");
    } else {
      text.replaceChildren(...messageBody(message, this.me));
      text.classList.toggle("formatted", Boolean(message.html));
    }
    el.classList.toggle("mentions-me", !message.deleted && mentionsMe(message, this.me));
    const mark = el.querySelector(".edited-mark");
    if (message.version && !message.deleted) {
      const edited = Date.parse(message.edited);
      const title = `Edited ${fullFormat.format(edited)}`;
      if (mark) mark.title = title;
      else el.querySelector(".foot time").before(h("span", { class: "edited-mark", text: "edited", title }));
    } else if (mark) {
      mark.remove();
    }
    this.fillReactions(el, message);
    el.querySelector(".msg-tools").hidden = Boolean(message.deleted);
  }

  fillReactions(el, message) {
    const old = el.querySelector(".reactions");
    const entries = Object.entries(message.deleted ? {} : message.reactions || {});
    if (!entries.length) {
      if (old) old.remove();
      return;
    }
    const row = h("div", { class: "reactions" }, entries.map(([emoji, users]) => {
      const mine = users.includes(this.me.username);
      return h("button", {
        type: "button", class: `reaction${mine ? " mine" : ""}`, "aria-pressed": String(mine),
        title: users.join(", "), "aria-label": `${emoji} ${users.length}: ${users.join(", ")}`,
        onclick: () => this.actions.react(this.states.get(message.seq), emoji, !mine),
      }, h("span", { class: "reaction-emoji", text: emoji }), h("span", { class: "reaction-count", text: String(users.length) }));
    }));
    if (old) old.replaceWith(row);
    else el.querySelector(".msg-main").append(row);
  }

  // Hover (or focus) tools of a stored message: react, and edit or delete when allowed.
  toolbar(seq) {
    const current = () => this.states.get(seq);
    const react = h("button", {
      type: "button", class: "tool", "aria-label": "Add a reaction", title: "Add a reaction", "aria-expanded": "false",
      onclick: () => {
        const message = current();
        const chosen = new Set(Object.entries(message.reactions || {})
          .filter(([, users]) => users.includes(this.me.username)).map(([emoji]) => emoji));
        showPicker(react, chosen, (emoji) => this.actions.react(current(), emoji, !chosen.has(emoji)));
      },
    }, icon("smile"));
    const edit = h("button", {
      type: "button", class: "tool tool-edit", "aria-label": "Edit message", title: "Edit",
      onclick: () => this.startEdit(seq),
    }, icon("edit"));
    const remove = h("button", {
      type: "button", class: "tool tool-delete", "aria-label": "Delete message", title: "Delete",
      onclick: () => this.confirmDelete(seq),
    }, icon("trash"));
    return h("div", { class: "msg-tools" }, react, edit, remove);
  }

  // Edit and delete show only where they are allowed (moderation can change).
  // Draw again the shown messages that match (after a block or an unblock).
  refill(matches) {
    for (const [seq, message] of this.states) {
      const el = this.bySeq.get(seq);
      if (el && matches(message)) {
        delete el.dataset.shown;
        this.fill(el, message);
      }
    }
  }

  refreshTools() {
    const moderator = this.actions.canModerate();
    this.confirmed.classList.toggle("moderating", moderator);
  }

  startEdit(seq) {
    const message = this.states.get(seq);
    if (!message || message.deleted || message.user.id !== this.me.id) return;
    if (this.editing !== null) this.stopEdit();
    this.editing = seq;
    const el = this.bySeq.get(seq);
    const field = h("textarea", { class: "edit-field", rows: "1", "aria-label": "Edit your message" });
    field.value = message.message;
    const save = async () => {
      const text = field.value.trim();
      if (!text || text === message.message) {
        this.stopEdit();
        return;
      }
      field.disabled = true;
      try {
        const stored = await this.actions.edit(message, text);
        this.stopEdit();
        this.add(stored);
      } catch {
        field.disabled = false;
        field.focus();
      }
    };
    field.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        save();
      } else if (event.key === "Escape") {
        event.preventDefault();
        event.stopPropagation();
        this.stopEdit();
      }
    });
    field.addEventListener("input", () => {
      field.style.height = "auto";
      field.style.height = `${Math.min(field.scrollHeight, 200)}px`;
    });
    el.classList.add("editing");
    el.querySelector(".text").replaceChildren(field, h("div", { class: "edit-actions" },
      h("span", { class: "edit-hint", text: "Enter to save, Esc to cancel" }),
      h("button", { type: "button", class: "link-button", text: "Cancel", onclick: () => this.stopEdit() }),
      h("button", { type: "button", class: "button small primary", text: "Save", onclick: save })));
    field.focus();
    field.setSelectionRange(field.value.length, field.value.length);
    field.dispatchEvent(new Event("input"));
  }

  stopEdit() {
    const seq = this.editing;
    if (seq === null) return;
    this.editing = null;
    const el = this.bySeq.get(seq);
    el.classList.remove("editing");
    this.fill(el, this.states.get(seq));
    this.actions.editDone();
  }

  confirmDelete(seq) {
    const el = this.bySeq.get(seq);
    if (el.querySelector(".confirm-delete")) return;
    const no = h("button", { type: "button", class: "link-button", text: "Cancel" });
    const yes = h("button", { type: "button", class: "button small danger", text: "Delete" });
    const box = h("div", { class: "confirm-delete", role: "group", "aria-label": "Delete this message?" },
      h("span", { text: "Delete this message for everyone?" }), no, yes);
    no.addEventListener("click", () => box.remove());
    yes.addEventListener("click", () => {
      box.remove();
      this.actions.remove(this.states.get(seq));
    });
    el.querySelector(".msg-row").after(box);
    yes.focus();
  }

  shell(user, mine, created, text) {
    const time = h("time", {
      datetime: new Date(created).toISOString(),
      title: fullFormat.format(created),
      text: timeFormat.format(created),
    });
    const body = h("div", { class: "text" }, richText(text ?? ""));
    const el = h(
      "li",
      { class: `msg${mine ? " mine" : ""}`, dataset: { user: user.id, time: String(created) } },
      h("div", { class: "day-divider", role: "separator" }, h("span")),
      h(
        "div",
        { class: "msg-row" },
        mine ? null : personAvatar(user, "msg-avatar"),
        h(
          "div",
          { class: "msg-main" },
          h(
            "div",
            { class: "bubble" },
            mine ? null : personName(user, { class: "author" }, "div"),
            body,
            h("div", { class: "foot" }, time, h("span", { class: "status" })),
          ),
        ),
      ),
    );
    return el;
  }

  // Day dividers and grouping depend on the element before: recompute them.
  decorate(el) {
    if (!el) return;
    const prev = el.previousElementSibling
      || (el.parentNode === this.outbox ? this.confirmed.lastElementChild : null);
    const time = Number(el.dataset.time);
    const newDay = !prev || startOfDay(Number(prev.dataset.time)) !== startOfDay(time);
    el.classList.toggle("new-day", newDay);
    el.querySelector(".day-divider span").textContent = newDay ? dayLabel(time) : "";
    const grouped = !newDay && prev.dataset.user === el.dataset.user
      && time - Number(prev.dataset.time) < GROUP_WINDOW_MS;
    el.classList.toggle("grouped", grouped);
  }

  // Own message shown at once as pending; returns its element.
  addPending(clientId, text) {
    const el = this.shell(this.me, true, Date.now(), text);
    el.dataset.clientId = clientId;
    const entry = { text, el, state: "", timer: null };
    this.pending.set(clientId, entry);
    this.outbox.append(el);
    this.decorate(el);
    return entry;
  }

  setPendingState(clientId, state, reason, onRetry) {
    const entry = this.pending.get(clientId);
    if (!entry) return;
    entry.state = state;
    const { el } = entry;
    el.classList.toggle("pending", state !== "failed");
    el.classList.toggle("failed", state === "failed");
    const status = el.querySelector(".status");
    status.replaceChildren();
    if (state === "failed") {
      el.querySelector(".bubble").setAttribute("aria-invalid", "true");
      status.append(
        icon("alert"),
        h("span", { class: "status-text", text: reason || "Not sent." }),
        h("button", { type: "button", class: "retry", onclick: () => onRetry(clientId), text: "Retry" }),
      );
    } else {
      el.querySelector(".bubble").removeAttribute("aria-invalid");
      status.append(icon("clock"), h("span", { class: "status-text", text: reason || "Sending…" }));
    }
  }

  clearOutbox() {
    for (const entry of this.pending.values()) clearTimeout(entry.timer);
    this.pending.clear();
    this.outbox.replaceChildren();
  }
}

// The message list. Confirmed messages are kept in seq order, one element per
// seq whatever the mix of history pages, catch-up and live frames that brings
// them; the sender's own pending messages sit below them until their client_id
// comes back on the stream.

import { avatar, h, icon, richText } from "./dom.js";

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

export class Timeline {
  constructor(me) {
    this.me = me;
    this.bySeq = new Map();
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

  // Insert a stored message unless its seq is already shown; true if it was new.
  add(message) {
    if (this.bySeq.has(message.seq)) return false;
    const pending = message.client_id && message.user.id === this.me.id && this.pending.get(message.client_id);
    if (pending) {
      clearTimeout(pending.timer);
      pending.el.remove();
      this.pending.delete(message.client_id);
    }
    const el = this.render(message);
    this.bySeq.set(message.seq, el);
    const next = this.nextAfter(message.seq);
    this.confirmed.insertBefore(el, next);
    this.decorate(el);
    this.decorate(next || this.outbox.firstElementChild);
    return true;
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
    return el;
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
        mine ? null : avatar(user.username, "msg-avatar"),
        h(
          "div",
          { class: "bubble" },
          mine ? null : h("div", { class: "author", text: user.username }),
          body,
          h("div", { class: "foot" }, time, h("span", { class: "status" })),
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

// My chats, live from the user stream: the `chats` snapshot, then each chat's
// events (order by activity, previews, unread badges), `chat` (a chat that is
// new to me) and `chat_gone`. It draws the list (a sidebar beside the open
// chat on wide screens, the home screen on phones), the tab title's unread
// count and the chime; a chat whose notifications are off is marked and
// counts for neither. Later pages load on scroll (morechats.js).

import { chatTitle } from "./chat.js";
import { avatar, h, icon } from "./dom.js";
import { effectiveLevel, onLevel } from "./levels.js";
import { MoreChats } from "./morechats.js";
import { incoming, isAway, setUnread } from "./notify.js";
import { chatFace, chatName, mentionBadge, mentionsMe } from "./people.js";

const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
const shortDate = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });
// The server's preview: a message's first 100 characters.
const PREVIEW_CHARS = 100;
const MAX_UNREAD = 999;

function ago(iso) {
  const ms = Date.parse(iso);
  const seconds = Math.round((ms - Date.now()) / 1000);
  if (seconds > -60) return "now";
  if (seconds > -3600) return relative.format(Math.round(seconds / 60), "minute");
  if (seconds > -86_400) return relative.format(Math.round(seconds / 3600), "hour");
  if (seconds > -7 * 86_400) return relative.format(Math.round(seconds / 86_400), "day");
  return shortDate.format(ms);
}

export class ChatList {
  // openUri() -> the uri of the chat open in this tab, or null.
  constructor(me, { openUri }) {
    this.me = me;
    this.openUri = openUri;
    this.chats = new Map(); // uri -> the chat list's entry, kept up to date
    // Per chat, what its unread count is made of: the snapshot's count (all
    // at or below the snapshot's last_seq) and the seqs of messages by others
    // that came live since, so a read position lowers it exactly; the same
    // for the mentions of me among them.
    this.counts = new Map(); // uri -> { base, mentionBase, upTo, live: [seq], mentions: [seq] }
    this.loaded = false;
    this.drawPending = false;
    this.list = h("ul", { class: "chat-list", "aria-label": "My chats" });
    this.more = new MoreChats((chats) => this.onPage(chats));
    this.status = h("div", { class: "list-status" },
      h("div", { class: "spinner", role: "status", "aria-label": "Loading chats" }));
    this.onLook = () => this.updateTitle();
    document.addEventListener("visibilitychange", this.onLook);
    window.addEventListener("focus", this.onLook);
    window.addEventListener("blur", this.onLook);
    this.stopLevel = onLevel((uri, level) => this.onLevel(uri, level));
  }

  stop() {
    this.more.stop();
    this.stopLevel();
    document.removeEventListener("visibilitychange", this.onLook);
    window.removeEventListener("focus", this.onLook);
    window.removeEventListener("blur", this.onLook);
    setUnread(0);
  }

  // The stream -----------------------------------------------------------

  // A fresh snapshot (every connect): it replaces what the list knew.
  onChats(chats, hasMore = false) {
    this.chats = new Map();
    this.counts.clear();
    this.more.reset(chats, hasMore);
    for (const chat of chats) this.add(chat);
    this.loaded = true;
    this.draw();
  }

  onChat(chat) {
    this.add(chat);
    this.draw();
  }

  // A later page: older chats (the stream already carries their events).
  onPage(chats) {
    for (const chat of chats) if (!this.chats.has(chat.uri)) this.add(chat);
    this.draw();
  }

  add(chat) {
    this.chats.set(chat.uri, { ...chat });
    this.counts.set(chat.uri, { base: chat.unread, mentionBase: chat.mentions || 0, upTo: chat.last_seq,
      live: [], mentions: [] });
  }

  // My notification level of a chat changed (here or on another device).
  onLevel(uri, level) {
    const chat = this.chats.get(uri);
    if (!chat) return;
    chat.notifications = level;
    this.draw();
  }

  muted(chat) {
    return effectiveLevel(chat.notifications, chat.kind) === "none";
  }

  onGone(uri) {
    this.chats.delete(uri);
    this.counts.delete(uri);
    this.draw();
  }

  // Every frame of a chat (events, and my read positions).
  onEvent(frame) {
    const chat = this.chats.get(frame.uri);
    if (!chat) return;
    if (frame.type === "read") {
      if (frame.user_id === this.me.id) this.onRead(chat, frame.seq);
      return;
    }
    if (typeof frame.seq !== "number" || frame.type === "ready" || frame.seq <= chat.last_seq) return;
    chat.last_seq = chat.seq = frame.seq;
    if (frame.type === "message") this.onMessage(chat, frame);
    else if (frame.type === "edit" && chat.last_message && chat.last_message.id === frame.id) {
      chat.last_message = { ...chat.last_message, text: frame.message.slice(0, PREVIEW_CHARS) };
    } else if (frame.type === "delete") this.onDelete(chat, frame);
    else if (frame.type === "member") this.onMember(chat, frame);
    else if (frame.type === "room") Object.assign(chat, { name: frame.name, topic: frame.topic });
    else return;
    this.draw();
  }

  onMessage(chat, message) {
    chat.updated = message.created;
    chat.last_message = { id: message.id, seq: message.seq, user: message.user,
      text: message.message.slice(0, PREVIEW_CHARS), created: message.created };
    if (message.user.id === this.me.id) {
      this.onRead(chat, message.seq); // a post is its poster's read
      return;
    }
    // The open chat, while looked at, is read by its view.
    const looking = chat.uri === this.openUri() && !isAway();
    if (looking) return;
    const counts = this.counts.get(chat.uri);
    counts.live.push(message.seq);
    if (mentionsMe(message, this.me)) counts.mentions.push(message.seq);
    this.count(chat);
    if (!this.muted(chat)) incoming();
  }

  onDelete(chat, event) {
    const counts = this.counts.get(chat.uri);
    counts.live = counts.live.filter((seq) => seq !== event.target_seq);
    counts.mentions = counts.mentions.filter((seq) => seq !== event.target_seq);
    this.count(chat);
    if (chat.last_message && chat.last_message.id === event.id) {
      chat.last_message = null; // the one before it is not known here
    }
  }

  onMember(chat, event) {
    const joined = event.op === "join";
    const went = ["leave", "remove", "ban"].includes(event.op);
    if (joined && !chat.people.some((p) => p.id === event.user.id)) {
      chat.members += 1;
      chat.people = [...chat.people, event.user];
    } else if (went && chat.people.some((p) => p.id === event.user.id)) {
      chat.members -= 1;
      chat.people = chat.people.filter((p) => p.id !== event.user.id);
    } else if (went && event.user.id !== this.me.id) {
      chat.members = Math.max(1, chat.members - 1);
    }
  }

  // My read position rose (here, on another tab or another device).
  onRead(chat, seq) {
    if (seq <= chat.last_read_seq) return;
    chat.last_read_seq = seq;
    const counts = this.counts.get(chat.uri);
    counts.live = counts.live.filter((s) => s > seq);
    counts.mentions = counts.mentions.filter((s) => s > seq);
    // A read short of the snapshot's last_seq leaves the snapshot's count as
    // it was: which of those it covers is not known here (the next snapshot is exact).
    if (seq >= counts.upTo) counts.base = counts.mentionBase = 0;
    this.count(chat);
    this.draw();
  }

  count(chat) {
    const { base, mentionBase, live, mentions } = this.counts.get(chat.uri);
    chat.unread = Math.min(MAX_UNREAD, base + live.length);
    chat.mentions = Math.min(MAX_UNREAD, mentionBase + mentions.length);
  }

  // Drawing ----------------------------------------------------------------

  draw() {
    if (this.drawPending) return;
    this.drawPending = true;
    queueMicrotask(() => {
      this.drawPending = false;
      this.render();
    });
  }

  render() {
    this.updateTitle();
    if (!this.loaded) return;
    if (!this.chats.size) {
      this.status.replaceChildren(h("div", { class: "empty-card" },
        h("h2", { text: "No chats yet" }),
        h("p", { text: "Start a chat, then share its link with the people you want to talk to." })));
      this.status.hidden = false;
      this.list.replaceChildren();
      return;
    }
    this.status.hidden = true;
    const focused = this.list.contains(document.activeElement) ? document.activeElement.dataset.uri : null;
    const rows = [...this.chats.values()].sort((a, b) => Date.parse(b.updated) - Date.parse(a.updated));
    this.list.replaceChildren(...rows.map((chat) => this.item(chat)));
    if (this.more.more) this.list.append(this.more.sentinel);
    if (focused) this.list.querySelector(`[data-uri="${focused}"]`)?.focus();
  }

  // The open chat is marked (the sidebar beside it).
  markOpen() {
    const open = this.openUri();
    for (const link of this.list.querySelectorAll(".chat-item")) {
      if (link.dataset.uri === open) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    this.updateTitle();
  }

  item(chat) {
    const other = chat.people.find((m) => m.id !== this.me.id) || this.me;
    const message = chat.last_message;
    const who = message && (message.user.id === this.me.id ? "You" : message.user.username);
    const { unread } = chat;
    const open = chat.uri === this.openUri();
    const muted = this.muted(chat);
    return h("li", {}, h("a", {
      href: `/chats/${chat.uri}/`, class: `chat-item${unread ? " unread" : ""}${muted ? " muted" : ""}`, "data-link": "",
      dataset: { uri: chat.uri }, "aria-current": open ? "page" : null,
    },
      h("span", { class: "chat-item-avatar" }, avatar(chatFace(chat, this.me) || other.username)),
      h("span", { class: "chat-item-body" },
        h("span", { class: "chat-item-top" },
          h("span", { class: "chat-item-title",
            text: chatName(chat, this.me) || chatTitle(chat.people, this.me, chat.members) }),
          muted ? h("span", { class: "chat-item-muted", title: "Notifications off" }, icon("bell-off"),
            h("span", { class: "visually-hidden", text: "(notifications off)" })) : null,
          h("time", { datetime: chat.updated, text: ago(chat.updated) })),
        h("span", { class: "chat-item-bottom" },
          h("span", { class: "chat-item-preview",
            text: message ? `${who}: ${message.text.replace(/\s+/g, " ")}` : "No messages yet" }),
          mentionBadge(chat),
          unread ? h("span", { class: "badge", "aria-label": `${unread} unread`,
            text: unread > 99 ? "99+" : String(unread) }) : null))));
  }

  // The tab title counts unread messages of every chat but the one looked at
  // and those whose notifications are off.
  updateTitle() {
    const looking = isAway() ? null : this.openUri();
    let total = 0;
    for (const chat of this.chats.values()) if (chat.uri !== looking && !this.muted(chat)) total += chat.unread;
    setUnread(total);
  }
}

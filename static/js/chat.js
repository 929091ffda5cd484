// The chat view: history (older pages as the reader scrolls up), the live
// events (its subscription on the user stream), sending with pending/failed
// states, members and the share link.

import { api, ApiError } from "./api.js";
import { avatar, clear, h, icon } from "./dom.js";
import { Uploader } from "./files.js";
import { effectiveLevel, levelChoices, onLevel, saveLevel } from "./levels.js";
import { closePopover, showMenu } from "./menu.js";
import { learn, onProfile, personAvatar, personName } from "./profiles.js";
import { isAway, setTitle } from "./notify.js";
import { paced } from "./paced.js";
import { RoomSignals, seenByText, typingText } from "./signals.js";
import { jumpTarget, loadAround, showHit } from "./search.js";
import { Timeline } from "./timeline.js";
import { blockAction, chatName, loadBlocks, mentionCompletion, roomHeading } from "./people.js";

const PAGE = 50;
const GAP_PAGE = 200;
const SEND_TIMEOUT_MS = 10_000;
const NEAR_BOTTOM_PX = 80;
const NEAR_TOP_PX = 400;
// Room events that change a shown message.
const MESSAGE_EVENTS = new Set(["edit", "delete", "reaction", "preview"]);
// The member list is read again at most this often, however many member events come.
const MEMBERS_EVERY_MS = 1_000;
// Why the chat was taken from us (its `chat_gone`, as the stream says it).
const EXPELLED = {
  "removed from the chat": "You were removed from this chat.",
  "banned from the chat": "You were banned from this chat.",
};
const ROLE_NAMES = { owner: "owner", moderator: "moderator" };
// What the chat's notification level now does, said once it is saved.
const LEVEL_SAVED = {
  all: "You will be notified of every message here",
  mentions: "You will be notified when someone mentions you here",
  none: "No notifications from this chat",
};

function newClientId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function shareLink(uri) {
  return `${location.origin}${chatPath(uri)}`;
}

function chatPath(uri) {
  return `/chats/${uri}/`;
}

// The chat's name from its members; `count` is how many it has when `members`
// holds only the first few (the chat list's).
export function chatTitle(members, me, count = members.length) {
  const others = members.filter((m) => m.id !== me.id).map((m) => m.username);
  const total = count - 1; // everyone but me
  if (total <= 0) return "Just you";
  if (total <= 3 && others.length >= total) return others.join(", ");
  return `${others.slice(0, 2).join(", ")} and ${total - Math.min(2, others.length)} others`;
}

// A selector that finds a control again once it is drawn anew: its id or its label.
function focusKey(el) {
  if (el.id) return `#${CSS.escape(el.id)}`;
  const label = el.getAttribute("aria-label");
  return label ? `[aria-label="${CSS.escape(label)}"]` : null;
}

async function copyText(text, input) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // No clipboard API outside secure contexts: fall back to selecting the field.
    if (!input) return false;
    input.select();
    return document.execCommand("copy");
  }
}

export class ChatView {
  constructor(app, uri) {
    this.app = app;
    this.me = app.me;
    this.uri = uri;
    this.room = null;
    this.socket = null;
    this.timeline = new Timeline(this.me, {
      canModerate: () => this.moderating(),
      edit: (message, text) => this.editMessage(message, text),
      editDone: () => this.input.focus(),
      remove: (message) => this.deleteMessage(message),
      react: (message, emoji, on) => this.react(message, emoji, on),
    });
    this.baseSeq = 0; // the room's seq when the view opened: history covers up to it
    this.streamSeq = 0; // the last seq the stream delivered: where a re-subscribe resumes
    this.hasMore = false;
    this.loadingOlder = false;
    this.historyLoaded = false;
    this.unseen = 0;
    this.membersAsked = 0; // member list reads started, and the latest one shown
    this.membersShown = 0;
    this.refreshMembers = paced(() => this.readMembers(), MEMBERS_EVERY_MS);
    this.seenBy = null; // the "Seen by …" line, under my latest message
    this.stopped = false;
    this.countdown = null;
    this.el = h("section", { class: "chat-view", dataset: { connection: "connecting" } });
  }

  // Entry -------------------------------------------------------------

  async mount(container) {
    container.replaceChildren(this.el);
    this.el.append(h("div", { class: "pane-loading", role: "status" }, h("div", { class: "spinner" }),
      h("p", { text: "Opening the chat…" })));
    let room;
    try {
      [room] = await Promise.all([this.openRoom(), loadBlocks()]);
    } catch (error) {
      if (this.stopped) return;
      if (error instanceof ApiError && error.status === 401) {
        this.app.signedOut();
        return;
      }
      this.showProblem(error.status === 404
        ? "This chat does not exist. Check the link, or start a new chat."
        : error.message);
      return;
    }
    if (this.stopped) return;
    this.room = room;
    this.baseSeq = this.streamSeq = room.seq;
    this.signals = new RoomSignals(this.uri, this.me, room.read, {
      send: (frame) => Boolean(this.socket) && this.socket.send(frame),
      markRead: (seq) => api.markRead(this.uri, seq),
      onChange: (what) => this.onSignal(what),
    });
    // Where the reader had read to when the chat opened: the "new messages" divider.
    this.readAtOpen = this.signals.myRead;
    this.build();
    // My level, changed here, in the settings, or on another device.
    this.stopLevel = onLevel((uri, level) => {
      if (uri !== this.uri) return;
      this.room.notifications = level;
      this.showLevel();
    });
    // The open chat is a subscription on the tab's one user stream.
    this.socket = this.app.stream.subscribe(this.uri, {
      since: () => this.streamSeq,
      onFrame: (frame) => this.onFrame(frame),
      onState: (state, detail) => this.onSocketState(state, detail),
      onRefused: (reason) => this.onRefused(reason),
    });
    await this.loadLatest();
  }

  // The room, joining it first when the link was shared with us.
  async openRoom() {
    try {
      return await api.chat(this.uri);
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 403) throw error;
    }
    await api.join(this.uri);
    this.app.toast("You joined this chat");
    return api.chat(this.uri);
  }

  unmount() {
    this.stopped = true;
    this.refreshMembers.cancel();
    closePopover(false);
    clearInterval(this.countdown);
    if (this.stopLevel) this.stopLevel();
    window.removeEventListener("pagehide", this.onLeave);
    window.removeEventListener("focus", this.onBack);
    this.flushOutbox();
    if (this.signals) this.signals.stop();
    if (this.socket) this.socket.stop();
    this.timeline.clearOutbox();
  }

  // Leaving with messages still on their way: post them over HTTP, which
  // outlives the page. The same client_id means none is stored twice.
  flushOutbox() {
    for (const [clientId, entry] of this.timeline.pending) {
      if (entry.state !== "failed") api.post(this.uri, entry.text, clientId, { keepalive: true }).catch(() => {});
    }
  }

  // The reader sees the latest messages: tell the server (and so their other devices).
  seen() {
    if (this.historyLoaded && !isAway()) this.signals.read(this.timeline.newest);
  }

  showProblem(text) {
    this.el.replaceChildren(h("div", { class: "problem", role: "alert" },
      h("p", { text }),
      h("div", { class: "problem-actions" },
        h("button", { type: "button", class: "button", text: "Try again", onclick: () => this.app.route() }),
        h("a", { href: "/", class: "button primary", "data-link": "", text: "Back to my chats" }))));
  }

  // Layout ------------------------------------------------------------

  // Its name, a DM's other person, or else its members.
  title() {
    return chatName(this.room, this.me) || chatTitle(this.room.members, this.me);
  }

  // The name or topic changed (a room event, or my own edit).
  onRoomInfo(info) {
    Object.assign(this.room, { name: info.name, topic: info.topic });
    this.titleEl.textContent = this.title();
    setTitle(`${this.title()} · Chat`);
    this.roomInfo.show();
  }

  build() {
    const title = this.title();
    setTitle(`${title} · Chat`);
    this.titleEl = h("h1", { class: "chat-title", text: title });
    this.roomInfo = roomHeading(this);
    this.subtitle = h("p", { class: "chat-subtitle", text: "Connecting…" });
    this.mutedMark = h("span", { class: "muted-mark", title: "Notifications are off for this chat" },
      icon("bell-off"), h("span", { class: "visually-hidden", text: "Notifications off" }));
    this.showLevel();
    this.membersButton = h("button", {
      type: "button", class: "icon-button", "aria-label": "Members", "aria-expanded": "false",
      "aria-controls": "chat-side", title: "Members", onclick: () => this.toggleSide(),
    }, icon("people"));
    const header = h("header", { class: "chat-header" },
      h("a", { href: "/", class: "icon-button back", "data-link": "", "aria-label": "Back to my chats",
        title: "My chats" }, icon("back")),
      h("div", { class: "chat-heading" }, h("div", { class: "chat-title-row" }, this.titleEl, this.mutedMark),
        this.roomInfo.el, this.subtitle),
      h("button", { type: "button", class: "icon-button invite", "aria-label": "Copy invite link",
        hidden: this.room.kind === "dm",
        title: "Copy invite link", onclick: () => this.copyLink() }, icon("link"), h("span", { text: "Invite" })),
      this.membersButton,
      this.roomMenuButton = h("button", {
        type: "button", class: "icon-button", "aria-label": "Chat menu", title: "Chat menu",
        "aria-haspopup": "menu", "aria-expanded": "false", onclick: () => this.openRoomMenu(),
      }, icon("more")));

    this.bannerText = h("span");
    this.banner = h("div", { class: "banner", role: "status", hidden: true }, this.bannerText,
      h("button", { type: "button", class: "link-button", text: "Retry now",
        onclick: () => this.socket.connectNow() }));

    this.historyTop = h("div", { class: "history-top" });
    this.emptyState = h("div", { class: "empty-chat", hidden: true });
    this.scroller = h("div", {
      class: "scroller", role: "log", "aria-live": "polite", "aria-label": "Conversation", tabindex: "0",
      onscroll: () => this.onScroll(),
    }, this.historyTop, this.emptyState, this.timeline.el);
    this.pill = h("button", { type: "button", class: "pill", hidden: true, onclick: () => this.scrollToBottom(true) });

    this.input = h("textarea", {
      id: "composer-text", rows: "1", maxlength: this.app.maxChars, placeholder: "Write a message…",
      autocomplete: "off", enterkeyhint: "send", "aria-describedby": "composer-hint",
      onkeydown: (event) => this.onKey(event), oninput: () => this.onInput(),
    });
    this.sendButton = h("button", { type: "submit", class: "send", "aria-label": "Send", title: "Send",
      disabled: true }, icon("send"));
    this.counter = h("span", { class: "counter", "aria-live": "polite" });
    this.uploader = new Uploader(this.uri, { onError: (text) => this.app.toast(text) });
    const composer = h("form", { class: "composer with-files", onsubmit: (event) => { event.preventDefault(); this.send(); } },
      h("label", { for: "composer-text", class: "visually-hidden", text: "Message" }),
      this.uploader.button, this.uploader.input, this.input, this.sendButton,
      h("p", { id: "composer-hint", class: "composer-hint" },
        h("kbd", { text: "Enter" }), " to send, ", h("kbd", { text: "Shift" }), " + ", h("kbd", { text: "Enter" }),
        " for a new line", this.counter));
    mentionCompletion(this.input, composer, () => this.room.members);

    this.memberList = h("ul", { class: "member-list" });
    this.side = h("aside", { id: "chat-side", class: "chat-side", "aria-label": "Chat details" },
      h("div", { class: "side-head" }, h("h2", { text: "Members" }),
        h("button", { type: "button", class: "icon-button side-close", "aria-label": "Close",
          onclick: () => this.toggleSide(false) }, icon("close"))),
      this.memberList,
      this.moderation = h("div", { class: "moderation", hidden: true }),
      h("h2", { text: "Invite link" }),
      this.linkBox("side-link"));

    this.typingLine = h("p", { class: "typing-line", "aria-live": "polite" });
    const pane = h("div", { class: "chat-pane" }, this.banner, this.scroller, this.pill, this.typingLine,
      this.uploader.tray, composer);
    this.uploader.listen(pane, this.input);
    // On narrow screens the details are a drawer over the chat: a tap beside it closes it.
    pane.addEventListener("click", (event) => {
      if (this.el.classList.contains("side-open")) {
        event.preventDefault();
        this.toggleSide(false);
      }
    }, { capture: true });
    this.el.replaceChildren(header, h("div", { class: "chat-body" }, pane, this.side));
    this.side.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        this.toggleSide(false);
        this.membersButton.focus();
      }
    });
    this.renderMembers();
    this.onLeave = () => this.flushOutbox();
    this.onBack = () => this.seen();
    window.addEventListener("pagehide", this.onLeave);
    window.addEventListener("focus", this.onBack);
    this.timeline.el.classList.add("loading");
    this.historyTop.replaceChildren(h("div", { class: "spinner small", role: "status", "aria-label": "Loading messages" }));
    if (!matchMedia("(max-width: 899px)").matches) this.input.focus();
  }

  linkBox(id) {
    const link = shareLink(this.uri);
    const field = h("input", { id, type: "text", readonly: true, value: link, class: "link-field",
      "aria-label": "Invite link", onfocus: (event) => event.target.select() });
    return h("div", { class: "link-box" }, field,
      h("button", { type: "button", class: "button small", onclick: () => this.copyLink(field) },
        icon("copy"), h("span", { text: "Copy" })));
  }

  async copyLink(field) {
    const ok = await copyText(shareLink(this.uri), field);
    this.app.toast(ok ? "Invite link copied" : "Select the link and copy it");
  }

  toggleSide(open = !this.el.classList.contains("side-open")) {
    this.el.classList.toggle("side-open", open);
    this.membersButton.setAttribute("aria-expanded", String(open));
    if (open) this.side.querySelector(".side-close").focus();
  }

  myRole() {
    const me = this.room.members.find((m) => m.id === this.me.id);
    return me ? me.role : "member";
  }

  moderating() {
    return Boolean(this.room) && ["owner", "moderator"].includes(this.myRole());
  }

  // Drawn anew on every presence, role or ban change: the control that had the
  // keyboard focus gets it back, so a keyboard user keeps their place.
  renderMembers() {
    const focused = this.side.contains(document.activeElement) ? focusKey(document.activeElement) : null;
    const myRole = this.myRole();
    this.room.members.forEach(learn);
    clear(this.memberList).append(...this.room.members.map((member) => {
      const actions = this.memberActions(member, myRole);
      const tag = ROLE_NAMES[member.role];
      const online = this.signals.isOnline(member.id);
      return h("li", { class: `member${online ? " online" : ""}`,
        dataset: { user: member.id, username: member.username } },
        personAvatar(member),
        personName(member, { class: "member-name" }),
        online ? h("span", { class: "visually-hidden", text: "(online)" }) : null,
        member.id === this.me.id ? h("span", { class: "tag", text: "you" }) : null,
        tag ? h("span", { class: `tag role-${member.role}`, text: tag }) : null,
        actions.length ? this.memberMenuButton(member, actions) : null);
    }));
    this.renderModeration();
    if (focused) this.side.querySelector(focused)?.focus();
    this.timeline.refreshTools();
    this.roomInfo.show();
    const title = this.title();
    this.titleEl.textContent = title;
    setTitle(`${title} · Chat`);
    this.updateEmptyState();
    this.updateSubtitle();
  }

  // What I may do to a member: the owner anything, a moderator remove or ban plain members.
  memberActions(member, myRole) {
    if (member.id === this.me.id) return [];
    const block = blockAction(this, member);
    if (member.role === "owner") return [block];
    const name = member.username;
    const actions = [];
    if (myRole === "owner") {
      actions.push(member.role === "moderator"
        ? { label: "Make member", onSelect: () => this.moderate(api.setRole(this.uri, name, "member"), `${name} is a member now`) }
        : { label: "Make moderator", onSelect: () => this.moderate(api.setRole(this.uri, name, "moderator"), `${name} is a moderator now`) });
      actions.push({ label: "Make owner", onSelect: () => this.moderate(api.setRole(this.uri, name, "owner"), `${name} owns this chat now`) });
    }
    if (myRole === "owner" || (myRole === "moderator" && member.role === "member")) {
      actions.push({ label: "Remove from chat", danger: true, onSelect: () => this.moderate(api.removeMember(this.uri, name), `${name} was removed`) });
      actions.push({ label: "Ban from chat", danger: true, onSelect: () => this.moderate(api.ban(this.uri, name), `${name} was banned`) });
    }
    actions.push(block);
    return actions;
  }

  memberMenuButton(member, actions) {
    const button = h("button", {
      type: "button", class: "icon-button small member-menu", "aria-label": `Manage ${member.username}`,
      title: `Manage ${member.username}`, "aria-haspopup": "menu", "aria-expanded": "false",
      onclick: () => showMenu(button, `Manage ${member.username}`, actions),
    }, icon("more"));
    return button;
  }

  // Lock and bans, for the owner and moderators.
  renderModeration() {
    this.moderation.hidden = !this.moderating();
    if (this.moderation.hidden) return;
    const lock = h("input", { type: "checkbox", id: "room-locked", checked: this.room.locked,
      onchange: () => this.moderate(api.lock(this.uri, lock.checked),
        lock.checked ? "Chat locked: only the owner and moderators can add people" : "Chat unlocked") });
    const bans = this.room.bans || [];
    this.moderation.replaceChildren(...[
      h("h2", { text: "Moderation" }),
      h("label", { class: "lock-toggle", for: "room-locked" }, lock, icon("lock"),
        h("span", { text: "Locked: the link no longer lets people join" })),
      bans.length ? h("h3", { text: "Banned" }) : null,
      bans.length ? h("ul", { class: "ban-list" }, bans.map((user) => h("li", { class: "member banned" },
        avatar(user.username), h("span", { class: "member-name", text: user.username }),
        h("button", { type: "button", class: "button small", text: "Unban",
          "aria-label": `Unban ${user.username}`,
          onclick: () => this.moderate(api.unban(this.uri, user.username), `${user.username} was unbanned`) })))) : null,
    ].filter(Boolean));
  }

  async moderate(request, done) {
    try {
      await request;
      this.app.toast(done);
    } catch (error) {
      this.app.toast(error.message);
    }
    this.refreshMembers();
  }

  openRoomMenu() {
    const owner = this.myRole() === "owner";
    const level = this.level();
    showMenu(this.roomMenuButton, "Chat menu", [
      { label: "Copy invite link", onSelect: () => this.copyLink() },
      { group: "Notify me about", choices: levelChoices(this.room.kind).map((choice) => ({
        label: choice.label, checked: choice.level === level, onSelect: () => this.setLevel(choice.level) })) },
      owner ? null : { label: "Leave chat", danger: true, onSelect: () => this.leave() },
    ]);
  }

  // My notification level here, as it acts.
  level() {
    return effectiveLevel(this.room.notifications, this.room.kind);
  }

  showLevel() {
    this.mutedMark.hidden = this.level() !== "none";
  }

  async setLevel(level) {
    try {
      await saveLevel(this.uri, level);
    } catch (error) {
      this.app.toast(`Notifications not changed: ${error.message}`);
      return;
    }
    this.app.toast(LEVEL_SAVED[level]);
  }

  async leave() {
    try {
      await api.removeMember(this.uri, this.me.username);
    } catch (error) {
      this.app.toast(error.message);
      return;
    }
    this.app.toast("You left the chat");
    if (!this.stopped) this.app.navigate("/");
  }

  updateSubtitle() {
    const state = this.el.dataset.connection;
    const count = this.room.members.length;
    const online = this.signals.online.size;
    const members = `${count} member${count === 1 ? "" : "s"}${online ? ` · ${online} online` : ""}`;
    this.subtitle.textContent = state === "live" ? members
      : state === "reconnecting" ? `${members} · reconnecting…` : `${members} · connecting…`;
  }

  updateEmptyState() {
    const alone = this.room.members.length < 2 && this.timeline.bySeq.size === 0;
    this.emptyState.hidden = !alone || !this.historyLoaded;
    if (!this.emptyState.hidden && !this.emptyState.firstChild) {
      this.emptyState.append(h("div", { class: "empty-card" },
        h("h2", { text: "Invite people to this chat" }),
        h("p", { text: "Anyone with this link can join after signing in." }),
        this.linkBox("empty-link")));
    }
  }

  // History -----------------------------------------------------------

  async loadLatest() {
    try {
      // Opened from a search result: the history around it, up to the latest.
      const at = jumpTarget();
      const page = at ? await loadAround(this.uri, at, this.baseSeq, PAGE)
        : await api.history(this.uri, { before: this.baseSeq + 1, limit: PAGE });
      if (this.stopped) return;
      for (const message of page.messages) this.timeline.add(message);
      this.hasMore = at ? page.hasMore : page.has_more;
      this.historyLoaded = true;
      this.timeline.el.classList.remove("loading");
      this.updateHistoryTop();
      this.updateEmptyState();
      this.showUnreadDivider();
      this.showSeenBy();
      if (!at || !showHit(this.timeline, at)) this.scrollToBottom(false);
      this.seen();
      await this.fillViewport();
    } catch (error) {
      if (this.stopped) return;
      this.historyTop.replaceChildren(h("p", { class: "inline-error", role: "alert", text: error.message }),
        h("button", { type: "button", class: "link-button", text: "Try again", onclick: () => this.loadLatest() }));
    }
  }

  // Load older pages until the reader can scroll (scroll events need overflow).
  async fillViewport() {
    while (!this.stopped && this.hasMore && this.scroller.scrollHeight <= this.scroller.clientHeight + NEAR_TOP_PX) {
      if (!(await this.loadOlder())) return;
    }
  }

  async loadOlder() {
    if (this.loadingOlder || !this.hasMore || !this.historyLoaded) return false;
    this.loadingOlder = true;
    this.historyTop.replaceChildren(h("div", { class: "spinner small", role: "status", "aria-label": "Loading older messages" }));
    try {
      const oldest = this.timeline.oldest || this.baseSeq + 1;
      const page = await api.history(this.uri, { before: oldest, limit: PAGE });
      if (this.stopped) return false;
      // Keep what the reader is looking at in place while rows appear above it.
      const fromBottom = this.scroller.scrollHeight - this.scroller.scrollTop;
      for (const message of page.messages) this.timeline.add(message);
      this.hasMore = page.has_more;
      this.scroller.scrollTop = this.scroller.scrollHeight - fromBottom;
      this.updateHistoryTop();
      return true;
    } catch (error) {
      this.historyTop.replaceChildren(h("p", { class: "inline-error", role: "alert", text: error.message }),
        h("button", { type: "button", class: "link-button", text: "Try again", onclick: () => this.loadOlder() }));
      return false;
    } finally {
      this.loadingOlder = false;
    }
  }

  updateHistoryTop() {
    this.historyTop.replaceChildren(this.hasMore
      ? h("button", { type: "button", class: "link-button", text: "Load older messages", onclick: () => this.loadOlder() })
      : h("p", { class: "history-start", text: this.timeline.bySeq.size ? "This is the beginning of the chat." : "" }));
  }

  // Fill a jump in the stream from the API (the server should never leave one).
  async fillGap(from, to) {
    let after = from;
    while (after < to - 1 && !this.stopped) {
      const page = await api.history(this.uri, { after, limit: GAP_PAGE, events: 1 });
      for (const event of page.messages) this.onRoomEvent(event);
      if (!page.messages.length) return;
      after = page.messages[page.messages.length - 1].seq;
    }
  }

  // Scrolling ---------------------------------------------------------

  atBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < NEAR_BOTTOM_PX;
  }

  scrollToBottom(smooth) {
    this.scroller.scrollTo({ top: this.scroller.scrollHeight, behavior: smooth ? "smooth" : "instant" });
    this.unseen = 0;
    this.pill.hidden = true;
  }

  onScroll() {
    if (this.atBottom()) {
      this.unseen = 0;
      this.pill.hidden = true;
    }
    if (this.scroller.scrollTop < NEAR_TOP_PX) this.loadOlder();
  }

  showPill() {
    this.pill.replaceChildren(icon("down"),
      h("span", { text: `${this.unseen} new message${this.unseen === 1 ? "" : "s"}` }));
    this.pill.hidden = false;
  }

  // The stream --------------------------------------------------------

  onFrame(frame) {
    if (this.signals.onFrame(frame)) return;
    if (typeof frame.seq === "number" && frame.type !== "ready") {
      if (frame.seq > this.streamSeq + 1) this.fillGap(this.streamSeq, frame.seq).catch(() => {});
      this.streamSeq = Math.max(this.streamSeq, frame.seq);
      this.onRoomEvent(frame);
    } else if (frame.type === "ready") this.onReady(frame);
    else if (frame.type === "error") this.onError(frame);
  }

  // A room event, from the stream or a gap's history.
  onRoomEvent(event) {
    if (event.type === "message") this.onMessage(event);
    else if (MESSAGE_EVENTS.has(event.type)) this.timeline.apply(event);
    else if (event.type === "member") this.refreshMembers();
    else if (event.type === "room") this.onRoomInfo(event);
    else if (event.type === "profile") onProfile(event.user);
  }

  onMessage(message) {
    const wasAtBottom = this.atBottom();
    const sentHere = Boolean(message.client_id && this.timeline.pending.has(message.client_id));
    if (!this.timeline.add(message)) return;
    if (!this.room.members.some((m) => m.id === message.user.id)) this.refreshMembers();
    this.updateEmptyState();
    if (!this.historyLoaded) return;
    if (wasAtBottom || sentHere) {
      this.scrollToBottom(false);
    } else {
      this.unseen += 1;
      this.showPill();
    }
    this.signals.posted(message);
    this.seen();
  }

  // Signals -----------------------------------------------------------

  onSignal(what) {
    if (!this.titleEl) return; // not built yet
    if (what === "presence") {
      this.renderMembers();
    } else if (what === "typing") {
      this.typingLine.textContent = typingText(this.signals.typing);
    } else if (what === "read") {
      this.showSeenBy();
    }
  }

  // "New messages" above the first message from others after where the
  // reader had read to when the chat opened.
  showUnreadDivider() {
    if (this.dividerShown) return;
    this.dividerShown = true;
    const first = Array.from(this.timeline.confirmed.children).find((el) =>
      Number(el.dataset.seq) > this.readAtOpen && el.dataset.user !== this.me.id);
    if (first) {
      first.prepend(h("div", { class: "unread-divider", role: "separator" },
        h("span", { text: "New messages" })));
    }
  }

  // "Seen by …" under the reader's latest own message. Runs on every message
  // (a post is its poster's read): it walks back from the newest only as far as
  // that message, instead of copying the whole list.
  showSeenBy() {
    if (this.seenBy) this.seenBy.remove();
    this.seenBy = null;
    let mine = this.timeline.confirmed.lastElementChild;
    while (mine && mine.dataset.user !== this.me.id) mine = mine.previousElementSibling;
    if (!mine) return;
    const seq = Number(mine.dataset.seq);
    const names = this.room.members.filter((m) => m.id !== this.me.id
      && (this.signals.reads.get(m.username) || 0) >= seq).map((m) => m.username);
    if (names.length) mine.append((this.seenBy = h("p", { class: "seen-by", text: seenByText(names) })));
  }

  onReady() {
    // Still unconfirmed after the catch-up: never stored, so send again (the
    // server also drops a repeated client_id).
    for (const [clientId, entry] of this.timeline.pending) {
      if (entry.state !== "failed") this.transmit(clientId);
    }
  }

  onError(frame) {
    if (frame.client_id && this.timeline.pending.has(frame.client_id)) {
      this.fail(frame.client_id, `Not sent: ${frame.detail}`);
    } else {
      this.app.toast(frame.detail || "The server refused that.");
    }
  }

  onSocketState(state, detail) {
    this.el.dataset.connection = state;
    clearInterval(this.countdown);
    if (state === "reconnecting") {
      const tick = () => {
        const seconds = Math.max(0, Math.ceil((detail.retryAt - Date.now()) / 1000));
        this.bannerText.textContent = navigator.onLine === false
          ? "You are offline. Messages will be sent when the connection is back."
          : `Connection lost. Reconnecting${seconds ? ` in ${seconds} s` : ""}…`;
      };
      tick();
      this.countdown = setInterval(tick, 1000);
      this.banner.hidden = false;
      for (const [clientId, entry] of this.timeline.pending) {
        if (entry.state === "sent") this.queue(clientId);
      }
      this.signals.reset();
    } else if (state === "connecting") {
      if (!this.banner.hidden) this.bannerText.textContent = "Reconnecting…";
    } else {
      this.banner.hidden = true;
    }
    this.updateSubtitle();
  }

  // The subscription was refused, or the chat taken from us: ask the API what changed.
  async onRefused(reason) {
    let error = null;
    try {
      await api.chat(this.uri);
    } catch (caught) {
      error = caught;
    }
    if (this.stopped) return;
    if (error && error.status === 401) {
      this.app.signedOut(reason === "logged out" ? "You were signed out." : "Your session ended. Sign in again.");
    } else if (error && error.status === 404) {
      this.showProblem("This chat no longer exists.");
    } else if (reason === "left the chat") {
      if (chatPath(this.uri) === location.pathname) this.app.navigate("/");
    } else if (EXPELLED[reason] || (error && error.status === 403)) {
      // No longer a member (removed, banned, or left elsewhere): stop knocking.
      this.socket.stop();
      this.showProblem(EXPELLED[reason] || error.message);
    } else if (reason) {
      this.showProblem(`The chat closed the connection: ${reason}.`);
    }
  }

  // Reads overlap (a member event starts one, at most once a second: see
  // refreshMembers) and may be answered out of order: an answer to an older
  // read than the one shown is dropped.
  async readMembers() {
    this.membersAsked += 1;
    const asked = this.membersAsked;
    try {
      const room = await api.chat(this.uri);
      if (this.stopped || asked < this.membersShown) return;
      this.membersShown = asked;
      this.room = room;
      this.renderMembers();
    } catch {
      // The next unknown sender tries again.
    }
  }

  // Sending -----------------------------------------------------------

  onKey(event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
      event.preventDefault();
      this.send();
    } else if (event.key === "ArrowUp" && !this.input.value && !event.isComposing) {
      // Up in an empty composer edits my last message, as in most chat apps.
      const last = this.timeline.lastEditable();
      if (last) {
        event.preventDefault();
        this.timeline.startEdit(last.seq);
      }
    }
  }

  // Message actions (from the timeline) ----------------------------------

  async editMessage(message, text) {
    try {
      return await api.edit(this.uri, message.id, text);
    } catch (error) {
      this.app.toast(error.message);
      throw error;
    }
  }

  async deleteMessage(message) {
    try {
      await api.deleteMessage(this.uri, message.id);
    } catch (error) {
      this.app.toast(error.message);
    }
  }

  async react(message, emoji, on) {
    try {
      await api.react(this.uri, message.id, emoji, on);
    } catch (error) {
      this.app.toast(error.message);
    }
  }

  onInput() {
    const input = this.input;
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
    this.sendButton.disabled = !input.value.trim();
    this.signals.composing(Boolean(input.value.trim()));
    const left = this.app.maxChars - input.value.length;
    this.counter.textContent = left < 200 ? ` · ${left} characters left` : "";
  }

  send() {
    const text = this.input.value.trim();
    if (!text) return;
    this.signals.sent(); // posting ends the typing: no stop frame needed
    this.input.value = "";
    this.onInput();
    const clientId = newClientId();
    this.timeline.addPending(clientId, text);
    this.transmit(clientId);
    this.scrollToBottom(false);
    this.input.focus();
  }

  transmit(clientId) {
    const entry = this.timeline.pending.get(clientId);
    if (!entry) return;
    if (!this.socket.send({ type: "message", message: entry.text, client_id: clientId })) {
      this.queue(clientId);
      return;
    }
    clearTimeout(entry.timer);
    this.timeline.setPendingState(clientId, "sent");
    entry.timer = setTimeout(() => {
      this.fail(clientId, "Not sent: the server did not confirm it.");
      // No answer on an open socket: it is probably dead, so get a fresh one.
      this.socket.replace();
    }, SEND_TIMEOUT_MS);
  }

  queue(clientId) {
    const entry = this.timeline.pending.get(clientId);
    clearTimeout(entry.timer);
    this.timeline.setPendingState(clientId, "queued", "Waiting for the connection…");
  }

  fail(clientId, reason) {
    const entry = this.timeline.pending.get(clientId);
    if (!entry) return;
    clearTimeout(entry.timer);
    this.timeline.setPendingState(clientId, "failed", reason, (id) => this.retry(id));
  }

  // Retry over HTTP: its answer confirms the message even when the stream
  // cannot (the server does not publish a repeated client_id again).
  async retry(clientId) {
    const entry = this.timeline.pending.get(clientId);
    if (!entry) return;
    this.timeline.setPendingState(clientId, "retrying", "Sending…");
    try {
      const message = await api.post(this.uri, entry.text, clientId);
      if (!this.stopped) this.onMessage(message);
    } catch (error) {
      if (error.status === 401) this.app.signedOut();
      else this.fail(clientId, error.message);
    }
  }
}

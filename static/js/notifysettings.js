// The settings page's Notifications card (settings.js): this browser's
// permission (asked only on the button's click) and push registration, and
// my level of every chat, each changeable here. The chats come a page at a
// time from the chat list API; levels changed elsewhere show at once (levels.js).

import { api } from "./api.js";
import { chatTitle } from "./chat.js";
import { avatar, h } from "./dom.js";
import { effectiveLevel, levelChoices, onLevel, saveLevel } from "./levels.js";
import { askPermission, permission, pushState, pushSupported, registerPush } from "./notifications.js";
import { chatFace, chatName } from "./people.js";

const PERMISSION_TEXT = {
  granted: "On: this browser shows a notification for new messages while the chat is open in a tab.",
  denied: "Blocked: allow notifications for this site in your browser's settings.",
  default: "Off: you have not been asked yet.",
  unsupported: "This browser cannot show notifications.",
};

export class NotificationSettings {
  constructor(app) {
    this.app = app;
    this.rows = new Map(); // uri -> { chat, select, status }
    this.cursor = null;
    this.permissionText = h("p", { class: "muted small", role: "status" });
    this.enableButton = h("button", { type: "button", class: "button small", text: "Enable notifications",
      onclick: () => this.enable() });
    this.pushText = h("p", { class: "muted small", role: "status" });
    this.pushButton = h("button", { type: "button", class: "button small", text: "Register this browser",
      hidden: true, onclick: () => this.register() });
    this.list = h("ul", { class: "level-list", "aria-label": "Notifications of each chat" });
    this.listStatus = h("p", { class: "form-status", role: "status", "aria-live": "polite" });
    this.moreButton = h("button", { type: "button", class: "button small", text: "Show more chats", hidden: true,
      onclick: () => this.loadPage() });
    this.el = h("section", { class: "settings-card notification-settings", "aria-labelledby": "notifications-title" },
      h("h2", { id: "notifications-title", text: "Notifications" }),
      h("p", { class: "muted", text: "How this browser tells you of new messages, and which chats do." }),
      h("div", { class: "setting-row" },
        h("div", { class: "setting-text" }, h("h3", { text: "Desktop notifications" }), this.permissionText),
        this.enableButton),
      h("div", { class: "setting-row" },
        h("div", { class: "setting-text" }, h("h3", { text: "Push to this browser" }), this.pushText),
        this.pushButton),
      h("h3", { text: "Chats" }),
      this.list, this.listStatus, h("div", { class: "form-actions" }, this.moreButton));
    this.stopLevel = onLevel((uri, level) => this.onLevel(uri, level));
    // The answer may change in the browser's own site settings meanwhile.
    navigator.permissions?.query({ name: "notifications" }).then((status) => {
      status.onchange = () => {
        if (this.stopped) return;
        this.showPermission();
        this.showPush();
      };
    }).catch(() => {});
    this.showPermission();
    this.showPush();
    this.loadPage();
  }

  stop() {
    this.stopLevel();
    this.stopped = true;
  }

  // This browser ---------------------------------------------------------

  showPermission() {
    const state = permission();
    this.permissionText.textContent = PERMISSION_TEXT[state];
    this.enableButton.hidden = state !== "default";
  }

  async enable() {
    this.enableButton.disabled = true;
    const answer = await askPermission();
    this.enableButton.disabled = false;
    this.showPermission();
    if (answer === "granted" && pushSupported()) await this.register();
  }

  async showPush() {
    let state;
    try {
      state = await pushState();
    } catch (error) {
      this.pushText.textContent = `Could not check: ${error.message}`;
      return;
    }
    if (this.stopped) return;
    const granted = permission() === "granted";
    // Registered again quietly (the same endpoint only updates): a sign-out
    // forgets the device on the server while the browser keeps its subscription.
    if (state === "registered" && granted) registerPush().catch(() => {});
    this.pushButton.hidden = state !== "unregistered" || !granted;
    this.pushText.textContent = state === "unsupported" ? "Not available in this browser."
      : state === "registered" ? "On: this browser is told of new messages even when no tab is open."
        : granted ? "Off: this browser is not registered for pushes."
          : "Off: enable desktop notifications first.";
  }

  async register() {
    this.pushButton.disabled = true;
    this.pushText.classList.remove("error");
    try {
      await registerPush();
    } catch (error) {
      this.pushButton.disabled = false;
      this.pushButton.hidden = false;
      this.pushText.textContent = `Could not register this browser: ${error.message}`;
      this.pushText.classList.add("error");
      return;
    }
    this.pushButton.disabled = false;
    await this.showPush();
  }

  // My chats' levels -------------------------------------------------------

  async loadPage() {
    this.moreButton.disabled = true;
    this.listStatus.classList.remove("error");
    this.listStatus.textContent = "Loading your chats…";
    let page;
    try {
      page = await api.chatPage(this.cursor);
    } catch (error) {
      if (this.stopped) return;
      this.listStatus.textContent = `Could not load your chats: ${error.message}`;
      this.listStatus.classList.add("error");
      this.moreButton.disabled = false;
      this.moreButton.hidden = false;
      this.moreButton.textContent = "Try again";
      return;
    }
    if (this.stopped) return;
    for (const chat of page.chats) if (!this.rows.has(chat.uri)) this.list.append(this.row(chat));
    this.cursor = page.chats.length ? page.chats[page.chats.length - 1].cursor : this.cursor;
    this.listStatus.textContent = this.rows.size ? "" : "You are in no chats yet.";
    this.moreButton.textContent = "Show more chats";
    this.moreButton.hidden = !page.has_more;
    this.moreButton.disabled = false;
  }

  row(chat) {
    const me = this.app.me;
    const name = chatName(chat, me) || chatTitle(chat.people, me, chat.members);
    const select = h("select", { class: "level-select", "aria-label": `Notifications of ${name}`,
      dataset: { uri: chat.uri }, onchange: () => this.change(chat.uri) },
    levelChoices(chat.kind).map((choice) => h("option", { value: choice.level, text: choice.label })));
    select.value = effectiveLevel(chat.notifications, chat.kind);
    const status = h("p", { class: "form-status error", role: "alert" });
    this.rows.set(chat.uri, { chat, select, status });
    return h("li", { class: "level-row", dataset: { uri: chat.uri } },
      avatar(chatFace(chat, me) || name, "small"),
      h("span", { class: "level-name" }, h("span", { class: "level-title", text: name }),
        h("span", { class: "muted small", text: chat.kind === "dm" ? "Direct message" : "Room" })),
      select, status);
  }

  async change(uri) {
    const { chat, select, status } = this.rows.get(uri);
    const level = select.value;
    status.textContent = "";
    select.disabled = true;
    try {
      await saveLevel(uri, level);
    } catch (error) {
      select.value = effectiveLevel(chat.notifications, chat.kind); // as it still is
      status.textContent = `Not changed: ${error.message}`;
    } finally {
      select.disabled = false;
    }
  }

  onLevel(uri, level) {
    const row = this.rows.get(uri);
    if (!row) return;
    row.chat.notifications = level;
    row.select.value = effectiveLevel(level, row.chat.kind);
  }
}

// The page: who is signed in, a tiny router (/ and /chats/<uri>/), the sign-in
// form, the list of my chats, and toasts. The login is an HttpOnly cookie the
// script never sees; nothing is kept in localStorage.

import { accounts } from "./account-api.js";
import { AdminView } from "./admin.js";
import { api, ApiError } from "./api.js";
import { ChatView, chatTitle } from "./chat.js";
import { avatar, h, icon } from "./dom.js";
import { installNotifications, setTitle } from "./notify.js";
import { notificationsButton, showing, startNotifications, stopNotifications } from "./notifications.js";
import { chatFace, chatName, learn, mentionBadge, newMessageButton, personAvatar, personName } from "./people.js";
import { resetForm, SettingsView } from "./settings.js";
import { onReadElsewhere } from "./signals.js";

const CHAT_PATH = /^\/chats\/([0-9a-f]{15})\/$/;
// Account pages (settings.js, admin.js).
const PAGES = { "/settings/": SettingsView, "/admin/": AdminView };
// A list refresh asked for by another tab's read waits this long for more.
const REFRESH_DEBOUNCE_MS = 300;

const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
const shortDate = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });

function ago(iso) {
  const ms = Date.parse(iso);
  const seconds = Math.round((ms - Date.now()) / 1000);
  if (seconds > -60) return "now";
  if (seconds > -3600) return relative.format(Math.round(seconds / 60), "minute");
  if (seconds > -86_400) return relative.format(Math.round(seconds / 3600), "hour");
  if (seconds > -7 * 86_400) return relative.format(Math.round(seconds / 86_400), "day");
  return shortDate.format(ms);
}

class App {
  constructor(root) {
    this.root = root;
    this.me = null;
    this.view = null;
    this.maxChars = Number(document.body.dataset.maxChars) || 2000;
    this.toasts = h("div", { class: "toasts", role: "status", "aria-live": "polite" });
    document.body.append(this.toasts);
    window.addEventListener("popstate", () => this.route());
    // Same-origin links marked data-link navigate without a page load.
    document.addEventListener("click", (event) => {
      const link = event.target.closest("a[data-link]");
      if (!link || event.defaultPrevented || event.button !== 0
          || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
      event.preventDefault();
      this.navigate(link.getAttribute("href"));
    });
  }

  async start() {
    installNotifications();
    try {
      this.me = await api.me();
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 401) {
        this.fatal(error.message);
        return;
      }
    }
    this.route();
  }

  fatal(text) {
    this.root.replaceChildren(h("div", { class: "loading-screen" },
      h("p", { class: "inline-error", role: "alert", text }),
      h("button", { type: "button", class: "button", text: "Try again", onclick: () => location.reload() })));
  }

  navigate(path, replace = false) {
    if (replace) history.replaceState(null, "", path);
    else history.pushState(null, "", path);
    this.route();
  }

  // Stop what the current view listens to.
  leaveView() {
    if (this.view && this.view.unmount) this.view.unmount();
    this.view = null;
    if (this.stopHome) this.stopHome();
    this.stopHome = null;
  }

  route() {
    this.leaveView();
    const reset = /^#reset=([\w-]+)$/.exec(location.hash);
    if (reset) {
      resetForm(this, reset[1]);
      return;
    }
    const chat = CHAT_PATH.exec(location.pathname);
    this.root.classList.toggle("in-chat", Boolean(chat && this.me));
    if (this.me) startNotifications(this);
    showing(chat && this.me ? chat[1] : null);
    if (!this.me) {
      this.showAuth(chat ? "Sign in to join this chat." : "");
      return;
    }
    const Page = PAGES[location.pathname];
    if (chat) {
      this.view = new ChatView(this, chat[1]);
      this.view.mount(this.shell());
    } else if (Page && (Page !== AdminView || this.me.admin)) {
      this.view = new Page(this);
      this.view.mount(this.shell());
    } else {
      if (location.pathname !== "/") history.replaceState(null, "", "/");
      this.showHome();
    }
  }

  // The session ended (signed out here or elsewhere, or the token expired).
  signedOut(message = "") {
    this.leaveView();
    this.me = null;
    stopNotifications();
    this.root.classList.remove("in-chat");
    this.showAuth(message);
  }

  toast(text) {
    const item = h("div", { class: "toast", text });
    this.toasts.append(item);
    setTimeout(() => item.remove(), 3500);
  }

  // The top bar and the main area a view draws into.
  shell() {
    const main = h("main", { class: "main", id: "main" });
    learn(this.me);
    this.accountLink = h("a", { href: "/settings/", class: "account-link", "data-link": "",
      "aria-label": "Settings", title: "Settings" },
    personAvatar(this.me, "small"), personName(this.me, { class: "account-name" }));
    const bar = h("header", { class: "topbar" },
      h("a", { href: "/", class: "brand", "data-link": "" }, h("span", { class: "brand-mark", "aria-hidden": "true" }), "Chat"),
      h("div", { class: "account" },
        this.accountLink,
        h("button", { type: "button", class: "icon-button", "aria-label": "Sign out", title: "Sign out",
          onclick: () => this.signOut() }, icon("logout"))));
    this.root.replaceChildren(bar, main);
    return main;
  }

  // The top bar's name and picture after the profile changed.
  refreshAccount() {
    if (!this.accountLink) return;
    this.accountLink.replaceChildren(personAvatar(this.me, "small"),
      personName(this.me, { class: "account-name" }));
  }

  async signOut() {
    try {
      await api.signOut();
    } catch (error) {
      if (error.status !== 401) {
        this.toast(error.message);
        return;
      }
    }
    history.pushState(null, "", "/");
    this.signedOut("You are signed out.");
  }

  // Sign in / sign up -------------------------------------------------

  showAuth(notice) {
    setTitle("Sign in · Chat");
    let mode = "signin";
    // An invite link (/?invite=<code>) opens the sign-up form with its code.
    const invite = new URLSearchParams(location.search).get("invite");
    const error = h("p", { class: "form-error", role: "alert", id: "auth-error" });
    const username = h("input", { id: "auth-username", name: "username", type: "text", required: true,
      autocomplete: "username", autocapitalize: "none", spellcheck: "false", maxlength: "150",
      pattern: "[\\w.@+\\-]+", "aria-describedby": "auth-error" });
    const password = h("input", { id: "auth-password", name: "password", type: "password", required: true,
      autocomplete: "current-password", "aria-describedby": "auth-error" });
    const submit = h("button", { type: "submit", class: "button primary wide", text: "Sign in" });
    const heading = h("h1", { text: "Welcome back" });
    const switchText = h("span", { text: "New here? " });
    const switchButton = h("button", { type: "button", class: "link-button", text: "Create an account" });
    const usernameHint = h("p", { class: "field-hint", id: "username-hint", hidden: true,
      text: "Letters, digits and @ . + - _ only." });

    const setMode = (next) => {
      mode = next;
      const signUp = mode === "signup";
      heading.textContent = signUp ? "Create your account" : "Welcome back";
      submit.textContent = signUp ? "Create account" : "Sign in";
      switchText.textContent = signUp ? "Already have an account? " : "New here? ";
      switchButton.textContent = signUp ? "Sign in" : "Create an account";
      password.autocomplete = signUp ? "new-password" : "current-password";
      usernameHint.hidden = !signUp;
      error.textContent = "";
      setTitle(`${signUp ? "Create account" : "Sign in"} · Chat`);
    };
    switchButton.addEventListener("click", () => setMode(mode === "signin" ? "signup" : "signin"));
    // A forgotten password: a reset link by mail to the account's address.
    const forgot = h("button", { type: "button", class: "link-button", text: "Forgot your password?",
      onclick: async () => {
        if (!username.value.trim()) {
          error.textContent = "Enter your username first.";
          username.focus();
          return;
        }
        try {
          error.textContent = (await accounts.requestReset(username.value.trim())).detail;
        } catch (caught) {
          error.textContent = caught.message;
        }
      } });

    const form = h("form", { class: "auth-form", novalidate: true },
      heading,
      notice ? h("p", { class: "notice", text: notice }) : null,
      h("label", { for: "auth-username", text: "Username" }), username, usernameHint,
      h("label", { for: "auth-password", text: "Password" }), password,
      error, submit,
      h("p", { class: "switch" }, switchText, switchButton),
      h("p", { class: "switch" }, forgot));

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.textContent = "";
      if (!username.value.trim() || !password.value) {
        error.textContent = "Enter a username and a password.";
        (username.value.trim() ? password : username).focus();
        return;
      }
      submit.disabled = true;
      submit.classList.add("busy");
      try {
        if (mode === "signup") await accounts.signUpWith(username.value.trim(), password.value, invite);
        await api.signIn(username.value.trim(), password.value);
        this.me = await api.me();
        this.route();
      } catch (caught) {
        error.textContent = caught.message;
        submit.disabled = false;
        submit.classList.remove("busy");
      }
    });

    this.root.replaceChildren(h("div", { class: "auth-screen" },
      h("div", { class: "auth-card" },
        h("div", { class: "brand big" }, h("span", { class: "brand-mark", "aria-hidden": "true" }), "Chat"),
        form)));
    if (invite) setMode("signup");
    username.focus();
  }

  // My chats ----------------------------------------------------------

  async showHome() {
    setTitle("My chats · Chat");
    const main = this.shell();
    const list = h("ul", { class: "chat-list", "aria-label": "My chats" });
    const status = h("div", { class: "list-status" }, h("div", { class: "spinner", role: "status", "aria-label": "Loading chats" }));
    const newButton = h("button", { type: "button", class: "button primary" }, icon("plus"), h("span", { text: "New chat" }));
    const error = h("p", { class: "form-error", role: "alert" });
    newButton.addEventListener("click", async () => {
      newButton.disabled = true;
      error.textContent = "";
      try {
        const created = await api.newChat();
        this.navigate(`/chats/${created.uri}/`);
      } catch (caught) {
        if (caught.status === 401) this.signedOut();
        error.textContent = caught.message;
        newButton.disabled = false;
      }
    });
    main.append(h("section", { class: "home" },
      h("div", { class: "home-head" }, h("h1", { text: "My chats" }),
        h("div", { class: "home-actions" }, notificationsButton(), newMessageButton(this), newButton)),
      error, status, list));

    // Read on another tab (at once) or another device (when this tab comes
    // back): the server's unread counts have changed.
    let timer = null;
    const refresh = () => {
      clearTimeout(timer);
      timer = setTimeout(() => this.listChats(list, status), REFRESH_DEBOUNCE_MS);
    };
    const onVisible = () => {
      if (document.visibilityState === "visible") refresh();
    };
    const stopListening = onReadElsewhere(refresh);
    document.addEventListener("visibilitychange", onVisible);
    this.stopHome = () => {
      clearTimeout(timer);
      stopListening();
      document.removeEventListener("visibilitychange", onVisible);
    };
    await this.listChats(list, status);
  }

  // The rows of my chats, all from one request: names, latest message, unread count.
  async listChats(list, status) {
    let rooms;
    try {
      rooms = await api.chats();
    } catch (caught) {
      if (caught.status === 401) {
        this.signedOut();
        return;
      }
      status.replaceChildren(h("p", { class: "inline-error", role: "alert", text: caught.message }));
      return;
    }
    if (!list.isConnected) return;
    if (!rooms.length) {
      status.replaceChildren(h("div", { class: "empty-card" },
        h("h2", { text: "No chats yet" }),
        h("p", { text: "Start a chat, then share its link with the people you want to talk to." })));
      return;
    }
    status.remove();
    list.replaceChildren(...rooms.map((room) => this.chatItem(room)));
  }

  chatItem(room) {
    const other = room.people.find((m) => m.id !== this.me.id) || this.me;
    const message = room.last_message;
    const who = message && (message.user.id === this.me.id ? "You" : message.user.username);
    const { unread } = room;
    return h("li", {}, h("a", {
      href: `/chats/${room.uri}/`, class: `chat-item${unread ? " unread" : ""}`, "data-link": "",
    },
      h("span", { class: "chat-item-avatar" }, avatar(chatFace(room, this.me) || other.username)),
      h("span", { class: "chat-item-body" },
        h("span", { class: "chat-item-top" },
          h("span", { class: "chat-item-title",
            text: chatName(room, this.me) || chatTitle(room.people, this.me, room.members) }),
          h("time", { datetime: room.updated, text: ago(room.updated) })),
        h("span", { class: "chat-item-bottom" },
          h("span", { class: "chat-item-preview",
            text: message ? `${who}: ${message.text.replace(/\s+/g, " ")}` : "No messages yet" }),
          mentionBadge(room),
          unread ? h("span", { class: "badge", "aria-label": `${unread} unread`,
            text: unread > 99 ? "99+" : String(unread) }) : null))));
  }
}

new App(document.getElementById("app")).start();

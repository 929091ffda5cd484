// The page: who is signed in, a tiny router (/ and /chats/<uri>/), the sign-in
// form, the tab's user stream with the list of my chats, and toasts. The login is an HttpOnly cookie the
// script never sees; nothing is kept in localStorage.

import { accounts } from "./account-api.js";
import { AdminView } from "./admin.js";
import { api, ApiError } from "./api.js";
import { ChatView } from "./chat.js";
import { ChatList } from "./chatlist.js";
import { h, icon } from "./dom.js";
import { installNotifications, setTitle } from "./notify.js";
import { notificationsButton, onStreamFrame, showing, startNotifications, stopNotifications } from "./notifications.js";
import { levelChanged } from "./levels.js";
import { newMessageButton } from "./people.js";
import { learn, personAvatar, personName } from "./profiles.js";
import { resetForm, SettingsView } from "./settings.js";
import { searchBox } from "./search.js";
import { UserStream } from "./stream.js";

const CHAT_PATH = /^\/chats\/([0-9a-f]{15})\/$/;
// Account pages (settings.js, admin.js).
const PAGES = { "/settings/": SettingsView, "/admin/": AdminView };

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
  }

  // One user stream per tab while signed in: the chat list and the open chat ride on it.
  connect() {
    if (this.stream) return;
    this.chatList = new ChatList(this.me, { openUri: () => (this.view && this.view.uri) || null });
    this.stream = new UserStream({
      onChats: (chats, hasMore) => {
        this.chatList.onChats(chats, hasMore);
        onStreamFrame({ type: "chats", chats });
      },
      onChat: (chat) => {
        this.chatList.onChat(chat);
        onStreamFrame({ type: "chat", chat });
      },
      onGone: (uri) => {
        this.chatList.onGone(uri);
        onStreamFrame({ type: "chat_gone", uri });
      },
      onEvent: (frame) => {
        this.chatList.onEvent(frame);
        onStreamFrame(frame);
      },
      onLevel: levelChanged,
      onState: (state) => {
        if (this.frame) this.frame.dataset.stream = state;
      },
      onRefused: (reason) => this.checkSession(reason),
    });
    this.stream.start();
  }

  disconnect() {
    if (this.stream) this.stream.stop();
    if (this.chatList) this.chatList.stop();
    this.stream = this.chatList = this.frame = null;
  }

  // The stream was refused or closed for policy: is the session still good?
  async checkSession(reason) {
    try {
      await api.me();
    } catch (error) {
      if (error instanceof ApiError && error.status === 401 && this.me) {
        this.signedOut(reason === "logged out" ? "You were signed out." : "Your session ended. Sign in again.");
      }
    }
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
      this.root.classList.remove("in-page");
      this.showAuth(chat ? "Sign in to join this chat." : "");
      return;
    }
    // Settings and admin take the main area; on a phone, the whole screen under the top bar.
    const Page = PAGES[location.pathname];
    const onPage = Boolean(!chat && Page && (Page !== AdminView || this.me.admin));
    this.root.classList.toggle("in-page", onPage);
    this.connect();
    if (chat) {
      this.view = new ChatView(this, chat[1]);
      this.view.mount(this.shell());
    } else if (onPage) {
      this.view = new Page(this);
      this.view.mount(this.shell());
    } else {
      if (location.pathname !== "/") history.replaceState(null, "", "/");
      this.showHome();
    }
    this.chatList.markOpen();
  }

  // The session ended (signed out here or elsewhere, or the token expired).
  signedOut(message = "") {
    this.leaveView();
    this.disconnect();
    this.me = null;
    stopNotifications();
    this.root.classList.remove("in-chat", "in-page");
    this.showAuth(message);
  }

  toast(text) {
    const item = h("div", { class: "toast", text });
    this.toasts.append(item);
    setTimeout(() => item.remove(), 3500);
  }

  // The top bar, the chat list beside the main area, and the main area (emptied)
  // a view draws into. The frame stays while signed in: only the main area changes.
  shell() {
    if (this.frame && this.frame.isConnected) {
      const main = this.frame.querySelector("#main");
      main.replaceChildren();
      return main;
    }
    const main = h("main", { class: "main", id: "main" });
    learn(this.me);
    this.accountLink = h("a", { href: "/settings/", class: "account-link", "data-link": "",
      "aria-label": "Settings", title: "Settings" },
    personAvatar(this.me, "small"), personName(this.me, { class: "account-name" }));
    const bar = h("header", { class: "topbar" },
      h("a", { href: "/", class: "brand", "data-link": "" }, h("span", { class: "brand-mark", "aria-hidden": "true" }), "Chat"),
      searchBox(this),
      h("div", { class: "account" },
        this.accountLink,
        h("button", { type: "button", class: "icon-button", "aria-label": "Sign out", title: "Sign out",
          onclick: () => this.signOut() }, icon("logout"))));
    this.frame = h("div", { class: "layout" }, this.sidebar(), main);
    this.root.replaceChildren(bar, this.frame);
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

  // On a wide screen the list stays beside the open chat (CSS); on a phone
  // the home screen is the list and a chat takes the whole screen.
  showHome() {
    setTitle("My chats · Chat");
    const main = this.shell();
    main.append(h("section", { class: "home-empty" },
      h("div", { class: "empty-card" },
        h("h2", { text: "Pick a chat" }),
        h("p", { text: "Or start a new one and share its link." }))));
  }

  sidebar() {
    const newButton = h("button", { type: "button", class: "button primary small" }, icon("plus"),
      h("span", { text: "New chat" }));
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
      } finally {
        newButton.disabled = false;
      }
    });
    return h("nav", { class: "sidebar", "aria-label": "Chats" },
      h("div", { class: "home-head" }, h("h1", { text: "My chats" }),
        h("div", { class: "home-actions" }, notificationsButton(), newMessageButton(this), newButton)),
      error, this.chatList.status, this.chatList.list);
  }
}

new App(document.getElementById("app")).start();

// Search: the box in the top bar (/ or Ctrl+K focuses it), its results grouped
// by chat with the matched words marked, more as the list is scrolled, filters
// for a chat and a person; a result opens its chat at the message (?at=seq),
// with the history around it, the message highlighted.

import { api } from "./api.js";
import { chatTitle } from "./chat.js";
import { h, icon } from "./dom.js";

const PAGE = 20;
const TYPING_PAUSE_MS = 250;
// How many newer pages a jump loads to reach the chat's latest message.
const NEWER_PAGES = 10;
const NEWER_PAGE = 200;
const HIT_CLASS = "search-hit";

const when = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });

// The server's highlight ("text, escaped, with <mark>"), as nodes: only its
// text and its marks are kept, whatever else it might hold.
function marked(html) {
  const doc = new DOMParser().parseFromString(`<body>${html}</body>`, "text/html");
  return [...doc.body.childNodes].map((node) =>
    node.nodeName === "MARK" ? h("mark", { text: node.textContent }) : node.textContent);
}

// The seq a search result asked the chat to open at, if any.
export function jumpTarget() {
  const at = Number(new URLSearchParams(location.search).get("at"));
  return Number.isSafeInteger(at) && at > 0 ? at : null;
}

// The history around seq, then newer pages up to the chat's seq when opened
// (`until`), so that the live stream continues it without a hole.
export async function loadAround(uri, seq, until, limit) {
  const page = await api.history(uri, { around: seq, limit });
  const messages = [...page.messages];
  let more = page.has_more_after;
  let after = messages.length ? messages[messages.length - 1].seq : seq;
  for (let i = 0; more && after < until && i < NEWER_PAGES; i += 1) {
    const newer = await api.history(uri, { after, limit: NEWER_PAGE });
    messages.push(...newer.messages);
    if (!newer.messages.length) break;
    after = newer.messages[newer.messages.length - 1].seq;
    more = newer.has_more;
  }
  return { messages, hasMore: page.has_more };
}

// Scroll the message at seq into the middle of the view and mark it.
export function showHit(timeline, seq) {
  const el = timeline.bySeq.get(seq);
  if (!el) return false;
  el.classList.add(HIT_CLASS);
  el.scrollIntoView({ block: "center", behavior: "instant" });
  return true;
}

export class SearchBox {
  constructor(app) {
    this.app = app;
    this.cursor = null;
    this.loading = false;
    this.asked = 0; // searches started; only the latest one's answer is shown
    this.titles = new Map(); // uri -> a chat's title, from my chats
    this.input = h("input", { type: "search", class: "search-input", id: "search-input",
      placeholder: "Search messages", "aria-label": "Search messages", autocomplete: "off",
      maxlength: "200", "aria-controls": "search-panel", "aria-keyshortcuts": "/ Control+K" });
    this.room = h("select", { class: "search-filter", "aria-label": "In chat" },
      h("option", { value: "", text: "All chats" }));
    this.person = h("input", { type: "text", class: "search-filter", placeholder: "From anyone",
      "aria-label": "From", autocomplete: "off", autocapitalize: "none", spellcheck: "false", maxlength: "150" });
    this.list = h("div", { class: "search-results", role: "list" });
    this.status = h("p", { class: "search-status", role: "status", "aria-live": "polite" });
    this.sentinel = h("div", { class: "search-more", "aria-hidden": "true" });
    this.panel = h("div", { class: "search-panel", id: "search-panel", hidden: true },
      h("div", { class: "search-filters" }, this.room, this.person,
        h("button", { type: "button", class: "icon-button", "aria-label": "Close search",
          title: "Close search", onclick: () => this.close() }, icon("close"))),
      this.status, this.list, this.sentinel);
    this.el = h("div", { class: "search", role: "search" },
      h("span", { class: "search-icon", "aria-hidden": "true" }, icon("search")), this.input, this.panel);

    let timer = null;
    const later = () => {
      clearTimeout(timer);
      timer = setTimeout(() => this.run(), TYPING_PAUSE_MS);
    };
    this.input.addEventListener("input", later);
    this.person.addEventListener("input", later);
    this.room.addEventListener("change", () => this.run());
    this.input.addEventListener("focus", () => this.open());
    this.el.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        this.close();
        this.input.blur();
      } else if (event.key === "Enter" && event.target === this.input) {
        clearTimeout(timer);
        this.run();
      }
    });
    this.onOutside = (event) => {
      if (!this.el.contains(event.target)) this.close();
    };
    this.more = new IntersectionObserver((entries) => {
      if (entries.some((entry) => entry.isIntersecting)) this.next();
    }, { root: this.panel });
    this.more.observe(this.sentinel);
  }

  async open() {
    if (!this.panel.hidden) return;
    this.panel.hidden = false;
    document.addEventListener("pointerdown", this.onOutside);
    try {
      const chats = await api.chats();
      const chosen = this.room.value;
      this.room.replaceChildren(h("option", { value: "", text: "All chats" }),
        ...chats.map((chat) => {
          const title = chat.name || chatTitle(chat.people, this.app.me, chat.members);
          this.titles.set(chat.uri, title);
          return h("option", { value: chat.uri, text: title });
        }));
      this.room.value = chosen;
    } catch {
      // The filter keeps "All chats"; the search itself says what is wrong.
    }
  }

  close() {
    this.panel.hidden = true;
    document.removeEventListener("pointerdown", this.onOutside);
  }

  focus() {
    this.input.focus();
    this.input.select();
  }

  params() {
    const params = { q: this.input.value.trim(), limit: PAGE };
    if (this.room.value) params.uri = this.room.value;
    if (this.person.value.trim()) params.from = this.person.value.trim();
    return params;
  }

  async run() {
    const asked = ++this.asked;
    this.cursor = null;
    this.list.replaceChildren();
    this.lastGroup = null;
    const params = this.params();
    if (params.q.length < 2) {
      this.status.textContent = params.q ? "Type at least 2 characters." : "";
      return;
    }
    this.open();
    this.status.textContent = "Searching…";
    await this.fetch(params, asked);
  }

  async next() {
    if (!this.cursor || this.loading) return;
    await this.fetch({ ...this.params(), cursor: this.cursor }, this.asked);
  }

  async fetch(params, asked) {
    this.loading = true;
    try {
      const page = await api.search(params);
      if (asked !== this.asked) return;
      for (const result of page.results) this.add(result);
      this.cursor = page.next;
      const count = this.list.querySelectorAll(".search-result").length;
      this.status.textContent = count === 0 ? "No messages found."
        : page.partial ? "Many messages match and not all are shown: the newest, and some "
          + "older ones. Add a word, or pick a chat or a person, to narrow the search." : "";
    } catch (error) {
      if (asked !== this.asked) return;
      if (error.status === 401) this.app.signedOut();
      this.status.textContent = error.message;
      this.cursor = null;
    } finally {
      this.loading = false;
    }
    // A short first page leaves the sentinel in view: keep going.
    if (asked === this.asked && this.cursor && this.sentinel.getBoundingClientRect().top
        < this.panel.getBoundingClientRect().bottom) this.next();
  }

  // Consecutive results of one chat share its heading.
  add(result) {
    if (!this.lastGroup || this.lastGroup.dataset.uri !== result.uri) {
      const title = result.name || this.titles.get(result.uri) || "A chat";
      this.lastGroup = h("ul", { class: "search-group", "aria-label": title, dataset: { uri: result.uri } });
      this.list.append(h("div", { class: "search-group-title", role: "presentation", text: title }), this.lastGroup);
    }
    const path = `/chats/${result.uri}/?at=${result.seq}`;
    this.lastGroup.append(h("li", { class: "search-result" },
      h("a", { href: path, "data-link": "", onclick: () => this.close() },
        h("span", { class: "search-result-head" },
          h("span", { class: "search-result-user", text: result.user.username }),
          h("time", { datetime: result.created, text: when.format(new Date(result.created)) })),
        h("span", { class: "search-result-text" }, ...marked(result.highlight)))));
  }
}

// The box, and the keys that focus it from anywhere on the page.
export function searchBox(app) {
  const box = new SearchBox(app);
  if (app.searchKeys) document.removeEventListener("keydown", app.searchKeys);
  app.searchKeys = (event) => {
    if (!box.el.isConnected) return;
    const typing = event.target.closest && event.target.closest("input, textarea, select, [contenteditable]");
    if ((event.key === "k" && (event.ctrlKey || event.metaKey)) || (event.key === "/" && !typing)) {
      event.preventDefault();
      box.focus();
    }
  };
  document.addEventListener("keydown", app.searchKeys);
  return box.el;
}

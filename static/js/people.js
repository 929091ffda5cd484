// Talking to people: formatted messages (the server's HTML), chat names and
// topics, @ completion in the composer, the @ badge, and the "New message"
// dialog that starts a direct message.
//
// A message's `html` was rendered and sanitized once on the server. It is
// parsed here in an inert <template> and copied node by node through the same
// allow-list, so nothing outside it reaches the page even if the server had a bug.

import { api } from "./api.js";
import { avatar, h, icon, richText } from "./dom.js";

const TAGS = new Set(["P", "BR", "HR", "STRONG", "EM", "DEL", "S", "CODE", "PRE", "A", "UL", "OL",
  "LI", "BLOCKQUOTE", "SPAN", "H1", "H2", "H3", "H4", "H5", "H6"]);
const ATTRIBUTES = { A: ["href", "title"], SPAN: ["class", "data-user"], CODE: ["class"], OL: ["start"] };
const SAFE_URL = /^(https?:|mailto:)/i;
const MAX_SUGGESTIONS = 8;

function copyAllowed(source, me) {
  if (source.nodeType === Node.TEXT_NODE) return document.createTextNode(source.data);
  if (source.nodeType !== Node.ELEMENT_NODE || !TAGS.has(source.tagName)) {
    return document.createTextNode(source.textContent || "");
  }
  const node = document.createElement(source.tagName.toLowerCase());
  for (const name of ATTRIBUTES[source.tagName] || []) {
    const value = source.getAttribute(name);
    if (value === null || (name === "href" && !SAFE_URL.test(value))) continue;
    node.setAttribute(name, value);
  }
  if (source.tagName === "A") {
    node.target = "_blank";
    node.rel = "noopener noreferrer nofollow";
  }
  if (source.tagName === "SPAN" && node.classList.contains("mention")) {
    const who = (node.dataset.user || "").toLowerCase();
    if (who === "@room" || who === me.username.toLowerCase()) node.classList.add("me");
  }
  for (const child of source.childNodes) node.append(copyAllowed(child, me));
  return node;
}

// A code block with its copy button.
function codeBlock(pre) {
  const button = h("button", { type: "button", class: "copy-code", "aria-label": "Copy code", title: "Copy code" },
    icon("copy"));
  button.addEventListener("click", async (event) => {
    event.stopPropagation();
    try {
      await navigator.clipboard.writeText(pre.textContent);
      button.classList.add("copied");
      setTimeout(() => button.classList.remove("copied"), 1200);
    } catch {
      getSelection().selectAllChildren(pre);
    }
  });
  pre.tabIndex = 0; // scrolls sideways by keyboard
  return h("div", { class: "code-block" }, pre, button);
}

// The nodes that show a message: its HTML when it has some, else its text.
export function messageBody(message, me) {
  if (typeof message.html !== "string" || !message.html) return richText(message.message);
  const template = document.createElement("template");
  template.innerHTML = message.html;
  const nodes = [...template.content.childNodes].map((node) => copyAllowed(node, me));
  return nodes.map((node) => (node.nodeName === "PRE" ? codeBlock(node) : node));
}

// Whether a message mentions the reader (by name, or @room).
export function mentionsMe(message, me) {
  if (message.user && message.user.id === me.id) return false;
  const name = me.username.toLowerCase();
  return Boolean(message.mentions_room) || (message.mentions || []).some((m) => m.toLowerCase() === name);
}

// Blocks ----------------------------------------------------------------

// Whom I blocked (user ids), read once per page load.
const blocked = new Set();
let blocksLoaded = null;

export function loadBlocks() {
  blocksLoaded ||= api.blocks().then((list) => {
    for (const entry of list) blocked.add(entry.user.id);
  }).catch(() => {
    blocksLoaded = null; // shown unhidden this time; asked again next time
  });
  return blocksLoaded;
}

export function isBlocked(userId) {
  return blocked.has(userId);
}

// A blocked person's message in a shared chat stays there (as in Slack): the
// page hides it behind a button that shows it.
export function hiddenBody(message, onShow) {
  return [h("span", { class: "blocked-note", text: "Message from someone you blocked. " }),
    h("button", { type: "button", class: "link-button", text: "Show", onclick: onShow })];
}

// The member menu's Block / Unblock item. view: the ChatView (app, timeline).
export function blockAction(view, member) {
  const on = !blocked.has(member.id);
  return {
    label: on ? "Block" : "Unblock",
    danger: on,
    onSelect: async () => {
      try {
        await (on ? api.block(member.username) : api.unblock(member.username));
      } catch (caught) {
        view.app.toast(caught.message);
        return;
      }
      if (on) blocked.add(member.id);
      else blocked.delete(member.id);
      view.app.toast(on ? `${member.username} is blocked` : `${member.username} is unblocked`);
      view.timeline.refill((message) => message.user.id === member.id);
      view.renderMembers();
    },
  };
}

// Chats and DMs --------------------------------------------------------

// A chat's own name: its name, or for a DM the other person; null when it has
// neither (the page then names it after its members).
export function chatName(room, me) {
  if (room.name) return room.name;
  if (room.kind === "dm") {
    if (room.other) return room.other.id === me.id ? `${me.username} (notes)` : room.other.username;
    const other = (room.members || []).find((m) => m.id !== me.id);
    return other ? other.username : `${me.username} (notes)`;
  }
  return null;
}

// Who a chat-list row shows as its picture.
export function chatFace(room, me) {
  if (room.kind === "dm" && room.other) return room.other.username;
  return null;
}

// The @ badge of a chat with unread mentions of me.
export function mentionBadge(room) {
  if (!room.mentions) return null;
  return h("span", { class: "badge mention-badge", "aria-label": `${room.mentions} unread mentions`,
    title: `${room.mentions} unread mentions`, text: "@" });
}

// The topic line under a chat's title; owners and moderators edit the name and
// topic in place. view: the ChatView (room, moderating(), uri, app).
export function roomHeading(view) {
  const topic = h("p", { class: "chat-topic" });
  const edit = h("button", { type: "button", class: "icon-button edit-room", "aria-label": "Edit name and topic",
    title: "Edit name and topic", hidden: true }, icon("edit"));
  const wrap = h("div", { class: "room-info" }, topic, edit);
  const show = () => {
    const { room } = view;
    topic.textContent = room.topic || "";
    topic.hidden = !room.topic;
    edit.hidden = !(room.kind !== "dm" && view.moderating());
  };
  edit.addEventListener("click", () => {
    const { room } = view;
    const name = h("input", { type: "text", class: "room-name-field", maxlength: "80", value: room.name || "",
      placeholder: "Name", "aria-label": "Chat name" });
    const about = h("input", { type: "text", class: "room-topic-field", maxlength: "250", value: room.topic || "",
      placeholder: "Topic", "aria-label": "Chat topic" });
    const error = h("span", { class: "form-error", role: "alert" });
    const cancel = () => { form.replaceWith(wrap); show(); edit.focus(); };
    const form = h("form", { class: "room-edit" }, name, about,
      h("button", { type: "submit", class: "button small primary", text: "Save" }),
      h("button", { type: "button", class: "link-button", text: "Cancel", onclick: cancel }), error);
    form.addEventListener("keydown", (event) => { if (event.key === "Escape") cancel(); });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = { topic: about.value.trim() };
      if (name.value.trim()) body.name = name.value.trim();
      try {
        const updated = await api.setRoomInfo(view.uri, body);
        Object.assign(view.room, { name: updated.name, topic: updated.topic });
        form.replaceWith(wrap);
        view.onRoomInfo(updated);
      } catch (caught) {
        error.textContent = caught.message;
      }
    });
    wrap.replaceWith(form);
    name.focus();
  });
  show();
  return { el: wrap, show };
}

// @ completion in the composer -------------------------------------------

// Completes `@name` over members() ([{username}]) in the textarea: arrows and
// Enter or Tab pick, Escape closes, a click picks. Its keys are taken before
// the composer's own (Enter sends) by listening on `form` while capturing.
export function mentionCompletion(input, form, members) {
  const list = h("ul", { class: "mention-list", role: "listbox", id: "mention-list", hidden: true });
  let options = [];
  let active = 0;
  let start = -1;

  const close = () => {
    list.hidden = true;
    options = [];
    input.removeAttribute("aria-activedescendant");
    input.setAttribute("aria-expanded", "false");
  };
  const pick = (index) => {
    const name = options[index];
    if (name === undefined) return;
    const end = input.selectionStart;
    input.value = `${input.value.slice(0, start)}@${name} ${input.value.slice(end)}`;
    const caret = start + name.length + 2;
    input.setSelectionRange(caret, caret);
    close();
    input.dispatchEvent(new Event("input"));
    input.focus();
  };
  const draw = () => {
    list.replaceChildren(...options.map((name, i) => h("li", {
      id: `mention-option-${i}`, role: "option", class: i === active ? "active" : "",
      "aria-selected": String(i === active),
      onmousedown: (event) => { event.preventDefault(); pick(i); },
    }, avatar(name, "small"), h("span", { text: name === "room" ? "room (everyone)" : name }))));
    list.hidden = !options.length;
    input.setAttribute("aria-expanded", String(options.length > 0));
    if (options.length) input.setAttribute("aria-activedescendant", `mention-option-${active}`);
  };
  const update = () => {
    const before = input.value.slice(0, input.selectionStart);
    const match = /(^|[^\w@.+-])@([\w.+-]*)$/.exec(before);
    if (!match) {
      close();
      return;
    }
    start = before.length - match[2].length - 1;
    const typed = match[2].toLowerCase();
    const names = members().map((m) => m.username).concat("room");
    options = names.filter((name) => name.toLowerCase().startsWith(typed)).slice(0, MAX_SUGGESTIONS);
    active = 0;
    draw();
  };
  input.setAttribute("aria-controls", "mention-list");
  input.setAttribute("aria-autocomplete", "list");
  input.addEventListener("input", update);
  input.addEventListener("click", update);
  input.addEventListener("blur", () => setTimeout(close, 150));
  form.addEventListener("keydown", (event) => {
    if (list.hidden || event.target !== input || event.isComposing) return;
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      active = (active + (event.key === "ArrowDown" ? 1 : options.length - 1)) % options.length;
      draw();
    } else if (event.key === "Enter" || event.key === "Tab") {
      pick(active);
    } else if (event.key === "Escape") {
      close();
    } else {
      return;
    }
    event.preventDefault();
    event.stopPropagation();
  }, true);
  form.prepend(list);
}

// The "New message" dialog ------------------------------------------------

// Start a DM by username, completing over the people I share chats with.
export function newMessageButton(app) {
  const button = h("button", { type: "button", class: "button", id: "new-message" }, icon("edit"),
    h("span", { text: "New message" }));
  button.addEventListener("click", () => openNewMessage(app, button));
  return button;
}

async function openNewMessage(app, opener) {
  const people = h("datalist", { id: "dm-people" });
  const field = h("input", { id: "dm-username", type: "text", list: "dm-people", required: true,
    autocomplete: "off", autocapitalize: "none", spellcheck: "false", maxlength: "150" });
  const error = h("p", { class: "form-error", role: "alert" });
  const start = h("button", { type: "submit", class: "button primary", text: "Start" });
  const dialog = h("dialog", { class: "dialog", "aria-labelledby": "dm-title" },
    h("form", { class: "dialog-form" },
      h("h2", { id: "dm-title", text: "New message" }),
      h("label", { for: "dm-username", text: "To (username)" }), field, people, error,
      h("div", { class: "dialog-actions" },
        h("button", { type: "button", class: "link-button", text: "Cancel", onclick: () => dialog.close() }),
        start)));
  dialog.addEventListener("close", () => {
    dialog.remove();
    opener.focus();
  });
  dialog.querySelector("form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const username = field.value.trim().replace(/^@/, "");
    if (!username) {
      error.textContent = "Enter a username.";
      return;
    }
    start.disabled = true;
    try {
      const room = await api.startDm(username);
      dialog.close();
      app.navigate(`/chats/${room.uri}/`);
    } catch (caught) {
      error.textContent = caught.status === 404 ? `Nobody is called ${username}.` : caught.message;
      start.disabled = false;
    }
  });
  document.body.append(dialog);
  dialog.showModal();
  field.focus();
  try {
    const names = new Set();
    for (const room of await api.chats()) {
      for (const person of room.people.concat(room.other || [])) {
        if (person.id !== app.me.id) names.add(person.username);
      }
    }
    people.replaceChildren(...[...names].sort().map((name) => h("option", { value: name })));
  } catch {
    // No suggestions: a username typed in full still works.
  }
}

// People's display names and pictures, as last heard: from the member list and
// the caller's own profile, then from `profile` events. Names and pictures
// already drawn carry data-person and are updated in place when one changes.

const known = new Map(); // user id -> { username, display_name, avatar }

// Remember what a user object (a member, /auth/me/, a profile event) says.
export function learn(user) {
  if (!user || !user.id || !("display_name" in user)) return;
  known.set(user.id, { username: user.username, display_name: user.display_name || "",
    avatar: user.avatar || null });
}

function current(user) {
  return known.get(user.id) || user;
}

export function shownName(user) {
  const now = current(user);
  return now.display_name || user.display_name || user.username;
}

// A name that follows the person's profile.
export function personName(user, props = {}, tag = "span") {
  return h(tag, { ...props, dataset: { person: user.id }, text: shownName(user) });
}

// Their picture, or their initials on a colour when they have none.
export function personAvatar(user, extra = "") {
  const picture = current(user).avatar;
  const node = picture
    ? h("img", { class: `avatar picture ${extra}`, src: picture, alt: "", "aria-hidden": "true" })
    : avatar(shownName(user), extra);
  node.dataset.personAvatar = user.id;
  node.dataset.extra = extra;
  return node;
}

// A profile event: what is drawn of this person changes at once.
export function onProfile(user) {
  learn(user);
  for (const node of document.querySelectorAll(`[data-person="${CSS.escape(user.id)}"]`)) {
    node.textContent = shownName(user);
  }
  for (const node of document.querySelectorAll(`[data-person-avatar="${CSS.escape(user.id)}"]`)) {
    node.replaceWith(personAvatar(user, node.dataset.extra || ""));
  }
}

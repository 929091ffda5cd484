// People's display names and pictures, as last heard: from the member list and
// the caller's own profile, then from `profile` events. Names and pictures
// already drawn carry data-person and are updated in place when one changes.

import { avatar, h } from "./dom.js";

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

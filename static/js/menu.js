// Small popovers: an action menu and the reaction picker. One is open at a
// time; a click outside, Escape, Tab or choosing closes it and gives the focus back.

import { h, icon } from "./dom.js";

export const QUICK_REACTIONS = ["👍", "❤️", "😂", "🎉", "😮", "😢", "🙏", "👀"];

let open = null; // { el, anchor, onKey, onOutside }

export function closePopover(restoreFocus = true) {
  if (!open) return;
  const { el, anchor, onKey, onOutside } = open;
  open = null;
  el.remove();
  document.removeEventListener("keydown", onKey, true);
  document.removeEventListener("pointerdown", onOutside, true);
  anchor.setAttribute("aria-expanded", "false");
  if (restoreFocus && anchor.isConnected) anchor.focus();
}

function show(anchor, el, focusable) {
  closePopover(false);
  // Fixed to the viewport, below the anchor (above it when there is no room).
  document.body.append(el);
  const box = anchor.getBoundingClientRect();
  const width = el.offsetWidth;
  const height = el.offsetHeight;
  const left = Math.max(8, Math.min(box.right - width, window.innerWidth - width - 8));
  const below = box.bottom + 4 + height < window.innerHeight;
  el.style.left = `${left}px`;
  el.style.top = `${below ? box.bottom + 4 : Math.max(8, box.top - 4 - height)}px`;
  const onKey = (event) => {
    if (event.key === "Escape") {
      event.stopPropagation();
      closePopover();
    } else if (event.key === "Tab") {
      // Leaving the popover closes it; Tab then goes on from its button.
      closePopover();
    } else if (event.key === "ArrowDown" || event.key === "ArrowUp" || event.key === "ArrowRight" || event.key === "ArrowLeft") {
      const items = [...el.querySelectorAll("button:not([disabled])")];
      const at = items.indexOf(document.activeElement);
      if (at < 0) return;
      event.preventDefault();
      const step = event.key === "ArrowDown" || event.key === "ArrowRight" ? 1 : -1;
      items[(at + step + items.length) % items.length].focus();
    }
  };
  const onOutside = (event) => {
    if (!el.contains(event.target) && !anchor.contains(event.target)) closePopover(false);
  };
  document.addEventListener("keydown", onKey, true);
  document.addEventListener("pointerdown", onOutside, true);
  anchor.setAttribute("aria-expanded", "true");
  open = { el, anchor, onKey, onOutside };
  if (focusable) focusable.focus();
}

// items: [{ label, onSelect, danger? }] (null entries are skipped), and groups
// of choices { group, choices: [{ label, checked, onSelect }] }: a labelled
// set of menuitemradio, the checked one marked.
export function showMenu(anchor, label, items) {
  const choose = (onSelect) => () => {
    closePopover();
    onSelect();
  };
  const nodes = items.filter(Boolean).map((item) => (item.group
    ? h("div", { class: "menu-group", role: "group", "aria-label": item.group },
      h("div", { class: "menu-heading", "aria-hidden": "true", text: item.group }),
      item.choices.map((choice) => h("button", {
        type: "button", role: "menuitemradio", class: "menu-item choice",
        "aria-checked": String(choice.checked), onclick: choose(choice.onSelect),
      }, icon("check"), h("span", { text: choice.label }))))
    : h("button", {
      type: "button", role: "menuitem", class: `menu-item${item.danger ? " danger" : ""}`, text: item.label,
      onclick: choose(item.onSelect),
    })));
  const el = h("div", { class: "popover menu", role: "menu", "aria-label": label }, nodes);
  show(anchor, el, el.querySelector("button"));
}

// The picker: the quick reactions; `chosen` are the ones the reader has given already.
export function showPicker(anchor, chosen, onPick) {
  const buttons = QUICK_REACTIONS.map((emoji) => h("button", {
    type: "button", class: `pick${chosen.has(emoji) ? " chosen" : ""}`, text: emoji,
    "aria-label": `React with ${emoji}`, "aria-pressed": String(chosen.has(emoji)),
    onclick: () => {
      closePopover();
      onPick(emoji);
    },
  }));
  const el = h("div", { class: "popover picker", role: "group", "aria-label": "Reactions" }, buttons);
  show(anchor, el, buttons[0]);
}

// The chat list's later pages: loaded when the end of the list scrolls into
// view, each after the last chat's cursor, until the server says no more.

import { api } from "./api.js";
import { h } from "./dom.js";

// page: {chats, has_more} as the server gave it; render(chat) makes a row.
export function loadMoreOnScroll(list, page, render) {
  if (!page.has_more || !page.chats.length) return;
  let cursor = page.chats[page.chats.length - 1].cursor;
  const sentinel = h("li", { class: "chat-list-more", role: "status", "aria-label": "Loading more chats" });
  list.append(sentinel);
  let loading = false;
  const observer = new IntersectionObserver(async (entries) => {
    if (loading || !entries.some((entry) => entry.isIntersecting)) return;
    loading = true;
    try {
      const next = await api.chatPage(cursor);
      if (!sentinel.isConnected) return; // the list was drawn anew meanwhile
      sentinel.before(...next.chats.map(render));
      if (next.has_more && next.chats.length) {
        cursor = next.chats[next.chats.length - 1].cursor;
      } else {
        observer.disconnect();
        sentinel.remove();
      }
    } catch {
      // The next scroll to the end tries again.
    } finally {
      loading = false;
    }
  }, { rootMargin: "400px" });
  observer.observe(sentinel);
}

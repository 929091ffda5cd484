// The chat list's later pages: the stream's snapshot is the first page; when
// the end of the list scrolls into view, the page after the last chat's cursor
// is fetched, until the server says no more.

import { api } from "./api.js";
import { h } from "./dom.js";

export class MoreChats {
  // onPage(chats): a later page's chats, to add to the list.
  constructor(onPage) {
    this.onPage = onPage;
    this.cursor = null; // the `before` of the next page; null: no more
    this.generation = 0; // a new snapshot makes a page in flight stale
    this.loading = false;
    this.sentinel = h("li", { class: "chat-list-more", role: "status", "aria-label": "Loading more chats" });
    this.observer = new IntersectionObserver((entries) => {
      if (entries.some((entry) => entry.isIntersecting)) this.load();
    }, { rootMargin: "400px" });
    this.observer.observe(this.sentinel);
  }

  // A page as the server gave it (the snapshot, or a later page).
  after(chats, hasMore) {
    this.cursor = hasMore && chats.length ? chats[chats.length - 1].cursor : null;
  }

  reset(chats, hasMore) {
    this.generation += 1;
    this.after(chats, hasMore);
  }

  get more() {
    return this.cursor !== null;
  }

  async load() {
    if (this.loading || !this.more) return;
    this.loading = true;
    const { generation } = this;
    try {
      const page = await api.chatPage(this.cursor);
      if (generation !== this.generation) return;
      this.after(page.chats, page.has_more);
      this.onPage(page.chats);
    } catch {
      // The next scroll to the end tries again.
    } finally {
      this.loading = false;
      // Still in view (a short page): the observer says so again only when re-observed.
      this.observer.unobserve(this.sentinel);
      if (this.more) this.observer.observe(this.sentinel);
    }
  }

  stop() {
    this.observer.disconnect();
  }
}

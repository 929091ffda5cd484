// The admin page (/admin/, server admins only): stats, users with search and
// deactivation, invites with copyable links.

import { accounts } from "./account-api.js";
import { h, icon } from "./dom.js";
import { setTitle } from "./notify.js";

const SEARCH_DELAY_MS = 250;
const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium" });

function when(iso) {
  return iso ? dateFormat.format(Date.parse(iso)) : "never";
}

export class AdminView {
  constructor(app) {
    this.app = app;
    this.timer = null;
  }

  mount(main) {
    setTitle("Admin · Chat");
    this.stats = h("dl", { class: "stats", "aria-label": "Stats" });
    this.users = h("ul", { class: "admin-list", "aria-label": "Users" });
    this.invites = h("ul", { class: "admin-list", "aria-label": "Invites" });
    this.status = h("p", { class: "form-status", role: "status", "aria-live": "polite" });
    const search = h("input", { type: "search", id: "user-search", placeholder: "Search by name or email",
      autocomplete: "off" });
    search.addEventListener("input", () => {
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.listUsers(search.value.trim()), SEARCH_DELAY_MS);
    });
    const uses = h("input", { type: "number", id: "invite-uses", min: "1", max: "1000", value: "1" });
    const create = h("button", { type: "submit", class: "button primary" }, icon("plus"),
      h("span", { text: "Create invite link" }));
    const inviteForm = h("form", { class: "invite-form" },
      h("label", { for: "invite-uses", text: "Uses" }), uses, create);
    inviteForm.addEventListener("submit", (event) => {
      event.preventDefault();
      this.act(async () => {
        await accounts.createInvite(Number(uses.value) || 1, 168);
        await this.listInvites();
        return "Invite link created.";
      });
    });
    main.append(h("section", { class: "settings admin" },
      h("div", { class: "home-head" }, h("h1", { text: "Admin" }),
        h("a", { href: "/settings/", class: "button", "data-link": "", text: "Settings" })),
      this.status,
      h("section", { class: "settings-card" }, h("h2", { text: "Stats" }), this.stats),
      h("section", { class: "settings-card" }, h("h2", { text: "Invites" }),
        h("p", { class: "muted", text: "A link lets new people sign up (valid 7 days)." }), inviteForm, this.invites),
      h("section", { class: "settings-card" }, h("h2", { text: "Users" }),
        h("label", { for: "user-search", class: "visually-hidden", text: "Search users" }), search, this.users)));
    this.refresh();
  }

  unmount() {
    clearTimeout(this.timer);
  }

  async refresh() {
    await this.act(() => Promise.all([this.showStats(), this.listUsers(""), this.listInvites()]));
  }

  // Run an action; its result or error goes to the status line.
  async act(action) {
    this.status.classList.remove("error");
    try {
      const done = await action();
      this.status.textContent = typeof done === "string" ? done : "";
    } catch (error) {
      if (error.status === 401) this.app.signedOut();
      this.status.textContent = error.message;
      this.status.classList.add("error");
    }
  }

  async showStats() {
    const stats = await accounts.stats();
    const rows = [["Users", stats.users.total], ["Active in 24 h", stats.users.active_24h],
      ["Chats", stats.rooms], ["Messages", stats.messages], ["Files", stats.files],
      ["Open sockets", stats.sockets.total]];
    this.stats.replaceChildren(...rows.map(([name, value]) =>
      h("div", { class: "stat" }, h("dt", { text: name }), h("dd", { text: String(value) }))));
  }

  async listUsers(q) {
    const page = await accounts.users(q);
    this.users.replaceChildren(...page.results.map((user) => this.userRow(user)));
    if (!page.results.length) this.users.append(h("li", { class: "muted", text: "No users found." }));
  }

  userRow(user) {
    const toggle = h("button", { type: "button", class: `button small${user.active ? " danger" : ""}`,
      text: user.active ? "Deactivate" : "Reactivate",
      "aria-label": `${user.active ? "Deactivate" : "Reactivate"} ${user.username}`,
      onclick: () => this.act(async () => {
        const updated = await accounts.setUser(user.username, { active: !user.active });
        row.replaceWith(this.userRow(updated));
        return `${user.username} is ${updated.active ? "active again" : "deactivated"}.`;
      }) });
    const row = h("li", { class: `admin-row${user.active ? "" : " inactive"}`, dataset: { username: user.username } },
      h("div", { class: "admin-row-main" },
        h("strong", { text: user.display_name || user.username }),
        h("span", { class: "muted", text: ` @${user.username}${user.email ? ` · ${user.email}` : ""}` }),
        h("div", { class: "muted small", text: `Joined ${when(user.created)} · last seen ${when(user.last_seen)}` }),
        user.admin ? h("span", { class: "tag", text: "admin" }) : null,
        user.active ? null : h("span", { class: "tag", text: "deactivated" })),
      user.id === this.app.me.id ? null : toggle);
    return row;
  }

  async listInvites() {
    const invites = await accounts.invites();
    this.invites.replaceChildren(...invites.filter((i) => i.uses_left > 0).map((invite) => {
      const link = h("input", { type: "text", readonly: true, value: invite.url, class: "invite-link",
        "aria-label": "Invite link" });
      return h("li", { class: "admin-row" },
        h("div", { class: "admin-row-main" }, link,
          h("div", { class: "muted small", text: `${invite.uses_left} of ${invite.uses} uses left · until ${when(invite.expires)}` })),
        h("button", { type: "button", class: "button small", "aria-label": "Copy invite link",
          onclick: () => this.act(async () => {
            await navigator.clipboard.writeText(invite.url);
            return "Invite link copied.";
          }) }, icon("copy"), h("span", { text: "Copy" })),
        h("button", { type: "button", class: "button small danger", text: "Revoke",
          onclick: () => this.act(async () => {
            await accounts.revokeInvite(invite.code);
            await this.listInvites();
            return "Invite revoked.";
          }) }));
    }));
    if (!this.invites.children.length) this.invites.append(h("li", { class: "muted", text: "No open invites." }));
  }
}

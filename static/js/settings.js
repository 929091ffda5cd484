// The settings page (/settings/): profile with name and picture,
// notifications (notifysettings.js), password, signing out other devices,
// deleting the account; and the form a password reset link (/#reset=<token>) opens.

import { accounts } from "./account-api.js";
import { h } from "./dom.js";
import { setTitle } from "./notify.js";
import { NotificationSettings } from "./notifysettings.js";
import { onProfile, personAvatar } from "./profiles.js";

let fieldIds = 0;

// A labelled input; its id is unique on the page.
function field(label, props) {
  const id = `settings-field-${++fieldIds}`;
  const input = h("input", { id, ...props });
  return [h("label", { for: id, text: label }), input];
}

// A form that shows its result (an error or `done`) in its own status line.
function section(title, description, fields, submitText, action, { danger = false } = {}) {
  const status = h("p", { class: "form-status", role: "status", "aria-live": "polite" });
  const submit = h("button", { type: "submit", class: `button ${danger ? "danger" : "primary"}`, text: submitText });
  const form = h("form", { class: "settings-form", novalidate: true },
    h("h2", { text: title }), description ? h("p", { class: "muted", text: description }) : null,
    ...fields, status, h("div", { class: "form-actions" }, submit));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    status.textContent = "";
    status.classList.remove("error");
    submit.disabled = true;
    try {
      const done = await action();
      if (done) status.textContent = done;
    } catch (error) {
      status.textContent = error.message;
      status.classList.add("error");
    } finally {
      submit.disabled = false;
    }
  });
  return h("section", { class: "settings-card" }, form);
}

export class SettingsView {
  constructor(app) {
    this.app = app;
  }

  mount(main) {
    setTitle("Settings · Chat");
    const me = this.app.me;
    const [nameLabel, name] = field("Display name", { type: "text", maxlength: "64",
      value: me.display_name || "", placeholder: me.username, autocomplete: "name" });
    const [emailLabel, email] = field("Email (for password resets)", { type: "email",
      value: me.email || "", autocomplete: "email" });
    const picture = h("div", { class: "settings-picture" }, personAvatar(me, "large"));
    const [fileLabel, file] = field("Picture (PNG, JPEG, GIF or WebP)", { type: "file",
      accept: "image/png,image/jpeg,image/gif,image/webp" });
    const profile = section("Profile", "How others see you.",
      [picture, fileLabel, file, nameLabel, name, emailLabel, email], "Save profile", async () => {
        let updated = await accounts.updateProfile({ display_name: name.value.trim() || null,
          email: email.value.trim() });
        if (file.files.length) updated = await accounts.setAvatar(file.files[0]);
        this.saved(updated, picture);
        file.value = "";
        return "Profile saved.";
      });
    const removePicture = h("button", { type: "button", class: "button small", text: "Remove picture",
      hidden: !me.avatar, onclick: async () => {
        this.saved(await accounts.updateProfile({ avatar: null }), picture);
        removePicture.hidden = true;
      } });
    picture.append(removePicture);

    const [oldLabel, oldPassword] = field("Current password", { type: "password", autocomplete: "current-password" });
    const [newLabel, newPassword] = field("New password (at least 8 characters)", { type: "password",
      autocomplete: "new-password" });
    const password = section("Password", "Your other devices are signed out when it changes.",
      [oldLabel, oldPassword, newLabel, newPassword], "Change password", async () => {
        await accounts.changePassword(oldPassword.value, newPassword.value);
        oldPassword.value = newPassword.value = "";
        return "Password changed. Your other devices are signed out.";
      });

    this.notifications = new NotificationSettings(this.app);

    const devices = section("Devices", "Sign out everywhere but here.", [], "Sign out other devices",
      async () => {
        await accounts.signOutOthers();
        return "Your other devices are signed out.";
      });

    const [deleteLabel, deletePassword] = field("Password", { type: "password", autocomplete: "current-password" });
    const leave = section("Delete account",
      "Your name, email and picture are erased and you leave every chat. Your messages stay, as written by “Deleted user”.",
      [deleteLabel, deletePassword], "Delete my account", async () => {
        await accounts.deleteAccount(deletePassword.value);
        history.pushState(null, "", "/");
        this.app.signedOut("Your account was deleted.");
      }, { danger: true });

    main.append(h("section", { class: "settings" },
      h("div", { class: "home-head" }, h("h1", { text: "Settings" }),
        me.admin ? h("a", { href: "/admin/", class: "button", "data-link": "", text: "Admin" }) : null),
      profile, this.notifications.el, password, devices, leave));
    name.focus();
  }

  unmount() {
    if (this.notifications) this.notifications.stop();
  }

  saved(updated, picture) {
    Object.assign(this.app.me, updated);
    onProfile(updated);
    picture.firstChild.replaceWith(personAvatar(updated, "large"));
    this.app.refreshAccount();
  }
}

// The form a reset link opens: a new password, then sign in with it.
export function resetForm(app, token) {
  setTitle("New password · Chat");
  const [label, password] = field("New password (at least 8 characters)", { type: "password",
    autocomplete: "new-password" });
  const card = section("Choose a new password", null, [label, password], "Set password", async () => {
    await accounts.confirmReset(token, password.value);
    history.replaceState(null, "", "/");
    app.signedOut("Your password is changed: sign in with it.");
  });
  app.root.replaceChildren(h("div", { class: "auth-screen" }, h("div", { class: "auth-card" }, card)));
  password.focus();
}

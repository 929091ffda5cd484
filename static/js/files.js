// Files in the page: attaching (button, drag-and-drop, paste), uploads with a
// progress bar and cancel each, a message's attachments (image thumbnails that
// open a lightbox, cards for other files) and its link preview card.
//
// An upload that finishes is posted at once as a message carrying it, over
// HTTP; it comes back on the stream like any message.

import { h, icon } from "./dom.js";

function xsrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)_xsrf=([^;]*)/);
  return match ? decodeURIComponent(match[1]) : "";
}

function fileUrl(uri, id) {
  return `/api/chats/${uri}/files/${id}/`;
}

export function formatSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  const units = ["KB", "MB", "GB"];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
}

// The largest a thumbnail is shown, keeping its proportions.
function shownSize(file, side = 320) {
  if (!file.width || !file.height) return {};
  const scale = Math.min(1, side / Math.max(file.width, file.height));
  return { width: Math.round(file.width * scale), height: Math.round(file.height * scale) };
}

// The lightbox: the image at full size in a modal dialog (Escape or a click closes it).
export function openLightbox(url, name, opener) {
  const dialog = h("dialog", { class: "lightbox", "aria-label": name },
    h("img", { src: url, alt: name }),
    h("div", { class: "lightbox-bar" },
      h("span", { class: "lightbox-name", text: name }),
      h("a", { class: "button", href: url, download: name, text: "Download" }),
      h("button", { type: "button", class: "icon-button lightbox-close", "aria-label": "Close",
        onclick: () => dialog.close() }, icon("close"))));
  dialog.addEventListener("click", (event) => { if (event.target === dialog) dialog.close(); });
  dialog.addEventListener("close", () => {
    dialog.remove();
    if (opener) opener.focus();
  });
  document.body.append(dialog);
  dialog.showModal();
  dialog.querySelector(".lightbox-close").focus();
}

function attachment(uri, file) {
  const url = fileUrl(uri, file.id);
  if (file.thumb) {
    const open = h("button", {
      type: "button", class: "attachment-image", "aria-label": `Open image ${file.name}`,
      onclick: () => openLightbox(url, file.name, open),
    }, h("img", { src: file.thumb, alt: file.name, loading: "lazy", ...shownSize(file) }));
    return open;
  }
  return h("a", { class: "file-card", href: url, download: file.name, title: `Download ${file.name}` },
    h("span", { class: "file-icon", "aria-hidden": "true", text: (file.name.split(".").pop() || "file").slice(0, 4) }),
    h("span", { class: "file-meta" },
      h("span", { class: "file-name", text: file.name }),
      h("span", { class: "file-size", text: `${formatSize(file.size)} · Download` })));
}

function previewCard(message, mine) {
  const { preview } = message;
  const link = h("a", { class: "preview-link", href: preview.url, target: "_blank", rel: "noopener noreferrer nofollow" },
    preview.image ? h("img", { class: "preview-image", src: preview.image, alt: "", loading: "lazy" }) : null,
    h("span", { class: "preview-text" },
      preview.site_name ? h("span", { class: "preview-site", text: preview.site_name }) : null,
      h("span", { class: "preview-title", text: preview.title }),
      preview.description ? h("span", { class: "preview-description", text: preview.description }) : null));
  const remove = mine ? h("button", {
    type: "button", class: "icon-button preview-remove", "aria-label": "Remove the preview", title: "Remove the preview",
    onclick: () => fetch(`/api/chats/${message.uri}/messages/${message.id}/preview/`, {
      method: "DELETE", headers: { "X-XSRFToken": xsrfToken() }, credentials: "same-origin",
    }),
  }, icon("close")) : null;
  return h("div", { class: "preview-card" }, link, remove);
}

// A shown message's files and preview, replaced whenever the message changes.
export function fillFiles(el, message, me) {
  for (const old of el.querySelectorAll(".attachments, .preview-card")) old.remove();
  // A message of files alone has no text to show.
  el.querySelector(".text").hidden = !message.deleted && !message.message;
  if (message.deleted) return;
  // Files inside the bubble, above its time; the preview card under it.
  if (message.attachments && message.attachments.length) {
    el.querySelector(".bubble .foot").before(h("div", { class: "attachments" },
      message.attachments.map((file) => attachment(message.uri, file))));
  }
  if (message.preview) el.querySelector(".bubble").after(previewCard(message, message.user.id === me.id));
}

// Uploads of one chat: the attach button, drops, pastes, and a tray of progress bars.
export class Uploader {
  constructor(uri, { onError }) {
    this.uri = uri;
    this.onError = onError;
    this.input = h("input", { type: "file", multiple: true, hidden: true, tabindex: "-1",
      onchange: () => { this.addFiles(this.input.files); this.input.value = ""; } });
    this.button = h("button", {
      type: "button", class: "attach", "aria-label": "Attach files", title: "Attach files",
      onclick: () => this.input.click(),
    }, icon("plus"));
    this.tray = h("ul", { class: "uploads", "aria-label": "Uploads", "aria-live": "polite" });
  }

  // Drops onto `area` and pastes into `field` become uploads.
  listen(area, field) {
    area.addEventListener("dragover", (event) => {
      if (!event.dataTransfer || !Array.from(event.dataTransfer.types).includes("Files")) return;
      event.preventDefault();
      area.classList.add("dropping");
    });
    area.addEventListener("dragleave", (event) => {
      if (!area.contains(event.relatedTarget)) area.classList.remove("dropping");
    });
    area.addEventListener("drop", (event) => {
      area.classList.remove("dropping");
      if (!event.dataTransfer || !event.dataTransfer.files.length) return;
      event.preventDefault();
      this.addFiles(event.dataTransfer.files);
    });
    field.addEventListener("paste", (event) => {
      const files = event.clipboardData ? Array.from(event.clipboardData.files) : [];
      if (!files.length) return;
      event.preventDefault();
      this.addFiles(files);
    });
  }

  addFiles(list) {
    for (const file of Array.from(list)) this.upload(file);
  }

  upload(file) {
    const name = file.name || `pasted-${new Date().toISOString().replace(/[:.]/g, "-")}.png`;
    const xhr = new XMLHttpRequest();
    const bar = h("progress", { max: "100", value: "0", "aria-label": `Uploading ${name}` });
    const row = h("li", { class: "upload" },
      h("span", { class: "upload-name", text: name }), bar,
      h("button", { type: "button", class: "link-button upload-cancel", text: "Cancel",
        "aria-label": `Cancel uploading ${name}`, onclick: () => xhr.abort() }));
    this.tray.append(row);
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) bar.value = String(Math.round((100 * event.loaded) / event.total));
    });
    xhr.addEventListener("abort", () => row.remove());
    xhr.addEventListener("error", () => { row.remove(); this.onError(`${name} was not uploaded: the connection failed.`); });
    xhr.addEventListener("load", async () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { body = null; }
      if (xhr.status !== 201) {
        row.remove();
        this.onError(`${name} was not uploaded: ${(body && (body.detail || Object.values(body)[0])) || xhr.status}`);
        return;
      }
      bar.value = "100";
      try {
        await this.post(body.id);
      } catch (error) {
        this.onError(`${name} was uploaded but not sent: ${error.message}`);
      }
      row.remove();
    });
    xhr.open("POST", `/api/chats/${this.uri}/files/?name=${encodeURIComponent(name)}`);
    xhr.setRequestHeader("X-XSRFToken", xsrfToken());
    xhr.send(file);
  }

  async post(id) {
    const reply = await fetch(`/api/chats/${this.uri}/messages/`, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-XSRFToken": xsrfToken() },
      body: JSON.stringify({ attachments: [id], client_id: `f${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}` }),
    });
    if (!reply.ok) throw new Error(`the server answered ${reply.status}`);
  }
}

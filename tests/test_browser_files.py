"""Files in the page (issue 22), in Chromium: a pasted image uploads with a
progress bar and shows as a thumbnail on both pages, opens in a lightbox from
the keyboard; a file card downloads; a link gets its preview card."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from tests import test_browser, test_files
from tests.helpers import two_members
from tests.test_browser import ARTIFACTS, DOCS, expect

pytestmark = pytest.mark.browser

browser = test_browser.browser
tabs = test_browser.tabs
# test_files' local site (on the server's link_preview_allow) and its server.
site = test_files.site
server = test_files.server

PASTE = """(data) => {
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  const clipboard = new DataTransfer();
  clipboard.items.add(new File([bytes], "", { type: "image/png" }));
  window.sawProgress = false;
  new MutationObserver(() => {
    if (document.querySelector(".uploads progress")) window.sawProgress = true;
  }).observe(document.body, { childList: true, subtree: true });
  document.querySelector("#composer-text").dispatchEvent(
    new ClipboardEvent("paste", { clipboardData: clipboard, bubbles: true, cancelable: true }));
}"""


def loaded(locator) -> None:
    expect(locator).to_be_visible()
    locator.page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                                   arg=locator.element_handle())


def test_paste_an_image_download_a_file_and_see_a_link_preview(server, site, tabs):
    alice_api, bob_api, uri = two_members(server.url)
    alice = tabs(server.url, viewport={"width": 1280, "height": 800}).sign_in(alice_api).open_chat(uri)
    bob = tabs(server.url, viewport={"width": 1280, "height": 800}).sign_in(bob_api).open_chat(uri)

    # Paste a screenshot: a progress bar, then the thumbnail on both pages.
    image = test_files.png(1400, 700, "seagreen")
    alice.page.evaluate(PASTE, base64.b64encode(image).decode())
    for tab in (alice, bob):
        loaded(tab.page.locator(".attachment-image img"))
    assert alice.page.evaluate("window.sawProgress")
    expect(alice.page.locator(".uploads .upload")).to_have_count(0)  # done: the row goes

    # The lightbox, from the keyboard: focus the thumbnail, Enter, Escape.
    thumb = bob.page.get_by_role("button", name="Open image")
    thumb.focus()
    thumb.press("Enter")
    lightbox = bob.page.locator("dialog.lightbox")
    loaded(lightbox.locator("img"))
    assert lightbox.locator("img").evaluate("img => img.naturalWidth") == 1400
    bob.page.keyboard.press("Escape")
    expect(lightbox).to_have_count(0)
    expect(thumb).to_be_focused()

    # A file through the attach button: a card that downloads it.
    alice.page.locator(".composer input[type=file]").set_input_files(
        files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"meeting notes\n" * 100}])
    card = bob.page.locator(".file-card", has_text="notes.txt")
    expect(card).to_contain_text("1.4 KB")
    with bob.page.expect_download() as download:
        card.click()
    assert download.value.suggested_filename == "notes.txt"
    assert Path(download.value.path()).read_bytes() == b"meeting notes\n" * 100

    # A link: its preview card under the message, with the image stored here.
    alice.send(f"The agenda: {site}/page?browser")
    preview = bob.page.locator(".preview-card")
    expect(preview.locator(".preview-title")).to_have_text("The OpenGraph title", timeout=15_000)
    expect(preview.locator(".preview-site")).to_have_text("Local site")
    loaded(preview.locator(".preview-image"))
    expect(alice.page.locator(".preview-card")).to_have_count(1)
    expect(alice.page.get_by_role("button", name="Attach files")).to_be_enabled()

    shots = DOCS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else ARTIFACTS
    shots.mkdir(parents=True, exist_ok=True)
    bottom = "el => { el.scrollTop = el.scrollHeight; }"
    bob.page.locator(".scroller").evaluate(bottom)
    bob.page.screenshot(path=str(shots / "screenshot-files.png"))
    phone = tabs(server.url, viewport={"width": 390, "height": 844}, device_scale_factor=2,
                 is_mobile=True, has_touch=True).sign_in(bob_api).open_chat(uri)
    loaded(phone.page.locator(".preview-image"))
    phone.page.locator(".scroller").evaluate(bottom)
    phone.page.screenshot(path=str(shots / "screenshot-files-phone.png"))

    # The author removes the preview: gone from both pages.
    alice.page.get_by_role("button", name="Remove the preview").click()
    expect(bob.page.locator(".preview-card")).to_have_count(0)
    expect(alice.page.locator(".preview-card")).to_have_count(0)

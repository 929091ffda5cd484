"""The account pages in Chromium (issue 24): a changed display name shows on
another user's screen live; an admin's invite link signs a new person up in a
fresh context, and deactivating them signs their open page out."""

from __future__ import annotations

import re

import pytest

from tests.helpers import ROOT, Api, two_members
from tests.test_browser import Tab, browser, expect, name, tabs  # noqa: F401 - fixtures

pytestmark = pytest.mark.browser

SHOTS = ROOT / "tests" / "artifacts"
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2,
         "is_mobile": True, "has_touch": True}


def shot(tab: Tab, file: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    tab.page.screenshot(path=str(SHOTS / file), full_page=True)


def test_a_changed_display_name_shows_on_the_other_screen_live(server, tabs):  # noqa: F811
    alice, bob, uri = two_members(server.url)
    alice.post(uri, "hello from alice")
    alice_tab = tabs(server.url).sign_in(alice)
    bob_tab = tabs(server.url).sign_in(bob).open_chat(uri)
    expect(bob_tab.page.locator(".author", has_text=alice.username)).to_be_visible()

    # Alice reaches her settings from the top bar, by keyboard.
    alice_tab.open_chat(uri)
    alice_tab.page.get_by_role("link", name="Settings").focus()
    alice_tab.page.keyboard.press("Enter")
    expect(alice_tab.page.get_by_role("heading", name="Settings")).to_be_visible()
    expect(alice_tab.page.get_by_label("Display name")).to_be_focused()
    alice_tab.page.keyboard.type("Alice Wonder")
    alice_tab.page.get_by_role("button", name="Save profile").click()
    expect(alice_tab.page.get_by_text("Profile saved.")).to_be_visible()
    expect(alice_tab.page.locator(".account-name")).to_have_text("Alice Wonder")

    # Bob's open chat shows the new name on her message and in the members, no reload.
    expect(bob_tab.page.locator(".author", has_text="Alice Wonder")).to_be_visible()
    expect(bob_tab.page.locator(".member-name", has_text="Alice Wonder")).to_have_count(1)
    shot(alice_tab, "settings-desktop.png")
    shot(bob_tab, "display-name-live.png")

    phone = tabs(server.url, **PHONE).sign_in(alice)
    phone.page.goto("/settings/")
    expect(phone.page.get_by_role("button", name="Delete my account")).to_be_visible()
    shot(phone, "settings-phone.png")


def test_an_invite_signs_someone_up_and_deactivation_signs_them_out(start_server, tabs):  # noqa: F811
    boss = name("boss")
    server = start_server(signup="invite", admins=boss)
    admin = Api(server.url, boss).signup()
    admin_tab = tabs(server.url).sign_in(admin)
    admin_tab.context.grant_permissions(["clipboard-read", "clipboard-write"])
    admin_tab.page.goto("/admin/")
    expect(admin_tab.page.get_by_role("heading", name="Admin")).to_be_visible()
    admin_tab.page.get_by_role("button", name="Create invite link").click()
    link = admin_tab.page.get_by_label("Invite link", exact=True)
    expect(link).to_have_count(1)
    url = link.input_value()
    assert re.fullmatch(rf"{re.escape(server.url)}/\?invite=[\w-]+", url)
    admin_tab.page.get_by_role("button", name="Copy invite link").click()
    assert admin_tab.page.evaluate("navigator.clipboard.readText()") == url

    # A new person opens the link in a fresh context: the sign-up form, with the code.
    newcomer = tabs(server.url, **PHONE)
    newcomer.page.goto(url)
    expect(newcomer.page.get_by_role("heading", name="Create your account")).to_be_visible()
    guest = name("guest")
    newcomer.page.get_by_label("Username").fill(guest)
    newcomer.page.get_by_label("Password").fill("pass-word-1")
    newcomer.page.get_by_role("button", name="Create account").click()
    expect(newcomer.page.get_by_role("heading", name="My chats")).to_be_visible()
    newcomer.page.get_by_role("button", name="New chat").click()
    expect(newcomer.page.locator(".chat-view")).to_have_attribute("data-connection", "live")

    # The admin finds them and deactivates them: their open page is signed out.
    admin_tab.page.reload()
    admin_tab.page.get_by_label("Search users").fill(guest)
    expect(admin_tab.page.locator(".admin-row[data-username]")).to_have_count(1)
    shot(admin_tab, "admin-desktop.png")
    admin_tab.page.get_by_role("button", name=f"Deactivate {guest}").click()
    expect(admin_tab.page.get_by_role("button", name=f"Reactivate {guest}")).to_be_visible()
    expect(newcomer.page.get_by_text("Your session ended. Sign in again.")).to_be_visible(timeout=5000)
    # And cannot sign in again.
    newcomer.page.get_by_label("Username").fill(guest)
    newcomer.page.get_by_label("Password").fill("pass-word-1")
    newcomer.page.get_by_role("button", name="Sign in").click()
    expect(newcomer.page.get_by_role("alert")).to_have_text("Unable to log in with provided credentials.")

    phone_admin = tabs(server.url, **PHONE).sign_in(admin)
    phone_admin.page.goto("/admin/")
    expect(phone_admin.page.get_by_text("Open sockets")).to_be_visible()
    shot(phone_admin, "admin-phone.png")

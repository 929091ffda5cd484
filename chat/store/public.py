"""How stored documents are shown to clients: users, messages and every kind of room event."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from chat.store.base import iso


def active(doc: dict[str, Any]) -> bool:
    """Whether an account may log in. Truthiness, not `is False`: nx-27017
    stores a boolean given to $set as 0 or 1."""
    return bool(doc.get("active", True)) and not doc.get("deleted")


def avatar_url(user_id: str, version: str | None) -> str | None:
    """Where a profile picture is served; the version makes it cacheable forever."""
    return f"/api/avatars/{user_id}/{version}/" if version else None


def public_user(doc: dict[str, Any]) -> dict[str, Any]:
    """The tutorial's user object, with the profile's display name and picture."""
    user_id = str(doc["_id"])
    return {
        "id": user_id,
        "username": doc["username"],
        "email": doc.get("email", ""),
        "first_name": doc.get("first_name", ""),
        "last_name": doc.get("last_name", ""),
        "display_name": doc.get("display_name") or "",
        "avatar": avatar_url(user_id, doc.get("avatar")),
    }



def public_message(doc: dict[str, Any]) -> dict[str, Any]:
    message = {
        "id": str(doc["_id"]),
        "seq": doc["seq"],
        "uri": doc["room"],
        "user": doc["user"],
        "message": doc["message"],
        "created": iso(doc["created"]),
    }
    if doc.get("client_id"):
        message["client_id"] = doc["client_id"]
    formatted(message, doc)
    # Its current state: what its edit, delete and reaction events made of it.
    message["last_event_seq"] = doc.get("last_event_seq", doc["seq"])
    if doc.get("version"):
        message["version"] = doc["version"]
        message["edited"] = iso(doc["edited"])
    if doc.get("deleted"):
        message["deleted"] = True
    if doc.get("reactions"):
        message["reactions"] = doc["reactions"]
    return message


def formatted(shown: dict[str, Any], doc: dict[str, Any]) -> None:
    """A message's (or an edit's) HTML, rendered once when it was written
    (chat/render.py; messages from before it have none), and its mentions."""
    if "html" in doc:
        shown["html"] = doc["html"]
    shown["mentions"] = list(doc.get("mentions") or [])
    shown["mentions_room"] = bool(doc.get("mentions_room"))


def event_about(doc: dict[str, Any]) -> dict[str, Any]:
    """The fields every event about a message has: `id` and `target_seq` are
    the message's, `seq` the event's own."""
    return {"seq": doc["seq"], "id": doc["target_id"], "target_seq": doc["target_seq"],
            "uri": doc["room"], "created": iso(doc["created"])}


def public_edit(doc: dict[str, Any]) -> dict[str, Any]:
    # A deleted message's edits keep no text: theirs is erased with it.
    edit = {**event_about(doc), "message": doc.get("message", ""), "edited": iso(doc["created"]),
            "version": doc["version"], "user": doc["user"]}
    formatted(edit, doc)
    return edit


def public_delete(doc: dict[str, Any]) -> dict[str, Any]:
    return {**event_about(doc), "by": doc["by"]}


def public_reaction(doc: dict[str, Any]) -> dict[str, Any]:
    return {**event_about(doc), "emoji": doc["emoji"], "op": doc["op"], "user": doc["user"]}


def public_member(doc: dict[str, Any]) -> dict[str, Any]:
    member = {"seq": doc["seq"], "uri": doc["room"], "created": iso(doc["created"]),
              "op": doc["op"], "user": doc["user"], "by": doc["by"]}
    if doc.get("role"):
        member["role"] = doc["role"]
    return member


def public_other_event(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored event other than a message, as sent: its fields, `id` and `uri` named as in messages."""
    event = {key: iso(value) if isinstance(value, datetime.datetime) else value
             for key, value in doc.items() if key not in ("_id", "room", "type")}
    event["id"] = str(doc["_id"])
    event["uri"] = doc["room"]
    return event


# How a type of stored room event is shown to clients, where it differs from
# public_other_event; a document without `type` is a message.
EVENT_RENDERERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "message": public_message,
    "edit": public_edit,
    "delete": public_delete,
    "reaction": public_reaction,
    "member": public_member,
}


def public_event(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored room event as clients see it, with its `type` first."""
    kind = doc.get("type", "message")
    return {"type": kind, **EVENT_RENDERERS.get(kind, public_other_event)(doc)}



"""Every request body, query, response and WebSocket frame of the API, declared once.

The handlers validate their input with these models (400 naming the field, see
`handlers.base.endpoint`), the socket validates client frames with them, and
/api/openapi.json is generated from them (`handlers.openapi`). A limit that
comes from config.yaml is declared with `Configured("setting")`: it is checked
against the running configuration and written into the document from it.

Adding an endpoint: declare its body/query/response models here (subclasses of
`Wire`, strings as `Text`/`Required`), then decorate the handler method with
`@endpoint(...)` naming them; the method gets `body=`/`query=` as validated
models. Adding a client frame: a `Wire` model with `type: Literal["..."]`, listed
in CLIENT_FRAMES, and a `handle_<type>(frame)` method on handlers.socket.ChatSocket
(it gets the validated model; a bad frame is answered with an `error` frame
before that); a server frame: listed in SERVER_FRAMES (documentation).
"""

from __future__ import annotations

import datetime
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    RootModel,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError, core_schema

# MongoDB's largest integer: a bigger cursor could not even be compared.
MAX_INT = 2**63 - 1
MAX_CLIENT_ID = 64
DEFAULT_PAGE = 50
MAX_PAGE = 200
URI_PATTERN = r"^[0-9a-f]{15}$"


class Configured:
    """A maximum read from the configuration (`config.<setting>`) at validation
    time, and written into the JSON Schema as `x-configured-<keyword>` for
    handlers.openapi to replace with the configured value."""

    def __init__(self, setting: str):
        self.setting = setting

    def __get_pydantic_core_schema__(self, source: Any, handler) -> core_schema.CoreSchema:
        return core_schema.with_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler) -> dict:
        json_schema = handler(schema)
        keyword = "maxLength" if json_schema.get("type") == "string" else "maximum"
        return {**json_schema, f"x-configured-{keyword}": self.setting}

    def check(self, value: Any, info: ValidationInfo) -> Any:
        config = (info.context or {}).get("config")
        if config is None:
            raise RuntimeError("validate with handlers.base.validated for configured limits")
        limit = getattr(config, self.setting)
        if isinstance(value, str):
            if len(value) > limit:
                raise PydanticCustomError(
                    "string_too_long", "Ensure this field has no more than {max_length} characters.",
                    {"max_length": limit})
        elif value > limit:
            raise PydanticCustomError("less_than_equal", "Ensure this value is at most {le}.",
                                      {"le": limit})
        return value


def not_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("blank", "This field may not be blank.")
    return value


def ascii_digits(value: Any, info: ValidationInfo) -> Any:
    """A query's or form's integer: ASCII digits only (not "+1", a full-width
    digit or " 1"), at most 19 of them (MongoDB's integers). JSON must send a number."""
    if isinstance(value, str) and not (info.context or {}).get("strict"):
        if not (value.isascii() and value.isdigit()):
            raise PydanticCustomError("int_parsing", "A valid integer is required.")
        if len(value) > 19:
            raise PydanticCustomError("less_than_equal", "Ensure this value is at most {le}.",
                                      {"le": MAX_INT})
        return int(value)
    return value


def in_utc(moment: datetime.datetime) -> datetime.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def empty_is_absent(value: str | None) -> str | None:
    return value or None


# Any string (handlers refuse lone surrogates and NULs in every field: refuse_unstorable_text).
Text = str


def required(**constraints: Any) -> Any:
    """A string that must hold something other than whitespace (and `constraints`,
    given here: pydantic cannot document constraints added after a validator)."""
    return Annotated[str, Field(min_length=1, **constraints), AfterValidator(not_blank)]


def counter(minimum: int = 0, maximum: int = MAX_INT) -> Any:
    """An integer that may come from a query string or form: ASCII digits only."""
    return Annotated[int, Field(ge=minimum, le=maximum), BeforeValidator(ascii_digits)]


Required = required()
Seq = counter()
Uri = Annotated[str, Field(pattern=URI_PATTERN)]
# An ISO date or date and time; UTC when it names no zone.
Moment = Annotated[datetime.datetime, AfterValidator(in_utc)]
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
ClientId = Annotated[
    Annotated[str, Field(max_length=MAX_CLIENT_ID)] | None, AfterValidator(empty_is_absent),
    Field(description="The client's idempotency key: a repeat returns the stored message. "
                      "Empty or null means none (the message is never de-duplicated)."),
]


def unstorable(value: Any) -> str | None:
    """What makes value (or any string in it) text no store keeps as given, or
    None. A lone surrogate like "\\ud800" is valid JSON but no valid UTF-8:
    MongoDB and bcrypt refused it with a 500. A NUL ends the string early in
    SQLite's JSON and FTS5 (nx-27017 indexed "a\\x00b" as "a", and a search
    for it was a 500); Zulip and PostgreSQL refuse it too.
    A loop, not recursion: the value may be nested as deep as json.loads allows."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError:
                return "Not valid text: it holds a lone surrogate."
            if "\x00" in item:
                return "Not valid text: it holds a NUL character."
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return None


class Invalid(ValueError):
    """Input refused before its model saw it: {field: [message]}."""

    def __init__(self, problems: dict[str, list[str]]):
        super().__init__(problems)
        self.problems = problems


def refuse_unstorable_text(data: Any, fields: Any) -> None:
    """Raise Invalid naming each of `fields` whose value holds a lone surrogate or a NUL."""
    if isinstance(data, dict):
        bad = {name: [problem] for name in fields
               if (problem := unstorable(data.get(name))) is not None}
        if bad:
            raise Invalid(bad)


class Wire(BaseModel):
    """What every model of the wire shares: unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")
    # Messages for a field's errors that say more than the generic ones:
    # {(field, error type): message}.
    error_messages: ClassVar[dict[tuple[str, str], str]] = {}


# Files and link previews: shared pieces ---------------------------------

MAX_ATTACHMENTS = 10

AttachmentIds = Annotated[
    list[Annotated[str, Field(max_length=24)]] | None,
    Field(max_length=MAX_ATTACHMENTS,
          description="Ids of files the poster uploaded to this chat and has not attached yet "
                      "(up to 10); the text may then be empty")]
MessageText = Annotated[
    Annotated[str, Configured("max_message_chars")] | None,
    Field(validate_default=True),
    # Documented as the string it is when given (null is what "absent" looks like inside).
    WithJsonSchema({"type": "string", "x-configured-maxLength": "max_message_chars",
                    "description": "The text; required unless there are attachments"})]


def text_or_files(value: str | None, info: ValidationInfo) -> str:
    """The message's text: it may be empty only when the message carries files."""
    if info.data.get("attachments"):
        return value or ""
    if value is None:
        raise PydanticCustomError("missing", "This field is required.")
    not_blank(value)
    return value


class FileInfo(Wire):
    """An uploaded file, as uploads answer and messages carry it."""
    id: str
    name: str
    type: Annotated[str, Field(description="Found from the content, not the name or header")]
    size: int = Field(ge=0)
    width: int | None = None
    height: int | None = None
    thumb: Annotated[str, Field(description="The thumbnail's URL (images)")] | None = None


class LinkPreview(Wire):
    url: str
    title: str
    description: str
    site_name: str
    image: Annotated[str, Field(description="The image's thumbnail, stored here (a URL of "
                                            "this server)")] | None = None


class UploadQuery(Wire):
    name: Annotated[Text, Field(max_length=255, description="The file's name (raw bodies)")] | None = None


class FileQuery(Wire):
    thumb: Annotated[counter(0, 1), Field(description="1: the thumbnail")] = 0


# Requests -------------------------------------------------------------

class Register(Wire):
    username: required(max_length=150, pattern=r"^[A-Za-z0-9@.+_-]+$")
    password: Required
    email: Annotated[str, Field(max_length=254, pattern=r"^(?:[^@\s]+@[^@\s]+\.[^@\s]+)?$")] | None = None
    invite: Annotated[Text | None, Field(max_length=64, description="An invite code: needed "
                                                                   "when sign-up is by invite")] = None

    error_messages: ClassVar = {
        ("username", "string_pattern_mismatch"):
            "Enter a valid username. This value may contain only letters, numbers, and "
            "@/./+/-/_ characters.",
        ("email", "string_pattern_mismatch"): "Enter a valid email address.",
    }


class Login(Wire):
    username: Required
    password: Required


class TokenBody(Wire):
    token: Required


# Talking to people (issue 20) -----------------------------------------

# Kept without the spaces around them.
RoomName = Annotated[required(max_length=80), AfterValidator(str.strip),
                     Field(description="The chat's name (1-80 characters)")]
Topic = Annotated[str, Field(max_length=250), AfterValidator(str.strip),
                  Field(description="The chat's topic (0-250 characters; empty: none)")]


class NewChat(Wire):
    """Both optional: chatire's client sends no body."""
    name: RoomName | None = None
    topic: Topic | None = None


class StartDm(Wire):
    username: required(max_length=150)


class Join(Wire):
    username: Annotated[Text | None, Field(description="Whom the owner or a moderator adds; "
                                                       "absent, null or empty: the caller "
                                                       "joins")] = None
    name: Annotated[RoomName | None, Field(description="The owner or a moderator renames the "
                                                       "chat (then the answer is the chat)")] = None
    topic: Annotated[Topic | None, Field(description="The owner or a moderator sets the topic "
                                                     "(then the answer is the chat)")] = None
    locked: Annotated[bool | None, Field(description="The owner or a moderator locks the chat "
                                                     "(true: no joining by link) or unlocks "
                                                     "it")] = None


class EditBody(Wire):
    message: Annotated[Required, Configured("max_message_chars")]


Role = Literal["owner", "moderator", "member"]


class RoleBody(Wire):
    role: Annotated[Role, Field(description="owner hands the chat over")]


class BanBody(Wire):
    username: required(max_length=150)


class NewMessage(Wire):
    attachments: AttachmentIds = None
    message: MessageText = None
    client_id: ClientId = None

    @field_validator("message")
    @classmethod
    def check_text(cls, value: str | None, info: ValidationInfo) -> str:
        return text_or_files(value, info)


class MarkReadBody(Wire):
    seq: Annotated[Seq, Field(description="The last seq the reader has seen; a lower one "
                                           "than stored changes nothing")]


class MessagesQuery(Wire):
    after: Annotated[Seq, Field(description="Messages with seq > after")] | None = None
    before: Annotated[counter(1), Field(description="Messages with seq < before (the latest "
                                                    "when neither is given)")] | None = None
    limit: counter(1, MAX_PAGE) = DEFAULT_PAGE
    events: Annotated[counter(0, 1), Field(description="1: every room event (edit, delete, "
                                                       "reaction, member) in seq order, not "
                                                       "messages alone")] = 0
    around: Annotated[counter(1), Field(description="The history around this seq (a search "
                                                    "result): limit/2 before it, it, and the "
                                                    "rest after it")] | None = None

    @field_validator("before")
    @classmethod
    def not_both(cls, before: int | None, info: ValidationInfo) -> int | None:
        if before is not None and info.data.get("after") is not None:
            raise PydanticCustomError("exclusive", "Give either 'after' or 'before', not both.")
        return before

    @field_validator("around")
    @classmethod
    def alone(cls, around: int | None, info: ValidationInfo) -> int | None:
        if around is not None and (info.data.get("after") is not None
                                   or info.data.get("before") is not None):
            raise PydanticCustomError("exclusive", "Give 'around' without 'after' or 'before'.")
        return around


MAX_SEARCH_PAGE = 100


class SearchQuery(Wire):
    q: Annotated[required(max_length=200), Field(description='Words (all must match), "a '
                                                           'phrase", -excluded')]
    uri: Annotated[Uri | None, Field(description="Only this chat (one of mine)")] = None
    from_: Annotated[required(max_length=150) | None,
                     Field(alias="from", description="Only messages by this username")] = None
    after: Annotated[Moment | None, Field(description="Only messages created after this ISO "
                                                     "date or time (UTC when it names no "
                                                     "zone)")] = None
    before: Annotated[Moment | None, Field(description="Only messages created before this "
                                                      "ISO date or time")] = None
    limit: counter(1, MAX_SEARCH_PAGE) = 20
    cursor: Annotated[Text | None, Field(max_length=200, description="The previous page's "
                                                                     "`next`")] = None
    sort: Annotated[Literal["newest", "relevance"], Field(description="newest first (the "
                                                                      "default), or best "
                                                                      "match first")] = "newest"


# "<updated>_<room id>"; empty is left out, as every empty query parameter is.
CHAT_CURSOR_PATTERN = r"^([0-9]{1,12}(\.[0-9]{1,20})?_[0-9a-f]{24})?$"


class ChatsQuery(Wire):
    before: Annotated[str, Field(pattern=CHAT_CURSOR_PATTERN,
                                 description="The `cursor` of the last chat of the page before: "
                                             "the chats after it")] | None = None
    limit: counter(1, MAX_PAGE) = MAX_PAGE
    paged: Annotated[counter(0, 1), Field(description="1: answer a ChatPage (chats and "
                                                      "has_more) even for the first page")] = 0


# Responses ------------------------------------------------------------

class User(Wire):
    id: str
    username: str
    email: str
    first_name: str
    last_name: str
    display_name: str = Field("", description="The name to show; empty: show the username")
    avatar: str | None = Field(None, description="The profile picture's URL, or none")


class NewUser(Wire):
    id: str
    username: str
    email: str


class Token(Wire):
    token: str


class Detail(Wire):
    detail: str


class FieldErrors(RootModel[Annotated[dict[str, list[str]], Field(min_length=1)]]):
    """Each key names a field (or non_field_errors) and lists what is wrong with it."""


class ChatCreated(Wire):
    status: Literal["SUCCESS"]
    uri: Uri
    message: str


class Member(Wire):
    id: str
    username: str


class Blocked(Wire):
    user: Annotated[Member, Field(description="Whom I blocked")]
    created: Timestamp


class MessagePreview(Wire):
    id: str
    seq: int = Field(ge=1)
    user: User
    text: Annotated[str, Field(description="The message's first 100 characters")]
    created: Timestamp


Kind = Annotated[Literal["room", "dm"], Field(description="dm: a direct message of two "
                                                         "people (or one's own notes)")]


class ChatSummary(Wire):
    uri: Uri
    kind: Kind = "room"
    owner: str | None
    name: Annotated[str | None, Field(description="null: unnamed (named after its members)")] = None
    topic: str = ""
    other: Annotated[Member | None, Field(description="A DM's other person (oneself in "
                                                        "one's notes)")] = None
    members: int
    seq: int = Field(ge=0)
    updated: Timestamp
    last_seq: int = Field(ge=0)
    last_read_seq: int = Field(ge=0)
    unread: Annotated[int, Field(ge=0, le=999, description="Messages by others after "
                                                          "last_read_seq, not deleted; at most 999")]
    mentions: Annotated[int, Field(ge=0, le=999, description="Of the unread, those that "
                                                            "mention me or @room")] = 0
    last_message: Annotated[MessagePreview | None, Field(description="The latest message that "
                                                                     "is not deleted")]
    people: Annotated[list[Member], Field(description="The first few members, to name the chat")]
    cursor: Annotated[str, Field(description="Where the page after this chat begins "
                                             "(GET /api/chats/?before=<cursor>)")]

    notifications: Annotated[Literal["all", "mentions", "none"],
                             Field(description="My notification level here")] = "mentions"


class ChatPage(Wire):
    chats: list[ChatSummary]
    has_more: Annotated[bool, Field(description="More chats follow: ask with before=<the "
                                                "last chat's cursor>")]


class ChatMember(User):
    role: Role


class Chat(Wire):
    uri: Uri
    kind: Kind = "room"
    name: str | None = None
    topic: str = ""
    owner: User | None
    members: list[ChatMember]
    locked: Annotated[bool, Field(description="No joining by link")]
    bans: Annotated[list[User] | None, Field(description="Banned users, shown to the owner "
                                                         "and moderators only")] = None
    seq: int = Field(ge=0)
    created: Timestamp
    updated: Timestamp
    online: Annotated[list[str], Field(description="Usernames with a socket open to the chat")]
    read: Annotated[dict[str, int], Field(description="Username -> last_read_seq")]
    notifications: Annotated[Literal["all", "mentions", "none"],
                             Field(description="My notification level here")] = "mentions"


class Joined(Wire):
    status: Literal["SUCCESS"]
    uri: Uri
    members: list[ChatMember]
    message: str
    user: ChatMember


Html = Annotated[str, Field(description="The text as sanitized HTML (Markdown rendered once "
                                        "on the server); absent on messages from before it")]
Mentions = Annotated[list[str], Field(description="Usernames of the members it mentions")]


class Message(Wire):
    id: str
    seq: int = Field(ge=1)
    uri: Uri
    user: User
    message: Annotated[str, Field(description="Its current text; empty once deleted")]
    html: Html | None = None
    mentions: Mentions = []
    mentions_room: Annotated[bool, Field(description="It mentions @room")] = False
    created: Timestamp
    client_id: str | None = None
    last_event_seq: Annotated[int, Field(ge=1, description="The seq of the last event that "
                                                           "changed it (its own seq if none): "
                                                           "apply only events above it")]
    version: Annotated[int, Field(ge=1, description="How many times it was edited")] | None = None
    edited: Annotated[Timestamp, Field(description="When it was last edited")] | None = None
    deleted: bool | None = None
    reactions: Annotated[dict[str, list[str]], Field(
        description="Emoji -> the usernames who reacted with it")] | None = None
    attachments: list[FileInfo] | None = None
    preview: Annotated[LinkPreview, Field(description="Its first link's preview")] | None = None


class Posted(Message):
    status: Literal["SUCCESS"]


class MessageEvent(Wire):
    """What every event about a message carries: `id` and `target_seq` name the
    message, `seq` is the event's own."""
    seq: int = Field(ge=1)
    id: str
    target_seq: int = Field(ge=1)
    uri: Uri
    created: Timestamp


class EditEvent(MessageEvent):
    """A message was edited (its text is empty once the message is deleted)."""
    type: Literal["edit"]
    message: str
    html: Html | None = None
    mentions: Mentions = []
    mentions_room: bool = False
    edited: Timestamp
    version: int = Field(ge=1)
    user: Member


class DeleteEvent(MessageEvent):
    """A message was deleted (by its author, the owner or a moderator)."""
    type: Literal["delete"]
    by: Member


class ReactionEvent(MessageEvent):
    type: Literal["reaction"]
    emoji: str
    op: Literal["add", "remove"]
    user: Member


class PreviewEvent(MessageEvent):
    """A message's first link got its preview, or (preview null) its author removed it."""
    type: Literal["preview"]
    preview: LinkPreview | None
    user: Member


class MemberEvent(Wire):
    """Someone joined, left, was removed, banned or unbanned, or got a role."""
    type: Literal["member"]
    seq: int = Field(ge=1)
    uri: Uri
    created: Timestamp
    op: Literal["join", "leave", "remove", "ban", "unban", "role"]
    user: Member
    by: Member
    role: Role | None = None


class RoomInfoEvent(Wire):
    """The chat's name or topic changed (by its owner or a moderator)."""
    type: Literal["room"]
    seq: int = Field(ge=1)
    id: str | None = None
    uri: Uri
    name: str | None
    topic: str
    by: Member
    created: Timestamp


class HistoryMessage(Message):
    type: Literal["message"]


class ProfileUser(Member):
    display_name: str
    avatar: str | None


class ProfileEvent(Wire):
    """A member changed their display name or picture (sent in every room they are in)."""
    type: Literal["profile"]
    seq: int = Field(ge=1)
    uri: Uri
    created: Timestamp
    user: ProfileUser


RoomEvent = Annotated[HistoryMessage | EditEvent | DeleteEvent | ReactionEvent | MemberEvent
                      | RoomInfoEvent | PreviewEvent | ProfileEvent, Field(discriminator="type")]


class MessagePage(Wire):
    uri: Uri
    messages: Annotated[list[RoomEvent], Field(description="Messages; with events=1 every "
                                                           "room event")]
    has_more: bool


class SearchResult(Wire):
    id: str
    uri: Uri
    name: Annotated[str | None, Field(description="The chat's name, if it has one")]
    seq: int = Field(ge=1)
    user: User
    created: Timestamp
    message: Annotated[str, Field(description="Its current text")]
    highlight: Annotated[str, Field(description="The text as HTML: matched words in <mark>, "
                                                "everything else escaped")]


class SearchPage(Wire):
    results: list[SearchResult]
    next: Annotated[str | None, Field(description="The cursor of the next page; null at "
                                                  "the end")]
    partial: Annotated[bool, Field(description="The search stopped at search.max_scan "
                                               "matches of the index (the matches among "
                                               "the recent events of the chats active "
                                               "last are added): more may exist; narrow "
                                               "it down")]


class Health(Wire):
    mongo: Literal["ok", "down"]
    broker: Literal["ok", "down"]


# WebSocket frames -----------------------------------------------------

class SocketQuery(Wire):
    """The socket URL's query: /ws/chats/<uri>/?since=N&token=T."""
    since: Annotated[Seq, Field(description="Send every message after N, then ready; "
                                            "absent: live message frames only")] | None = None
    token: Annotated[Text, Field(description="A token, for clients that cannot send "
                                             "headers")] | None = None


class SendMessage(Wire):
    """Client -> server: post a message; it comes back through the stream."""
    type: Literal["message"]
    attachments: AttachmentIds = None
    message: MessageText = None
    client_id: ClientId = None

    @field_validator("message")
    @classmethod
    def check_text(cls, value: str | None, info: ValidationInfo) -> str:
        return text_or_files(value, info)


class Typing(Wire):
    """Client -> server: the user is typing (at most every 2 s), or stopped."""
    type: Literal["typing"]
    stop: bool = False


class MarkRead(Wire):
    """Client -> server: the user has read the room up to seq."""
    type: Literal["read"]
    seq: Seq


class MessageFrame(Message):
    """Server -> client: a message of the room, in seq order."""
    type: Literal["message"]


class ReadyFrame(Wire):
    """Server -> client, only to a socket opened with ?since=N: everything after N was sent."""
    type: Literal["ready"]
    seq: int = Field(ge=0)


class ErrorFrame(Wire):
    """Server -> client, in answer to a frame the client sent (on the user stream,
    with the frame's `uri`)."""
    type: Literal["error"]
    code: Literal["invalid", "rate_limited", "unavailable", "forbidden"]
    detail: str
    client_id: str | None = None
    uri: str | None = None


class PresenceFrame(Wire):
    """Server -> client, full stream only: after ready, who is online (`users`);
    then who came (`joined`) and went (`left`)."""
    type: Literal["presence"]
    users: list[Member] | None = None
    joined: list[Member] | None = None
    left: list[Member] | None = None


class TypingFrame(Wire):
    """Server -> client, full stream only: everyone typing now, on every change."""
    type: Literal["typing"]
    users: list[str]


class ReadFrame(Wire):
    """Server -> client, full stream only: a member has read the room up to seq."""
    type: Literal["read"]
    user: str
    user_id: str
    seq: int = Field(ge=0)


# The user stream, /ws/ -----------------------------------------------

RoomUri = Annotated[str, Field(pattern=URI_PATTERN, description="The chat's uri")]


class StreamQuery(Wire):
    """The user stream's URL query: /ws/?token=T."""
    token: Annotated[Text, Field(description="A token, for clients that cannot send "
                                             "headers")] | None = None


class StreamSendMessage(SendMessage):
    """Client -> server: post a message in the chat `uri`."""
    uri: RoomUri


class StreamTyping(Typing):
    """Client -> server: the user is typing in `uri`, or stopped."""
    uri: RoomUri


class StreamMarkRead(MarkRead):
    """Client -> server: the user has read `uri` up to seq."""
    uri: RoomUri


class Subscribe(Wire):
    """Client -> server: send the chat's events after `since`, then `ready` with its
    uri, then its signals (presence, typing, everybody's reads)."""
    type: Literal["subscribe"]
    uri: RoomUri
    since: Seq


class Unsubscribe(Wire):
    """Client -> server: no more signals of the chat (its events keep coming)."""
    type: Literal["unsubscribe"]
    uri: RoomUri


class ChatsFrame(Wire):
    """Server -> client, first on the user stream: my chats (GET /api/chats/'s first page);
    then every event of each after its last_seq."""
    type: Literal["chats"]
    chats: list[ChatSummary]
    # More chats follow: the page asks GET /api/chats/?before=<the last chat's cursor>.
    has_more: bool = False


class ChatFrame(Wire):
    """Server -> client: the user became a member of a chat (or its entry changed);
    its events after the entry's last_seq follow."""
    type: Literal["chat"]
    uri: str
    chat: ChatSummary


class ChatGoneFrame(Wire):
    """Server -> client: the user is no longer a member of the chat; nothing more of it follows."""
    type: Literal["chat_gone"]
    uri: str
    reason: Literal["left", "removed", "banned"]


class NotificationsFrame(Wire):
    """Server -> client: my notification level in the chat changed (on any device)."""
    type: Literal["notifications"]
    uri: str
    level: Literal["all", "mentions", "none"]


class StreamReadyFrame(ReadyFrame):
    """Server -> client: everything of `uri` after the subscription's since was sent."""
    uri: str


# Accounts and the operator (chat/accounts.py) ------------------------------

Email = Annotated[str, Field(max_length=254, pattern=r"^(?:[^@\s]+@[^@\s]+\.[^@\s]+)?$")]
NewPassword = required(max_length=1000)


class Me(User):
    admin: bool


class ProfileUpdate(Wire):
    display_name: Annotated[Text | None, Field(max_length=64, description="1-64 characters; "
                                                                          "\"\" or null clears it")] = None
    email: Email | None = None
    avatar: Annotated[Text | None, Field(description="The id of an image I uploaded "
                                                     "(POST /api/chats/<uri>/files/); null "
                                                     "removes the picture")] = None

    error_messages: ClassVar = {("email", "string_pattern_mismatch"): "Enter a valid email address."}


class PasswordChange(Wire):
    old_password: Required
    new_password: NewPassword


class PasswordReset(Wire):
    username: Annotated[Text | None, Field(max_length=254)] = None
    email: Annotated[Text | None, Field(max_length=254)] = None


class PasswordResetConfirm(Wire):
    token: required(max_length=200)
    new_password: NewPassword


class AccountDelete(Wire):
    password: Required


class InviteCreate(Wire):
    uses: counter(1, 1000) = 1
    expires_in_hours: Annotated[float, Field(gt=0, le=8760)] = 168


class Invite(Wire):
    code: str
    url: str
    uses: int
    uses_left: int
    expires: Timestamp
    created: Timestamp
    by: Member


class AdminUsersQuery(Wire):
    q: Annotated[Text, Field(max_length=150)] = ""
    cursor: Annotated[Text, Field(max_length=150)] = ""


class AdminUser(Wire):
    id: str
    username: str
    display_name: str
    email: str
    created: Timestamp
    last_seen: Timestamp | None
    active: bool
    admin: bool


class AdminUsersPage(Wire):
    results: list[AdminUser]
    next: str | None = Field(description="The cursor of the next page, or null at the end")


class AdminUserUpdate(Wire):
    active: bool | None = None
    admin: bool | None = None


class UserCounts(Wire):
    total: int
    active_24h: int


class SocketCounts(Wire):
    total: int
    per_process: dict[str, int]


class Stats(Wire):
    users: UserCounts
    rooms: int
    messages: int
    files: int
    file_bytes: int
    sockets: SocketCounts


class AuditQuery(Wire):
    before: Annotated[Text | None, Field(pattern=r"^(?:[0-9a-f]{24})?$",
                                         description="The id of the last entry seen")] = None


class AuditEntry(Wire):
    id: str
    by: Member
    action: str
    target: str
    details: dict[str, Any]
    at: Timestamp


class AuditPage(Wire):
    results: list[AuditEntry]
    next: str | None


# Reaching people who are away (chat/notifications.py) ----------------------

Level = Literal["all", "mentions", "none"]


class NotificationLevel(Wire):
    level: Annotated[Level, Field(description="all: every message; mentions: those that "
                                              "mention me or @room (DMs: all); none")]


class PushKey(Wire):
    key: Annotated[str, Field(description="The server's VAPID public key (base64url, "
                                          "the PushManager's applicationServerKey)")]


class PushKeys(Wire):
    p256dh: required(max_length=200)
    auth: required(max_length=100)


class PushSubscription(Wire):
    endpoint: Annotated[Text, Field(min_length=1, max_length=2000, pattern=r"^https?://\S+$",
                                    description="The push service URL of the device")]
    keys: PushKeys


class PushUnsubscription(Wire):
    endpoint: Annotated[Text, Field(min_length=1, max_length=2000)]


class UnsubscribeQuery(Wire):
    token: required(max_length=1000)


class FocusFrame(Wire):
    """Client -> server on the user stream: the chat this client shows, visible
    (null: none, or the tab is hidden). No push for it while so."""
    type: Literal["focus"]
    uri: RoomUri | None = None


CLIENT_FRAMES: list[type[Wire]] = [SendMessage, Typing, MarkRead]
STREAM_CLIENT_FRAMES: list[type[Wire]] = [StreamSendMessage, StreamTyping, StreamMarkRead,
                                          Subscribe, Unsubscribe, FocusFrame]
STREAM_SERVER_FRAMES: list[type[Wire]] = [ChatsFrame, ChatFrame, ChatGoneFrame,
                                          NotificationsFrame, StreamReadyFrame]
SERVER_FRAMES: list[type[Wire]] = [MessageFrame, EditEvent, DeleteEvent, ReactionEvent,
                                   MemberEvent, RoomInfoEvent, PreviewEvent, ReadyFrame, ErrorFrame,
                                   PresenceFrame, TypingFrame, ReadFrame, ProfileEvent]


def one_of(kinds: list[type[Wire]]) -> Any:
    """The frame models (two or more) as one type, told apart by their `type`."""
    union = kinds[0]
    for kind in kinds[1:]:
        union = union | kind
    return Annotated[union, Field(discriminator="type")]


class FrameSet:
    """The frames a kind of socket takes from its client: parsed as one union."""

    def __init__(self, kinds: list[type[Wire]]):
        self.union = one_of(kinds)
        self.adapter = TypeAdapter(self.union)
        self.fields = {name for frame in kinds for name in frame.model_fields}
        self.types = {kind for frame in kinds
                      for kind in get_args(frame.model_fields["type"].annotation)}


ROOM_FRAMES = FrameSet(CLIENT_FRAMES)
STREAM_FRAMES = FrameSet(STREAM_CLIENT_FRAMES)
CLIENT_FRAME_FIELDS = ROOM_FRAMES.fields
CLIENT_FRAME_TYPES = ROOM_FRAMES.types
ClientFrame = ROOM_FRAMES.union
ServerFrame = one_of(SERVER_FRAMES)
StreamServerFrame = one_of([kind for kind in SERVER_FRAMES if kind is not ReadyFrame]
                           + STREAM_SERVER_FRAMES)
client_frame = ROOM_FRAMES.adapter


# Errors ---------------------------------------------------------------

# The tutorial's (Django REST framework's) wording for pydantic's error types.
MESSAGES = {
    "missing": "This field is required.",
    "string_type": "Not a valid string.",
    "int_type": "A valid integer is required.",
    "int_parsing": "A valid integer is required.",
    "int_from_float": "A valid integer is required.",
    "bool_type": "Must be a valid boolean.",
    "bool_parsing": "Must be a valid boolean.",
    "string_too_long": "Ensure this field has no more than {max_length} characters.",
    "greater_than_equal": "Ensure this value is greater than or equal to {ge}.",
    "less_than_equal": "Ensure this value is less than or equal to {le}.",
    "model_type": "Expected an object.",
    "model_attributes_type": "Expected an object.",
    "dict_type": "Expected an object.",
    "list_type": "Expected a list.",
    "datetime_from_date_parsing": "Enter an ISO date or date and time, like 2026-12-01 or "
                                  "2026-12-01T09:30:00Z.",
    "datetime_parsing": "Enter an ISO date or date and time, like 2026-12-01 or "
                        "2026-12-01T09:30:00Z.",
    "datetime_type": "Enter an ISO date or date and time.",
}


def field_errors(model: Any, error: ValidationError, skip: int = 0) -> dict[str, list[str]]:
    """A ValidationError as {field: [message]}; `skip` drops leading loc parts
    (a frame union's tag)."""
    answer: dict[str, list[str]] = {}
    for item in error.errors(include_url=False, include_input=False):
        loc = item["loc"][skip:]
        field = str(loc[0]) if loc else "non_field_errors"
        kind = item["type"]
        specific = getattr(model, "error_messages", {}).get((field, kind))
        if specific is None and kind == "string_too_short" and item["ctx"]["min_length"] == 1:
            specific = "This field may not be blank."
        template = specific or MESSAGES.get(kind)
        message = template.format(**item.get("ctx", {})) if template else item["msg"]
        answer.setdefault(field, []).append(message)
    return answer

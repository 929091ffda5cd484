"""Settings: config.yaml, then CHAT_* environment variables, then flags."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml

# The languages of MongoDB's text indexes (and "none": no stemming, no stop words).
SEARCH_LANGUAGES = ("none", "danish", "dutch", "english", "finnish", "french", "german",
                    "hungarian", "italian", "norwegian", "portuguese", "romanian", "russian",
                    "spanish", "swedish", "turkish")


class ConfigError(ValueError):
    """A setting is missing or has a value the server cannot use."""


@dataclasses.dataclass(frozen=True)
class Config:
    address: str = "127.0.0.1"
    port: int = 8888
    listen_backlog: int = 4096
    behind_proxy: bool = False
    mongo_url: str = "mongodb://127.0.0.1:27017/chat"
    mongo_timeout_ms: int = 2500
    mongo_write_concern: str = "majority"
    mongo_read_concern: str = "majority"
    # One URL per RabbitMQ node of a cluster (a comma-separated list in CHAT_BROKER_URL).
    broker_url: tuple[str, ...] = ("amqp://guest:guest@127.0.0.1:5672/%2F",)
    broker_heartbeat: int = 15
    broker_reconnect_min: float = 0.1
    broker_reconnect_max: float = 1.0
    secret: str = ""
    secure_cookies: bool = False
    data_dir: str = "./data"
    token_ttl_days: float = 7.0
    bcrypt_rounds: int = 12
    bcrypt_threads: int = 4
    login_max_failures: int = 10
    login_window_seconds: int = 900
    login_delay_max_seconds: float = 30.0
    signup_per_ip_per_minute: int = 20
    login_per_ip_per_minute: int = 60
    max_message_chars: int = 2000
    max_body_bytes: int = 65536
    allowed_origins: tuple[str, ...] = ()
    ws_ping_interval: float = 20.0
    ws_max_message_bytes: int = 65536
    ws_send_buffer_bytes: int = 1048576
    ws_ready_timeout: float = 15.0
    user_messages_per_minute: int = 100
    user_rooms_per_hour: int = 50
    user_member_changes_per_minute: int = 100
    user_signals_per_minute: int = 600
    user_logouts_per_minute: int = 30
    changes_sweep_seconds: float = 10.0
    changes_stale_seconds: float = 30.0
    max_sockets_per_user: int = 10
    max_subscriptions: int = 10
    presence_enabled: bool = True
    presence_grace_seconds: float = 10.0
    presence_ttl_seconds: float = 20.0
    typing_ttl_seconds: float = 6.0
    read_flush_seconds: float = 1.0
    # Files and link previews.
    max_upload_bytes: int = 26214400
    upload_quota_bytes: int = 1073741824
    link_previews: bool = True
    link_preview_allow: tuple[str, ...] = ()
    link_preview_timeout_seconds: float = 3.0
    search_language: str = "english"
    search_max_scan: int = 1000
    log_format: str = "text"
    log_level: str = "INFO"
    metrics_token: str = ""
    # Talking to people (issue 20): @room's rule, and Markdown's bound.
    mention_room_max_without_role: int = 20
    render_timeout_seconds: float = 0.05
    render_threads: int = 2
    # Accounts and the operator (issue 24).
    admins: tuple[str, ...] = ()
    signup: str = "open"
    account_deletion: str = "keep"
    username_reuse_days: float = 30.0
    avatar_max_bytes: int = 524288
    password_reset_per_ip_per_hour: int = 10
    password_reset_per_account_per_hour: int = 3
    public_url: str = ""
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_security: str = "auto"
    smtp_user: str = ""
    smtp_password: str = ""
    smtp_from: str = ""
    # Reaching people who are away (issue 21).
    push_delay_seconds: float = 15.0
    vapid_subject: str = "mailto:admin@localhost"
    vapid_private_key: str = ""
    email_delay_minutes: float = 5.0
    email_min_interval_minutes: float = 30.0
    notify_lease_seconds: float = 30.0
    notify_retry_first_seconds: float = 1.0
    notify_retry_max_seconds: float = 300.0
    embedded: bool = False

    def validate(self) -> Config:
        if not self.secret:
            raise ConfigError(
                "no secret: set CHAT_SECRET (or 'secret' in config.yaml) to a long "
                "random string, e.g. `openssl rand -hex 32`; --embedded generates one"
            )
        if len(self.secret) < 16:
            raise ConfigError("secret is too short: use at least 16 characters")
        if self.log_format not in ("text", "json"):
            raise ConfigError("log.format must be 'text' or 'json'")
        if not 4 <= self.bcrypt_rounds <= 31:
            raise ConfigError("bcrypt_rounds must be between 4 and 31")
        if not (self.mongo_write_concern == "majority" or self.mongo_write_concern.isdigit()):
            raise ConfigError("mongo_write_concern must be 'majority' or a number of members")
        if self.mongo_read_concern not in ("local", "available", "majority", "linearizable"):
            raise ConfigError("mongo_read_concern must be local, available, majority or "
                              "linearizable")
        if not self.broker_url:
            raise ConfigError("broker_url: give at least one amqp:// URL (or memory://)")
        for url in self.broker_url:
            if not url.startswith(("amqp://", "amqps://", "memory://")):
                raise ConfigError(f"broker_url: {url!r} is not an amqp://, amqps:// or "
                                  "memory:// URL")
        if self.broker_in_memory and len(self.broker_url) > 1:
            raise ConfigError("broker_url: memory:// keeps messages in one process; "
                              "it cannot be combined with other URLs")
        for name in ("port", "listen_backlog", "max_message_chars", "max_body_bytes", "ws_send_buffer_bytes",
                     "presence_ttl_seconds", "typing_ttl_seconds", "read_flush_seconds",
                     "ws_ready_timeout", "render_timeout_seconds", "render_threads",
                     "max_upload_bytes", "upload_quota_bytes", "link_preview_timeout_seconds",
                     "avatar_max_bytes", "changes_sweep_seconds", "changes_stale_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.signup not in ("open", "invite", "closed"):
            raise ConfigError("signup must be open, invite or closed")
        if self.account_deletion not in ("keep", "erase"):
            raise ConfigError("account_deletion must be keep or erase")
        if self.smtp_security not in ("auto", "starttls", "tls", "none"):
            raise ConfigError("smtp.security must be auto, starttls, tls or none")
        if self.username_reuse_days < 0:
            raise ConfigError("username_reuse_days must be 0 or more")
        if self.search_language not in SEARCH_LANGUAGES:
            raise ConfigError(f"search.language must be one of {', '.join(SEARCH_LANGUAGES)}")
        if self.search_max_scan < 1:
            raise ConfigError("search.max_scan must be positive")
        for name in ("push_delay_seconds", "email_delay_minutes", "email_min_interval_minutes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or more")
        for name in ("notify_lease_seconds", "notify_retry_first_seconds", "notify_retry_max_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if not self.vapid_subject.startswith(("mailto:", "https://")):
            raise ConfigError("vapid_subject must be a mailto: or https:// URL")
        if self.presence_grace_seconds < 0:
            raise ConfigError("presence.grace_seconds must be 0 or more")
        return self

    @property
    def broker_in_memory(self) -> bool:
        return any(url.startswith("memory://") for url in self.broker_url)

    @property
    def mongo_db(self) -> str:
        path = self.mongo_url.split("://", 1)[-1].split("/", 1)
        name = path[1].split("?", 1)[0] if len(path) > 1 else ""
        return name or "chat"


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"log": {"format": "json"}} -> {"log_format": "json"}."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "_"))
        else:
            flat[name] = value
    return flat


def coerce(name: str, value: Any) -> Any:
    """Turn a YAML or environment value into the type of the setting's default."""
    default = FIELDS[name].default
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if isinstance(default, tuple):
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            return tuple(str(v) for v in value or ())
        if isinstance(default, (int, float)):
            return type(default)(value)
        return "" if value is None else str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {value!r} is not a valid {type(default).__name__}") from None


def load(path: str | os.PathLike | None = None, env: dict[str, str] | None = None,
         **overrides: Any) -> Config:
    """Read the YAML file (if any), apply CHAT_* variables, then the overrides."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    if path is not None and Path(path).exists():
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of settings")
        for name, value in flatten(data).items():
            if name not in FIELDS:
                raise ConfigError(f"{path}: unknown setting {name!r}")
            values[name] = coerce(name, value)
    for name in FIELDS:
        key = "CHAT_" + name.upper()
        if key in env:
            values[name] = coerce(name, env[key])
    for name, value in overrides.items():
        if value is not None:
            values[name] = coerce(name, value)
    return Config(**values)

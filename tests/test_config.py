"""Settings: config.yaml documents every default; the environment overrides it."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import yaml

from chat import config as chat_config
from chat.config import Config, ConfigError, flatten, load
from tests.helpers import ROOT


def test_config_yaml_documents_every_setting_with_its_default():
    documented = flatten(yaml.safe_load((ROOT / "config.yaml").read_text()))
    settings = {f.name: f.default for f in dataclasses.fields(Config) if f.name != "embedded"}
    assert set(documented) == set(settings)
    for name, default in settings.items():
        assert chat_config.coerce(name, documented[name]) == default, name


def test_environment_overrides_the_file():
    config = load(ROOT / "config.yaml", env={"CHAT_PORT": "9100", "CHAT_LOG_FORMAT": "json",
                                             "CHAT_ALLOWED_ORIGINS": "https://a.example, https://b.example",
                                             "CHAT_SECURE_COOKIES": "yes"})
    assert config.port == 9100
    assert config.log_format == "json"
    assert config.allowed_origins == ("https://a.example", "https://b.example")
    assert config.secure_cookies is True


def test_broker_url_takes_a_list_in_the_file_and_commas_in_the_environment(tmp_path):
    urls = ["amqp://guest:guest@10.0.0.1:5672/%2F", "amqp://guest:guest@10.0.0.2:5672/%2F"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"broker_url": urls}))
    assert load(path, env={}).broker_url == tuple(urls)
    assert load(ROOT / "config.yaml", env={"CHAT_BROKER_URL": " , ".join(urls)}).broker_url \
        == tuple(urls)
    assert load(ROOT / "config.yaml", env={"CHAT_BROKER_URL": urls[0]}).broker_url == (urls[0],)


@pytest.mark.parametrize("value, message", [
    ("", "at least one"),
    ("amqp://a/%2F,memory://", "cannot be combined"),
    ("rabbit-1:5672", "not an amqp://"),
])
def test_a_broker_url_list_the_server_cannot_use_is_refused(value, message):
    config = load(ROOT / "config.yaml", env={"CHAT_BROKER_URL": value, "CHAT_SECRET": "s" * 32})
    with pytest.raises(ConfigError, match=message):
        config.validate()


def test_flags_override_the_environment():
    assert load(ROOT / "config.yaml", env={"CHAT_PORT": "9100"}, port=9200).port == 9200


@pytest.mark.parametrize("env, message", [
    ({"CHAT_PORT": "eighty"}, "port"),
    ({"CHAT_SECURE_COOKIES": "maybe"}, "secure_cookies"),
])
def test_bad_values_are_named(env, message):
    with pytest.raises(ConfigError, match=message):
        load(ROOT / "config.yaml", env=env)


def test_unknown_settings_in_the_file_are_refused(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("port: 1\nprot: 2\n")
    with pytest.raises(ConfigError, match="prot"):
        load(path, env={})


def test_the_database_name_comes_from_the_url():
    assert Config(mongo_url="mongodb://h:1/chatdb?x=1").mongo_db == "chatdb"
    assert Config(mongo_url="mongodb://h:1").mongo_db == "chat"


def test_a_missing_secret_is_a_clear_startup_error():
    env = {"PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, str(ROOT / "server.py")], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "no secret" in result.stderr and "CHAT_SECRET" in result.stderr


def test_help_lists_the_flags():
    result = subprocess.run([sys.executable, str(ROOT / "server.py"), "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    for flag in ("--config", "--port", "--embedded"):
        assert flag in result.stdout

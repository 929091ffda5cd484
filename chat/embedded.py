"""The embedded default (`make run`): no services to install beforehand.

A generated secret kept under data_dir, the in-process broker, and the
pip-installed MongoDB wire-protocol server nx-27017 started on loopback
when nothing answers at mongo_url.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit

from chat.config import Config
from chat.store import Store, Unavailable

log = logging.getLogger("chat.embedded")

MONGO_START_SECONDS = 20


def stored_secret(data_dir: Path) -> str:
    """The secret kept in data_dir/secret (0600), made on first use."""
    secret_file = data_dir / "secret"
    if not secret_file.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        secret_file.write_text(secrets.token_hex(32))
        secret_file.chmod(0o600)
    return secret_file.read_text().strip()


def wire_server_command(port: int, folder: Path) -> list[str]:
    """nx-27017 on loopback:port, keeping its data, log (nx.log) and pid in folder."""
    program = shutil.which("nx-27017", path=os.path.dirname(sys.executable)) or shutil.which("nx-27017")
    if program is None:
        raise FileNotFoundError("nx-27017 is not installed: run `make run`, or `pip install nx-27017`")
    return [program, "--host", "127.0.0.1", "-p", str(port), "--data-dir", str(folder),
            "--log-file", str(folder / "nx.log"), "--pid-file", str(folder / "nx.pid")]


def prepare(config: Config) -> Config:
    data = Path(config.data_dir).resolve()
    (data / "mongo").mkdir(parents=True, exist_ok=True)
    secret = config.secret or stored_secret(data)
    return dataclasses.replace(config, secret=secret, broker_url=("memory://",), data_dir=str(data))


async def mongo_answers(config: Config, timeout_ms: int) -> bool:
    store = Store(config.mongo_url, config.mongo_db, timeout_ms)
    try:
        await store.ping()
        return True
    except Unavailable:
        return False
    finally:
        await store.close()


async def start_mongo(config: Config) -> asyncio.subprocess.Process | None:
    """Start nx-27017 under data_dir unless a MongoDB already answers."""
    if await mongo_answers(config, 1000):
        log.info("using the MongoDB at %s", config.mongo_url)
        return None
    where = urlsplit(config.mongo_url)
    host, port = where.hostname or "127.0.0.1", where.port or 27017
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"no MongoDB answers at {config.mongo_url}; start it or fix mongo_url")
    folder = Path(config.data_dir) / "mongo"  # made by prepare()
    try:
        command = wire_server_command(port, folder)
    except FileNotFoundError as error:
        raise SystemExit(str(error)) from None
    log.info("starting the MongoDB wire server nx-27017 on %s:%d (data in %s)", host, port, folder)
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    deadline = asyncio.get_running_loop().time() + MONGO_START_SECONDS
    while not await mongo_answers(config, 500):
        if process.returncode is not None or asyncio.get_running_loop().time() > deadline:
            raise SystemExit(f"nx-27017 did not start; see {folder / 'nx.log'}")
        await asyncio.sleep(0.2)
    return process


async def stop_mongo(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            process.kill()
            await process.wait()

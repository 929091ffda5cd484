"""bcrypt in a bounded thread pool, so hashing never blocks the event loop."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import bcrypt

# bcrypt 5 refuses longer passwords instead of silently truncating them.
MAX_PASSWORD_BYTES = 72


class PasswordTooLong(ValueError):
    pass


class Passwords:
    def __init__(self, rounds: int = 12, threads: int = 4):
        self.rounds = rounds
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bcrypt")
        # Checked against when the username is unknown, so that answer costs
        # the same time as a wrong password (no timing oracle for usernames).
        self.decoy = bcrypt.hashpw(b"decoy password", bcrypt.gensalt(rounds))

    async def hash(self, password: str) -> bytes:
        secret = password.encode()
        if len(secret) > MAX_PASSWORD_BYTES:
            raise PasswordTooLong(f"Ensure this field has no more than {MAX_PASSWORD_BYTES} bytes.")
        salt = bcrypt.gensalt(self.rounds)
        return await asyncio.get_running_loop().run_in_executor(self.pool, bcrypt.hashpw, secret, salt)

    async def check(self, password: str, hashed: bytes | None) -> bool:
        """True when password matches hashed; None checks against the decoy."""
        secret = password.encode()
        if len(secret) > MAX_PASSWORD_BYTES:
            secret = secret[:MAX_PASSWORD_BYTES]
            hashed = None  # still costs one check, never matches
        matches = await asyncio.get_running_loop().run_in_executor(
            self.pool, bcrypt.checkpw, secret, hashed or self.decoy)
        return matches and hashed is not None

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

"""The browser page (placeholder until the page lands)."""

from __future__ import annotations


def routes() -> list:
    return []

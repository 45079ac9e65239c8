"""Helpers of the browser tests (not fixtures)."""

from __future__ import annotations

import sys


def sign_in(page, base_url: str, key: str, route: str = "#/jobs") -> None:
    """Put the key in localStorage as the sign-in form does, then open `route`."""
    page.goto(f"{base_url}/#/signin")
    page.evaluate("key => localStorage.setItem('hcd.apiKey', key)", key)
    page.goto(f"{base_url}/{route}")


def new_key(settings, owner: str) -> str:
    """A key of `owner` (the service tests' helper, from their conftest loaded by ours)."""
    return sys.modules["hcd_service_conftest"]._new_key(settings, owner)

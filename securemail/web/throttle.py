"""The per-address throttle on failed logins and failed API tokens (in memory, per process).

Its own module so that the login pages and the token check in the middleware share it
without importing each other.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime, timedelta

from aiohttp import web


class LoginThrottle:
    """At most ``limit`` failed logins per source address in a sliding ``window``.

    In memory, per process: a restart forgets it, which is acceptable because the per-account
    lock (in the database) is what protects each account."""

    def __init__(self, limit: int = 30, window: timedelta = timedelta(minutes=15)) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, deque[datetime]] = {}

    def _recent(self, address: str, now: datetime) -> deque[datetime]:
        q = self._failures.setdefault(address, deque())
        while q and now - q[0] > self.window:
            q.popleft()
        return q

    def blocked(self, address: str, now: datetime) -> bool:
        return len(self._recent(address, now)) >= self.limit

    def fail(self, address: str, now: datetime) -> None:
        self._recent(address, now).append(now)
        if len(self._failures) > 10_000:  # bound memory under a wide spray
            self._failures = {a: q for a, q in self._failures.items() if q}


throttle_key = web.AppKey("login_throttle", LoginThrottle)

"""The per-address throttle on failed logins and failed API tokens (in memory, per process).

Its own module so that the login pages and the token check in the middleware share it
without importing each other. Built on securemail.guesses: bounded (at most 10,000
addresses, the longest quiet first out), expiring, O(1) per attempt on the event loop, and
a refusal that grows while the guessing goes on but never outlasts ``max_delay``.
"""

from __future__ import annotations

from datetime import timedelta

from aiohttp import web

from securemail.guesses import Guesses


class LoginThrottle(Guesses):
    """``limit`` failed logins from one address within ``window`` refuse that address for
    ``window``, doubling per further round up to four hours.

    In memory, per process: a restart forgets it, which is acceptable because the per-account
    lock (in the database) is what protects each account."""

    def __init__(
        self,
        limit: int = 30,
        window: timedelta = timedelta(minutes=15),
        *,
        max_delay: timedelta = timedelta(hours=4),
        max_keys: int = 10_000,
    ) -> None:
        super().__init__(limit, window, base_delay=window, max_delay=max_delay, max_keys=max_keys)


class AccountSources(Guesses):
    """Which source failed for which account (key ``"{user_id}@{address}"``) lately.

    A locked account stays locked for the sources that failed for it, and only for them:
    whoever guesses from elsewhere cannot keep the person out, who logs in from their own
    address with password and code, which lifts the lock (no administrator needed). One
    failure marks a source for ``base_delay``, doubling per further one up to four hours."""

    def __init__(self, base_delay: timedelta = timedelta(minutes=15)) -> None:
        super().__init__(
            1, base_delay, base_delay=base_delay, max_delay=timedelta(hours=4), max_keys=10_000
        )

    @staticmethod
    def key(user_id: int | None, address: str) -> str:
        return f"{user_id}@{address}"


throttle_key = web.AppKey("login_throttle", LoginThrottle)
sources_key = web.AppKey("account_sources", AccountSources)

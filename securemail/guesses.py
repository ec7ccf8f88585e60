"""Guessing stopped: a bounded, expiring record of failed attempts per key (a source address,
a GP's signing key), with a delay that grows while the guessing goes on.

Owns ``Guesses``: after ``limit`` failures within ``window`` the key is refused for a
delay that doubles at each further round (``base_delay`` up to ``max_delay``), then forgets
it once quiet for ``max_delay``. In memory, per process.

Invariants: every operation is O(1) amortised, never O(keys) on the event loop; the table
holds at most ``max_keys`` keys (the least recently failed go first); a refusal never lasts
longer than ``max_delay`` after the last failure, so nobody can be kept out for good by
someone else's guesses.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta


@dataclass(slots=True)
class _Entry:
    failures: deque[datetime]
    rounds: int = 0
    until: datetime | None = None
    last: datetime | None = field(default=None)


class Guesses:
    """Failed attempts per key; ``blocked`` before checking a secret, ``fail`` after a wrong
    one, ``succeed`` after a right one."""

    def __init__(
        self,
        limit: int,
        window: timedelta,
        *,
        base_delay: timedelta,
        max_delay: timedelta,
        max_keys: int = 10_000,
    ) -> None:
        self.limit = limit
        self.window = window
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_keys = max_keys
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _current(self, key: str, now: datetime) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        quiet_since = entry.until or entry.last
        if quiet_since is not None and now - quiet_since > self.max_delay:
            del self._entries[key]  # quiet long enough: forgotten, rounds and all
            return None
        return entry

    def blocked_until(self, key: str, now: datetime) -> datetime | None:
        entry = self._current(key, now)
        if entry is None or entry.until is None or now >= entry.until:
            return None
        return entry.until

    def blocked(self, key: str, now: datetime) -> bool:
        return self.blocked_until(key, now) is not None

    def fail(self, key: str, now: datetime) -> None:
        entry = self._current(key, now)
        if entry is None:
            entry = _Entry(deque(maxlen=self.limit))
            self._entries[key] = entry
            if len(self._entries) > self.max_keys:
                self._entries.popitem(last=False)  # O(1): the longest quiet key goes
        else:
            self._entries.move_to_end(key)
        entry.last = now
        while entry.failures and now - entry.failures[0] > self.window:
            entry.failures.popleft()  # at most `limit` of them: O(limit)
        entry.failures.append(now)
        if len(entry.failures) >= self.limit:
            entry.rounds += 1
            delay = min(self.max_delay, self.base_delay * 2 ** min(entry.rounds - 1, 30))
            entry.until = now + delay
            entry.failures.clear()

    def succeed(self, key: str) -> None:
        self._entries.pop(key, None)

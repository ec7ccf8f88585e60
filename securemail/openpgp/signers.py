"""The signing homes: N gpg homedirs over one set of keys, each with its own gpg-agent.

gpg-agent derives a key from its passphrase (S2K) one request at a time, so one agent signs
no faster on sixteen cores than on one. The primary homedir plus ``signers - 1`` signer
homes (``<homedir>/s1``, ``s2``, ...) give N agents that derive side by side.

Invariants:
- a signer home holds no key material of its own: its ``pubring.kbx``,
  ``private-keys-v1.d``, ``gpg.conf`` and ``gpg-agent.conf`` are symbolic links to the
  primary homedir's. Every key change (creation, import, passphrase change, revocation,
  deletion) runs in the primary homedir and is seen by every signer home at its next gpg
  call: there is nothing to copy and so nothing to fall out of step. gpg replaces
  ``pubring.kbx`` by rename, which a link by name follows; gpg-agent reads a key file at
  every use (cache TTL 0), so it never signs with a passphrase that was changed;
- signer homes are used only to sign (and encrypt what was signed); nothing that writes keys
  runs in them, so the links are never replaced by a file of their own;
- the pool hands out homes fairly by owner (the signing key): waiting owners are served in
  turn, so one GP's batch takes one free home at a time and never queues another GP's send
  behind all of its own S2K derivations.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from pathlib import Path

#: What a signer home shares with the primary homedir (links by name).
SHARED = ("pubring.kbx", "private-keys-v1.d", "gpg.conf", "gpg-agent.conf")


def signer_home(homedir: Path, index: int) -> Path:
    """Signer home ``index`` (1..N-1) of ``homedir``; index 0 is the homedir itself."""
    return homedir if index == 0 else homedir / f"s{index}"


def ensure_signer_home(homedir: Path, index: int) -> Path:
    """Make (or repair) signer home ``index``: mode 0700, every SHARED name a link to the
    primary's. A name that is a file of its own (not a link) is replaced by the link."""
    home = signer_home(homedir, index)
    if index == 0:
        return home
    home.mkdir(mode=0o700, exist_ok=True)
    os.chmod(home, 0o700)
    for name in SHARED:
        link = home / name
        target = Path("..") / name  # relative: the home may be copied or moved whole
        if link.is_symlink() and os.readlink(link) == str(target):
            continue
        if link.is_dir() and not link.is_symlink():
            raise OSError(f"signer home {home} has a directory {name} of its own")
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    return home


def existing_signer_homes(homedir: Path) -> list[Path]:
    """The signer homes that exist under ``homedir`` (for stopping their agents)."""
    return sorted(p for p in homedir.glob("s[0-9]*") if p.is_dir() and p.name[1:].isdigit())


class SignerPool:
    """N signing homes handed out one caller at a time, in turn by owner (fair queueing)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a signer pool needs at least one home")
        self.size = size
        self._free: list[int] = list(range(size - 1, -1, -1))  # pop() gives home 0 first
        # owner -> its waiters; dict order is the turn order (served owner goes last)
        self._waiting: dict[str, deque[asyncio.Future[int]]] = {}

    async def acquire(self, owner: str) -> int:
        """A free home's index; waits its owner's turn when none is free."""
        if self._free and not self._waiting:
            return self._free.pop()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(owner, deque()).append(future)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(future.result())  # handed over just as we were cancelled
            else:
                queue = self._waiting.get(owner)
                if queue is not None and future in queue:
                    queue.remove(future)
                    if not queue:
                        del self._waiting[owner]
            raise

    def release(self, index: int) -> None:
        """Give home ``index`` to the next owner in turn, or back to the free list."""
        while self._waiting:
            owner = next(iter(self._waiting))
            queue = self._waiting.pop(owner)
            future = queue.popleft()
            if queue:
                self._waiting[owner] = queue  # its next waiter, after every other owner
            if not future.done():
                future.set_result(index)
                return
        self._free.append(index)

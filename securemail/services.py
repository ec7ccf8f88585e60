"""The long-lived services of one gateway home, built once and passed in (no singletons).

``securemail.home.open_services`` builds them; the rooms that need them take a Services.

Several processes may use one home at once (``serve`` and ``request send`` from a
practice system): they share its gpg-agent. Each open Services holds a shared lock on
the home's agent lock file; closing stops the agent only when no other process holds
it (an exclusive lock succeeds), so one process's exit never kills another's signing.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from securemail.config import Settings
from securemail.form import request as forms
from securemail.guesses import Guesses
from securemail.openpgp.keyring import Keyring
from securemail.openpgp.keystore import kill_agents
from securemail.store import Store

AGENT_LOCK = ".gpg-agent.lock"


def utcnow() -> datetime:
    return datetime.now(UTC)


def passphrase_guesses() -> Guesses:
    """Nine wrong signing passphrases within a minute and the tenth attempt is refused
    without asking gpg, for a minute, doubling per further round up to an hour."""
    return Guesses(
        9, timedelta(minutes=1), base_delay=timedelta(minutes=1), max_delay=timedelta(hours=1)
    )


@dataclass
class Services:
    settings: Settings
    store: Store
    keyring: Keyring
    definition: forms.FormDefinition
    clock: Callable[[], datetime] = field(default=utcnow)
    agent_lock: int | None = field(default=None, repr=False)  # fd holding a shared flock
    #: called after a commit that queued mail (the in-process delivery worker's wake)
    on_queued: Callable[[], None] | None = field(default=None, repr=False)
    #: wrong signing passphrases per GP key (securemail.exchange.send), in memory
    passphrase_guesses: Guesses = field(default_factory=lambda: passphrase_guesses(), repr=False)
    #: Every form of the home by form_id (the care request beside ``definition``, the
    #: execution request); empty means ``definition`` is the only one.
    definitions: Mapping[str, forms.FormDefinition] = field(default_factory=dict, repr=False)

    def definition_for(self, form_id: object) -> forms.FormDefinition | None:
        """The form a document or submission names (None: the execution request), or None
        when the home has no such form."""
        if form_id is None or form_id == self.definition.form_id:
            return self.definition
        return self.definitions.get(form_id) if isinstance(form_id, str) else None

    def queued(self) -> None:
        if self.on_queued is not None:
            self.on_queued()

    def now(self) -> datetime:
        return self.clock()

    def now_iso(self) -> str:
        return self.clock().isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def close(self) -> None:
        self.store.close()
        # The keyring's gpg-agent holds no passphrases (caching is off); it need not outlive
        # us, unless another process of this home still uses it.
        fd, self.agent_lock = self.agent_lock, None
        if fd is None:
            kill_agents(self.keyring.homedir, self.keyring.binary)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # from shared: are we the last?
        except BlockingIOError:
            return
        else:  # while we hold it exclusively, nobody starts using the agent
            kill_agents(self.keyring.homedir, self.keyring.binary)
        finally:
            os.close(fd)

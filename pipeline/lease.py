"""One driver per zoo: a lease with a heartbeat, kept in the zoo itself.

The lease file names its holder (host, pid, a random token) and the time of its last
heartbeat. A second driver is refused while the heartbeat is younger than the TTL, with
the holder and the age in the message; a lease whose heartbeat is older (its driver died)
is taken over. A driver that finds someone else's token at a heartbeat has lost the lease
and stops; results stay exactly-once regardless, as each is a create-only commit.
"""
from __future__ import annotations

import os
import socket
import time
import uuid

from pipeline.errors import ZooConflictError
from zoo_schema.store import ZooStore

LEASE_KEY = "journal/lease.json"


class Lease:
    def __init__(self, store: ZooStore, ttl: float = 60.0, log=print):
        self.store, self.ttl, self.log = store, ttl, log
        self.token = uuid.uuid4().hex
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self._last = 0.0

    def _payload(self) -> dict:
        return {"holder": self.holder, "token": self.token, "heartbeat": time.time(), "ttl": self.ttl}

    def _current(self) -> dict | None:
        try:
            return self.store.read_json(LEASE_KEY)
        except FileNotFoundError:
            return None

    def acquire(self) -> "Lease":
        current = self._current()
        if current is None:
            if not self.store.write_json(LEASE_KEY, self._payload(), create_only=True):
                current = self._current()  # another driver was faster
        if current is not None and current.get("token") != self.token:
            age = time.time() - float(current.get("heartbeat", 0))
            if age < float(current.get("ttl", self.ttl)):
                raise ZooConflictError(
                    f"the zoo at {self.store.uri} is being built by {current.get('holder')} (last "
                    f"heartbeat {age:.0f}s ago); one driver per zoo. Wait for that build to finish, or, "
                    f"if its driver is dead, run the command again after its lease goes stale "
                    f"(in {max(0.0, float(current.get('ttl', self.ttl)) - age):.0f}s)")
            self.log(f"taking over the stale lease of {current.get('holder')} (heartbeat {age:.0f}s ago)")
            self.store.write_json(LEASE_KEY, self._payload())
        self._verify()
        self._last = time.monotonic()
        return self

    def _verify(self) -> None:
        current = self._current()
        if current is None or current.get("token") != self.token:
            holder = current.get("holder") if current else "nobody"
            raise ZooConflictError(f"lost the lease on {self.store.uri} to {holder}; this driver stops. "
                                   "Run the command again once that build is done")

    def heartbeat(self, force: bool = False) -> None:
        """Renew the lease if a third of its TTL has passed (or when forced)."""
        if force or time.monotonic() - self._last >= self.ttl / 3:
            self._verify()
            self.store.write_json(LEASE_KEY, self._payload())
            self._last = time.monotonic()

    def release(self) -> None:
        current = self._current()
        if current is not None and current.get("token") == self.token:
            self.store.delete(LEASE_KEY)

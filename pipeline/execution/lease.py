"""One writer per zoo: a lease with a heartbeat, kept in the zoo itself.

Every command that writes to a zoo holds it while it writes: the build (and `resume`),
`tans datasets add`, `tans retrain`, `tans finetune` and `tans verify` (unless --dry-run). A
second such command is refused with the holder, what it runs and how to wait, or waits
with `--wait`. Commands that only read (`status`, `search`, `report`, `export`,
`pretrain-base`, `verify --dry-run`) take no lease.

`journal/lease.json` names its holder ("host:pid", plus the host, pid, process start time
and kernel boot + pid namespace of the driver), a random token, the TTL and the wall-clock
time of its last heartbeat. The driver renews it every TTL/3, never more than once a second
(the config asks for a TTL of at least 3 s). A driver that finds someone else's token at a
heartbeat has lost the lease and stops; results stay exactly-once regardless, as each is a
create-only commit.

A second driver is refused, with the holder and the heartbeat's age in the message, unless
the lease is stale. The failure modes, and how each is told:
- holder killed, same host: its pid is gone (or a zombie, or reused by a process with another
  start time), so its lease is taken over at once, however fresh its heartbeat; on another
  host (or in another pid namespace) a pid proves nothing and only the heartbeat counts;
- holder dead or hung anywhere: its heartbeat is older than the TTL, so its lease is taken
  over even if its process lives (a hung driver stops at its next heartbeat);
- clock skew: a heartbeat more than SKEW seconds ahead of our clock has no trustworthy age;
  such a lease is stale only if its token and heartbeat stay unchanged for one TTL on our
  monotonic clock, so `acquire` (and `tans lease break`) then waits up to one TTL;
- an empty or corrupt lease file is never taken over silently: it is a ZooConflictError
  that names the file and the fix, `tans lease break ZOO`;
- a lease a user knows is dead: `tans lease break ZOO` removes a stale, dead or corrupt one
  (a fresh one with --force); `tans lease show ZOO` tells holder, age, TTL and staleness.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import threading
import time
import uuid

from tans.zoo_schema import layout
from tans.zoo_schema.errors import ConfigError, ZooConflictError
from tans.zoo_schema.store import ZooStore

LEASE_KEY = layout.LEASE
SKEW = 5.0  # a heartbeat further ahead of our clock than this: the holder's clock is ahead
MIN_BEAT = 1.0  # seconds between two heartbeat writes, at least


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3 and on of /proc/PID/stat (Linux); None elsewhere or without such a process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _machine() -> str | None:
    """This kernel boot and pid namespace: a pid names one process only within them."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f"{f.read().strip()}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return None


def _valid(lease) -> bool:
    def number(x):
        return type(x) in (int, float) and math.isfinite(x)

    return (
        isinstance(lease, dict)
        and isinstance(lease.get("holder"), str)
        and isinstance(lease.get("token"), str)
        and number(lease.get("heartbeat"))
        and number(lease.get("ttl"))
        and lease["ttl"] > 0
        and (lease.get("pid") is None or type(lease["pid"]) is int and lease["pid"] > 0)
        and type(lease.get("started")) in (int, type(None))
    )


def read_lease(store: ZooStore) -> dict | None:
    """The zoo's lease, or None; an empty or corrupt lease file is a ZooConflictError."""
    try:
        raw = store.read_bytes(LEASE_KEY)
    except FileNotFoundError:
        return None
    try:
        lease = json.loads(raw)
    except ValueError:
        lease = None
    if not _valid(lease):
        raise ZooConflictError(
            f"the lease file {store.uri_of(LEASE_KEY)} is empty or corrupt ({raw[:40]!r}), so nobody can "
            f"tell whether a driver is building this zoo; if none is, remove it with "
            f"`tans lease break {store.uri}` and run the command again"
        )
    return lease


def _gone(lease: dict) -> str | None:
    """Why the holder is known to be dead; said only of a holder on this host, by its pid."""
    pid = lease.get("pid")
    if pid is None or (lease.get("host"), lease.get("machine")) != (socket.gethostname(), _machine()):
        return None
    dead = f"holder {lease['holder']} is no longer running on this host"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return dead
    except PermissionError:
        pass  # alive, another user's
    stat = _proc_stat(pid)
    if stat and stat[0] == "Z":
        return f"{dead} (a zombie)"
    if stat and lease.get("started") not in (None, int(stat[19])):  # field 22: start time
        return f"{dead} (pid {pid} now belongs to another process)"
    return None


def inspect(lease: dict) -> dict:
    """What can be told of a lease now: holder, age, TTL, whether it is stale (None when the
    holder's clock is ahead of ours: only `watch` can tell), and why."""
    age, ttl, gone = time.time() - lease["heartbeat"], lease["ttl"], _gone(lease)
    why = f"its clock is ~{-age:.0f}s ahead of ours" if age < -SKEW else f"last heartbeat {max(age, 0):.0f}s ago"
    stale = True if gone else None if age < -SKEW else age >= ttl
    return {
        "holder": lease["holder"],
        "command": lease.get("command", "tans build"),
        "age_s": round(age, 1),
        "ttl_s": ttl,
        "stale": stale,
        "why": f"{why}; {gone}" if gone else why,
    }


def watch(store: ZooStore, lease: dict, log=print) -> tuple[bool, str]:
    """(stale, why) of a lease whose heartbeat is ahead of our clock: stale if its token and
    heartbeat stay unchanged for one TTL on our monotonic clock; takes up to one TTL."""
    ttl, seen = lease["ttl"], (lease["token"], lease["heartbeat"])
    ahead = f"its clock is ~{lease['heartbeat'] - time.time():.0f}s ahead of ours"
    log(
        f"the lease of {lease['holder']} has a heartbeat in the future ({ahead}); "
        f"watching it for up to {ttl:.0f}s to tell whether its driver lives"
    )
    deadline = time.monotonic() + ttl
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, ttl / 4, 1.0))
        now = read_lease(store)
        if now is None:
            return True, f"{ahead}; released while we watched"
        if (now["token"], now["heartbeat"]) != seen:
            return False, f"{ahead}; its heartbeat changed while we watched"
    return True, f"{ahead}; its heartbeat did not change for {ttl:.0f}s"


def break_lease(store: ZooStore, force: bool = False, log=print) -> str:
    """Remove the zoo's lease if it is stale, dead or corrupt (any, with `force`); says what it did."""
    try:
        lease = read_lease(store)
    except ZooConflictError:
        store.delete(LEASE_KEY)
        return f"removed the corrupt lease file {store.uri_of(LEASE_KEY)}"
    if lease is None:
        return f"there is no lease on {store.uri}; nothing to break"
    info = inspect(lease)
    stale, why = watch(store, lease, log) if info["stale"] is None and not force else (info["stale"], info["why"])
    if not (stale or force):
        raise ZooConflictError(
            f"the lease of {lease['holder']} on {store.uri} is fresh ({why}; ttl {lease['ttl']:g}s), so its "
            "driver is presumably building; stop that build, or pass --force if you know its driver is dead"
        )
    store.delete(LEASE_KEY)
    return f"removed the {'stale lease' if stale else 'lease'} of {lease['holder']} ({why})" + (
        "" if stale else " by --force"
    )


WAIT_POLL_S = 2.0  # how often a waiting command (`--wait`) looks at the lease again


class Lease:
    """The zoo's one-writer lease, held by `command` (the build, `tans datasets add`, `tans
    retrain`, `tans finetune`, `tans verify`); see the module docstring."""

    def __init__(self, store: ZooStore, ttl: float = 60.0, log=print, command: str = "tans build"):
        if not 0 < ttl < math.inf:
            raise ConfigError(f"a lease's ttl must be a positive number of seconds, not {ttl!r}")
        self.store, self.ttl, self.log, self.command = store, float(ttl), log, command
        self.token = uuid.uuid4().hex
        pid, host = os.getpid(), socket.gethostname()
        self.holder = f"{host}:{pid}"
        stat = _proc_stat(pid)
        self._me = {
            "holder": self.holder,
            "host": host,
            "pid": pid,
            "machine": _machine(),
            "command": command,
            "started": int(stat[19]) if stat else None,
            "token": self.token,
            "ttl": self.ttl,
        }
        self._last = 0.0
        self._beating: threading.Event | None = None
        self._lock = threading.Lock()  # a background renewal never writes after `release`

    def _payload(self) -> dict:
        return {**self._me, "heartbeat": time.time()}

    def acquire(self, wait: bool = False) -> Lease:
        """Take the zoo's lease, or raise ZooConflictError naming its live holder and what it
        runs; with `wait`, wait until that holder releases it (or its lease goes stale) and
        say once whom we wait for. Waits up to one TTL when the holder's clock is ahead of
        ours (see the module docstring)."""
        waiting_for = None
        while True:
            try:
                self._take()
                break
            except _Held as held:
                if not wait:
                    raise ZooConflictError(str(held)) from None
                if held.who != waiting_for:
                    waiting_for = held.who
                    self.log(
                        f"waiting for {held.who} to release the zoo at {self.store.uri} "
                        f"(`tans lease show {self.store.uri}`)"
                    )
                time.sleep(WAIT_POLL_S)
        if waiting_for:
            self.log(f"the zoo at {self.store.uri} is ours now (waited for {waiting_for})")
        self._verify()
        self._last = time.monotonic()
        return self

    def _take(self) -> None:
        current = read_lease(self.store)
        if current is None and not self.store.write_json(LEASE_KEY, self._payload(), create_only=True):
            current = read_lease(self.store)  # another writer was faster
        if current is None or current["token"] == self.token:
            return
        info = inspect(current)
        stale, why = (info["stale"], info["why"]) if info["stale"] is not None else watch(self.store, current, self.log)
        if not stale:
            ttl, age = current["ttl"], info["age_s"]
            when = (
                f"in {max(0, ttl - age):.0f}s" if age >= -SKEW else f"once its heartbeat stays unchanged for {ttl:.0f}s"
            )
            command = current.get("command", "tans build")
            who = f"{current['holder']} (`{command}`)"
            raise _Held(
                who,
                (
                    f"the zoo at {self.store.uri} is held by {current['holder']} (`{command}`; "
                    f"{why}); one writer per zoo. Wait for it to finish (pass --wait to wait), or, if it is dead, "
                    f"run the command again after its lease goes stale ({when}) or remove the lease with "
                    f"`tans lease break {self.store.uri}`"
                ),
            )
        self.log(f"taking over the stale lease of {current['holder']} ({why})")
        self.store.write_json(LEASE_KEY, self._payload())

    def _verify(self) -> None:
        current = read_lease(self.store)
        if current is None or current["token"] != self.token:
            holder = current["holder"] if current else "nobody"
            raise ZooConflictError(
                f"lost the lease on {self.store.uri} to {holder}; `{self.command}` stops. "
                "Run the command again once that one is done"
            )

    def check(self) -> None:
        """Raise ZooConflictError unless we still hold the lease (call it before a commit)."""
        self._verify()

    def heartbeat(self, force: bool = False) -> None:
        """Renew the lease once a third of its TTL has passed (check it now when forced);
        never writes more often than once per MIN_BEAT seconds."""
        since = time.monotonic() - self._last
        if force or since >= max(self.ttl / 3, MIN_BEAT):
            self._verify()
            if since >= MIN_BEAT:
                self.store.write_json(LEASE_KEY, self._payload())
                self._last = time.monotonic()

    def release(self) -> None:
        if self._beating is not None:
            self._beating.set()
        with self._lock:
            current = read_lease(self.store)
            if current is not None and current["token"] == self.token:
                self.store.delete(LEASE_KEY)

    def beat_in_background(self) -> Lease:
        """Renew the lease from a daemon thread until `release` (for commands without a loop of
        their own). A lost lease stops the renewals; `check()` before a commit then raises."""
        self._beating = stop = threading.Event()

        def beat():
            while not stop.wait(max(self.ttl / 3, MIN_BEAT)):
                try:
                    with self._lock:
                        if not stop.is_set():
                            self.heartbeat(force=True)
                except Exception as e:  # noqa: BLE001 - lost or unreachable: check() tells the command
                    self.log(f"could not renew the lease on {self.store.uri}: {e}")
                    return

        threading.Thread(target=beat, daemon=True, name="tans-lease").start()
        return self


class _Held(Exception):
    """The lease is held by a live writer (internal: `acquire` turns it into ZooConflictError)."""

    def __init__(self, who: str, message: str):
        super().__init__(message)
        self.who = who


@contextlib.contextmanager
def holding(store: ZooStore, command: str, wait: bool = False, ttl: float = 60.0, log=print):
    """Hold the zoo's lease for a command that writes to the zoo, renewed in the background."""
    lease = Lease(store, ttl=ttl, log=log, command=command).acquire(wait).beat_in_background()
    try:
        yield lease
    finally:
        lease.release()

"""The zoo lease with real processes: a SIGKILLed holder, a live one, a reused pid, a clock
ahead of ours, a corrupt lease file, and `tans lease show/break`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import pytest

from tans.pipeline.cli import main
from tans.pipeline.execution.config import load_config
from tans.pipeline.execution.lease import LEASE_KEY, Lease
from tans.zoo_schema.errors import ConfigError, ZooConflictError
from tans.zoo_schema.store import open_store

HOLD = (
    "import sys, time; from tans.pipeline.execution.lease import Lease; from tans.zoo_schema.store import open_store; "
    "Lease(open_store(sys.argv[1]), ttl=60).acquire(); print('held', flush=True); time.sleep(60)"
)


@pytest.fixture
def zoo(tmp_path):
    return open_store(str(tmp_path / "zoo"))


@pytest.fixture
def holder(zoo):
    """A real driver process on this host holding the zoo's lease (60 s TTL)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, zoo.uri], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


def kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_live_holder_is_refused_and_killed_one_taken_over_at_once(zoo, holder):
    with pytest.raises(
        ZooConflictError,
        match=rf"held by .+:{holder.pid} \(`tans build`; last heartbeat \d+s ago\)"
        r".*tans lease break",
    ):
        Lease(zoo, ttl=60).acquire()
    kill(holder)
    messages, start = [], time.monotonic()
    lease = Lease(zoo, ttl=60, log=messages.append).acquire()
    assert time.monotonic() - start < 1.0
    assert f":{holder.pid} is no longer running on this host" in messages[0]
    assert zoo.read_json(LEASE_KEY)["token"] == lease.token
    lease.release()


def test_reused_pid_is_taken_over(zoo):
    """The recorded pid lives (it is ours) but started at another time: another process."""
    first = Lease(zoo, ttl=60).acquire()
    with pytest.raises(ZooConflictError, match="held by"):
        Lease(zoo, ttl=60).acquire()
    lease = zoo.read_json(LEASE_KEY)
    lease["started"] += 1
    zoo.write_json(LEASE_KEY, lease)
    messages = []
    Lease(zoo, ttl=60, log=messages.append).acquire().release()
    assert "no longer running on this host (pid" in messages[0] and "another process" in messages[0]
    with pytest.raises(ZooConflictError, match="lost the lease"):
        first.heartbeat(force=True)


def test_pid_of_another_host_proves_nothing(zoo, holder):
    """A lease from elsewhere with a pid that is dead here is judged by its heartbeat alone."""
    kill(holder)
    lease = zoo.read_json(LEASE_KEY)
    zoo.write_json(LEASE_KEY, {**lease, "host": "elsewhere", "holder": f"elsewhere:{holder.pid}"})
    with pytest.raises(ZooConflictError, match=r"held by elsewhere:\d+ \(`tans build`; last heartbeat"):
        Lease(zoo, ttl=60).acquire()


@pytest.mark.parametrize("seconds", [0, -5, 2.5])
def test_lease_seconds_must_be_at_least_3(zoo, seconds):
    with pytest.raises(ConfigError, match=r"lease_seconds must be at least 3 \(seconds\)"):
        load_config(None, {"lease_seconds": seconds})
    if seconds <= 0:
        with pytest.raises(ConfigError, match="positive number of seconds"):
            Lease(zoo, ttl=seconds)


def test_heartbeats_write_at_most_once_a_second(zoo):
    lease = Lease(zoo, ttl=0.01).acquire()
    writes = []
    write = zoo.write_bytes
    zoo.write_bytes = lambda *a, **kw: writes.append(a[0]) or write(*a, **kw)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        lease.heartbeat()
        lease.heartbeat(force=True)
    assert 1 <= len(writes) <= 2
    lease.release()


def ahead(zoo, ttl):
    """A lease from another host whose clock is an hour ahead of ours."""
    Lease(zoo, ttl=ttl).acquire()
    lease = zoo.read_json(LEASE_KEY)
    lease.update(host="elsewhere", holder="elsewhere:1", heartbeat=time.time() + 3600)
    zoo.write_json(LEASE_KEY, lease)
    return lease


def test_future_heartbeat_unchanged_for_a_ttl_is_taken_over(zoo, capsys):
    ahead(zoo, ttl=1)
    assert main(["lease", "show", zoo.uri]) == 0
    shown = capsys.readouterr().out
    assert "its clock is ~3600s ahead of ours" in shown and "-3600" not in shown
    messages, start = [], time.monotonic()
    Lease(zoo, ttl=60, log=messages.append).acquire().release()
    assert 1.0 <= time.monotonic() - start < 3.0
    assert "watching it for up to 1s" in messages[0]
    assert "taking over the stale lease of elsewhere:1" in messages[1]
    assert "its clock is ~3600s ahead of ours; its heartbeat did not change for 1s" in messages[1]


def test_future_heartbeat_that_keeps_changing_is_refused(zoo):
    lease, stop = ahead(zoo, ttl=2), threading.Event()

    def beat():
        while not stop.wait(0.2):
            zoo.write_json(LEASE_KEY, {**lease, "heartbeat": time.time() + 3600})

    thread = threading.Thread(target=beat)
    thread.start()
    try:
        with pytest.raises(
            ZooConflictError,
            match=r"elsewhere:1 \(`tans build`; its clock is ~3600s ahead of ours; its "
            r"heartbeat changed while we watched\)",
        ):
            Lease(zoo, ttl=60, log=lambda m: None).acquire()
    finally:
        stop.set()
        thread.join()


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"holder": 1}', b"[]"])
def test_corrupt_lease_file_is_a_clear_error(zoo, content, capsys):
    zoo.write_bytes(LEASE_KEY, content)
    with pytest.raises(
        ZooConflictError,
        match=r"lease file .+journal/lease.json is empty or corrupt.*"
        rf"`tans lease break {zoo.uri}`",
    ):
        Lease(zoo, ttl=60).acquire()
    assert zoo.read_bytes(LEASE_KEY) == content  # not taken over
    assert main(["lease", "show", zoo.uri]) == 3
    assert main(["lease", "break", zoo.uri]) == 0
    assert "removed the corrupt lease file" in capsys.readouterr().out
    assert not zoo.exists(LEASE_KEY)


def test_lease_break_and_show(zoo, holder, capsys):
    assert main(["lease", "show", zoo.uri, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["holder"].endswith(f":{holder.pid}") and shown["stale"] is False and shown["ttl_s"] == 60
    assert main(["lease", "break", zoo.uri]) == 3
    err = capsys.readouterr().err
    assert f":{holder.pid} on {zoo.uri} is fresh (last heartbeat" in err and "--force" in err
    assert zoo.exists(LEASE_KEY)
    assert main(["lease", "break", zoo.uri, "--force"]) == 0
    assert f"removed the lease of {shown['holder']}" in capsys.readouterr().out and not zoo.exists(LEASE_KEY)

    Lease(zoo, ttl=60).acquire()
    lease = zoo.read_json(LEASE_KEY)
    zoo.write_json(LEASE_KEY, {**lease, "pid": holder.pid, "holder": shown["holder"]})
    kill(holder)
    assert main(["lease", "show", zoo.uri]) == 0
    assert "no longer running on this host" in capsys.readouterr().out
    assert main(["lease", "break", zoo.uri]) == 0
    out = capsys.readouterr().out
    assert f"removed the stale lease of {shown['holder']}" in out and "no longer running" in out
    assert not zoo.exists(LEASE_KEY)
    # this store only ever held a lease: without it, it is no zoo at all
    assert main(["lease", "break", zoo.uri]) == 3
    assert "there is no zoo at" in capsys.readouterr().err
    zoo.write_bytes("datasets/d.parquet", b"")  # a zoo that holds a dataset, and no lease
    assert main(["lease", "break", zoo.uri]) == 0
    assert "there is no lease" in capsys.readouterr().out


def test_lease_commands_on_a_mistyped_path_say_there_is_no_zoo(tmp_path, capsys):
    for command in ("show", "break"):
        assert main(["lease", command, str(tmp_path / "no-such-zoo")]) == 3
        assert "there is no zoo at" in capsys.readouterr().err
    assert not (tmp_path / "no-such-zoo").exists()

"""Live progress: a bar cut to the terminal's width on a terminal (checked on a real
pseudo-terminal through a small terminal emulator), plain log lines elsewhere; submit's config
checks and ids."""

from __future__ import annotations

import dataclasses
import fcntl
import inspect
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import textwrap
import threading
from pathlib import Path

import pytest

from tans.pipeline.execution.config import load_config
from tans.pipeline.execution.progress import Progress, Status
from tans.zoo_schema.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
ESCAPE = re.compile(r"\x1b\[(\d*)([A-Za-z])")


class Screen:
    """What a terminal `width` columns wide shows for some output: printable characters,
    \\r, \\n, ESC[K / ESC[2K (erase) and ESC[nA (up), with the deferred auto-wrap of xterm.
    `wraps` counts lines the terminal had to wrap; any other escape is an error."""

    def __init__(self, width: int):
        self.width, self.rows, self.row, self.col, self.wraps = width, [[]], 0, 0, 0
        self.wrapped: set[int] = set()  # the rows a wrapped line goes on to

    def feed(self, text: str) -> Screen:
        i = 0
        while i < len(text):
            ch = text[i]
            if ch == "\x1b":
                m = ESCAPE.match(text, i)
                assert m and m[2] in "KA", f"unexpected escape {text[i : i + 8]!r}"
                if m[2] == "K":
                    line = self.rows[self.row]
                    del line[0 if m[1] == "2" else min(self.col, self.width) :]
                else:
                    self.row = max(0, self.row - int(m[1] or 1))
                i = m.end()
                continue
            if ch == "\r":
                self.col = 0
            elif ch == "\n":
                self._down()
            else:
                assert ch.isprintable(), f"unexpected control {ch!r}"
                if self.col >= self.width:  # the cursor sat past the last column: wrap
                    self.wraps += 1
                    self._down()
                    self.wrapped.add(self.row)
                    self.col = 0
                line = self.rows[self.row]
                line.extend(" " * (self.col - len(line)))
                line[self.col : self.col + 1] = [ch]
                self.col += 1
            i += 1
        return self

    def resize(self, width: int) -> Screen:
        """Narrowed as xterm does it: the rows are cut, nothing reflows."""
        self.width, self.col = width, min(self.col, width)
        self.rows = [row[:width] for row in self.rows]
        return self

    def _down(self):
        self.row += 1
        if self.row == len(self.rows):
            self.rows.append([])

    def lines(self) -> list[str]:
        """The rows, with the lines the terminal wrapped joined back."""
        joined = []
        for i, row in enumerate(self.rows):
            text = "".join(row)
            if i in self.wrapped:
                joined[-1] += text
            else:
                joined.append(text)
        return [line.rstrip() for line in joined]


def renders(output: str) -> list[str]:
    """Every status drawn: the text after each line erase, up to the next \\r or \\n."""
    return [re.split(r"[\r\n]", part)[0] for part in output.split("\x1b[K")[1:]]


def open_pty(columns: int, rows: int = 40) -> tuple[int, int]:
    master, slave = pty.openpty()
    set_width(slave, columns, rows)
    return master, slave


def set_width(fd: int, columns: int, rows: int = 40) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


class PtyReader(threading.Thread):
    """Drains the master side (a pty's buffer is small: a writer would block)."""

    def __init__(self, master: int):
        super().__init__(daemon=True)
        self.master, self.chunks = master, []
        self.start()

    def run(self):
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the slave side is closed
                return
            if not data:
                return
            self.chunks.append(data)

    def text(self) -> str:
        self.join(10)
        return b"".join(self.chunks).decode()


def status(i: int, total: int = 40) -> Status:
    """A status like the driver's (its figures 76-86 characters)."""
    figures = (f"in the zoo ({i} this run)", f"{i % 5} in flight", f"{i // 7} failed")
    return Status(i, total, (figures, (f"mean HV {i / total:.3f} eta {(total - i) * 0.7:.1f} min",)))


def result(i: int, total: int = 40) -> str:
    return (
        f"[{i}/{total}] cifar10 ofa-arch-{i:04d} acc=0.912 params=5.12M flops=230.4M "
        f"latency=12.3ms (41.0s train) | {i % 5} in flight, {i // 7} failed, mean HV 0.400"
    )


def drive(progress: Progress, n: int = 20, total: int = 40) -> list[str]:
    logs = []
    for i in range(1, n + 1):
        progress.update(status(i - 1, total))
        logs.append(result(i, total) if i % 3 else f"attempt 1 of d{i} a{i} failed (OOM); retrying")
        progress.log(logs[-1])
        progress.update(status(i, total))
    return logs


@pytest.fixture
def xterm(monkeypatch):
    monkeypatch.setenv("TERM", "xterm-256color")


def run_on_pty(columns: int, body) -> tuple[str, list[str]]:
    """Runs `body(progress)` against a pty `columns` wide; returns its output and the logs."""
    master, slave = open_pty(columns)
    reader = PtyReader(master)
    stream = os.fdopen(slave, "w", encoding="utf-8", closefd=False)
    try:
        progress = Progress(stream)
        assert progress.live and progress.columns() == columns
        try:
            logs = body(progress)
        finally:
            progress.close()
    finally:
        stream.close()
        os.close(slave)
    out = reader.text()
    os.close(master)
    return out, logs


LAST = {
    80: "jobs 20/40 |████▌    | in the zoo (20 this run), … | mean HV 0.500 eta 14.0 min",
    60: "jobs 20/40 |████████▌        | … mean HV 0.500 eta 14.0 min",
    40: "jobs 20/40 |████    | in the zoo (20 t…",
}  # not even "… <the last figure>" fits


@pytest.mark.parametrize("columns", [80, 60, 40])
def test_the_bar_fits_the_terminal_and_log_lines_go_above_it(xterm, columns):
    out, logs = run_on_pty(columns, drive)
    drawn = [d for d in renders(out) if d]  # ("" is the bar cleared for a log line)
    assert len(drawn) == 2 * 20 + 20 + 1  # each update, each redraw under a log line, the close
    # every status drawn fits in the terminal with a column to spare, and shows a bar
    assert max(len(d) for d in drawn) <= columns - 1
    assert all(re.match(r"jobs \d+/40 \|[█▏▎▍▌▋▊▉ ]+\| ", d) for d in drawn), drawn
    screen = Screen(columns).feed(out)
    # the terminal shows each log line whole (the long ones wrapped by the terminal, as any
    # log line), and under them one status line, the last: not a pile of old ones
    assert screen.lines() == logs + [LAST[columns], ""]
    assert screen.wraps == sum((len(line) - 1) // columns for line in logs)


def test_a_wide_terminal_shows_the_whole_status_after_the_bar(xterm):
    out, _ = run_on_pty(160, drive)
    bar = "█" * 15 + " " * 15
    assert Screen(160).feed(out).lines()[-2] == f"jobs 20/40 |{bar}| " + status(20).figures()


def test_the_bar_follows_a_resized_terminal(xterm):
    def body(progress):
        logs = drive(progress, 5)
        set_width(progress.stream.fileno(), 50)
        progress.log("RESIZED")
        return logs + ["RESIZED"] + drive(progress, 5)

    out, logs = run_on_pty(100, body)
    before, after = out.split("RESIZED")
    assert max(map(len, renders(before))) == 99  # the whole status, the bar filling the rest
    assert max(map(len, renders(after))) <= 49 and len(renders(after)) > 10
    # the window narrowed (to be seen on a terminal that cuts its rows; one that reflows them
    # keeps the first half of the bar drawn last before: a redraw cannot know of it)
    screen = Screen(100).feed(before).resize(50).feed("RESIZED" + after)
    assert screen.lines()[-8:] == logs[-6:] + ["jobs 5/40 |█       | … mean HV 0.125 eta 24.5 min", ""]


def test_a_status_past_its_budget_or_without_one_and_a_plain_line_are_cut(xterm):
    def body(progress):
        progress.update("starting the cluster and reading the zoo " * 4)
        progress.update(Status(50, 40, (("no counts here", "3 in flight"),), desc=""))  # a zoo past its budget
        progress.update(dataclasses.replace(status(3), done=5, total=10))
        progress.update(
            Status(0, 0, (("in the zoo (0 this run)", "0 in flight", "0 failed"), ("mean HV 0.000 eta -",)))
        )
        return []

    out, _ = run_on_pty(60, body)
    drawn = renders(out)
    assert drawn[0] == "starting the cluster and reading the zoo starting the clus…"
    assert drawn[1] == "50/40 |" + "█" * 23 + "| no counts here, 3 in flight"
    assert drawn[2] == "jobs 5/10 |█████████         | … mean HV 0.075 eta 25.9 min"
    assert drawn[3] == "jobs 0/0 in the zoo (0 this run), 0 in flight, 0 failed |…"  # no budget, no bar
    assert all(len(d) <= 59 for d in drawn)


SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {root!r})
    from tans.pipeline.execution import signals
    from tans.pipeline.execution.progress import Progress, Status
    {helpers}
    signals.install()  # as `tans` does: SIGTERM raises Interrupted
    progress = Progress()  # on sys.stdout, as `tans build` makes it
    try:
        for i in range(1, 6):
            progress.update(status(i - 1))
            progress.log(result(i))
            progress.update(status(i))
            if i == 3 and {stop!r} == "SIGTERM":
                os.kill(os.getpid(), signal.SIGTERM)
        if {stop!r} == "KeyboardInterrupt":
            raise KeyboardInterrupt
    finally:
        progress.close()
    print("done")
""")


def run_script(stdout, stop=None, **kw):
    helpers = "\n".join(inspect.getsource(f) for f in (status, result))  # (this module is slow to import)
    code = SCRIPT.format(root=str(ROOT), stop=stop, helpers=helpers)
    env = {**os.environ, "TERM": "xterm-256color", "PYTHONIOENCODING": "utf-8"}
    env.pop("COLUMNS", None)
    return subprocess.run(
        [sys.executable, "-c", code], stdout=stdout, stderr=subprocess.STDOUT, env=env, timeout=60, **kw
    )


@pytest.mark.parametrize("stop", [None, "KeyboardInterrupt", "SIGTERM"])
def test_a_process_on_a_terminal_closes_its_bar_even_when_stopped(stop):
    master, slave = open_pty(80)
    reader = PtyReader(master)
    proc = run_script(slave, stop)
    os.close(slave)
    out = reader.text()
    os.close(master)
    assert (proc.returncode == 0) == (stop is None)
    n = 3 if stop == "SIGTERM" else 5
    lines = Screen(80).feed(out).lines()
    # the results, then the last status on its own line, then what came after it
    assert lines[:n] == [result(i) for i in range(1, n + 1)]
    assert lines[n].startswith(f"jobs {n}/40 |") and lines[n].endswith(f"eta {(40 - n) * 0.7:.1f} min")
    after = lines[n + 1 :]
    if stop is None:
        assert after == ["done", ""]
    else:
        assert after[0] == "Traceback (most recent call last):"
        assert after[-2] == (
            "KeyboardInterrupt"
            if stop == "KeyboardInterrupt"
            else "tans.zoo_schema.errors.Interrupted: stopped by SIGTERM"
        )
    assert max(len(d) for d in renders(out)) <= 79


def test_a_process_writing_to_a_pipe_prints_plain_lines():
    proc = run_script(subprocess.PIPE)
    assert proc.returncode == 0
    assert proc.stdout.decode() == "".join(result(i) + "\n" for i in range(1, 6)) + "done\n"


def test_progress_is_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    p = Progress(out)
    assert not p.live
    p.update(Status(1, 4))
    p.log("[1/4] a result")
    p.update(Status(2, 4))
    p.close()
    assert out.getvalue() == "[1/4] a result\n"


def test_a_dumb_terminal_gets_plain_lines(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setenv("TERM", "dumb")
    assert not Progress(Terminal()).live
    monkeypatch.setenv("TERM", "xterm")
    assert Progress(Terminal()).live


def test_progress_redraws_one_status_line_on_a_terminal(monkeypatch):
    class Terminal(io.StringIO):  # no encoding: an ASCII bar
        def isatty(self):
            return True

    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("COLUMNS", "40")  # a stream without a terminal of its own
    out = Terminal()
    with Progress(out) as p:
        p.update(Status(1, 4))
        p.log("[1/4] a result")
        p.update(Status(2, 4))
    p.close()  # twice is harmless
    # the status is drawn, erased for the log line and drawn again under it, redrawn, left
    bar1, bar2 = "|" + "#" * 7 + " " * 21 + "|", "|" + "#" * 14 + " " * 14 + "|"
    assert out.getvalue() == (
        f"\r\x1b[Kjobs 1/4 {bar1}\r\x1b[K\r[1/4] a result\n"
        f"\r\x1b[Kjobs 1/4 {bar1}\r\x1b[Kjobs 2/4 {bar2}"
        f"\r\x1b[Kjobs 2/4 {bar2}\n"
    )


def test_submitted_config_needs_shared_locations_and_gets_a_stable_id(tmp_path, monkeypatch):
    from tans.pipeline.commands.submit import cluster_config, submission_base

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match="relative path"):
        cluster_config(load_config(None, {"zoo": "./zoo", "mlflow.tracking_uri": "http://m:5000"}))
    with pytest.raises(ConfigError, match="mlflow.tracking_uri is not set"):
        cluster_config(load_config(None, {"zoo": "s3://b/zoo"}))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    config = cluster_config(load_config(None, {"zoo": "s3://b/my_zoo", "datasets": ["s3://b/data"]}))
    assert config.address == "auto" and config.mlflow.tracking_uri == "http://mlflow:5000"
    sid = submission_base(config)
    assert sid.startswith("tans-my-zoo-") and sid == submission_base(config)
    other = cluster_config(load_config(None, {"zoo": "s3://b/my_zoo", "max_jobs": 7}))
    assert submission_base(other) != sid


def test_zoo_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TANS_ZOO", "s3://bucket/zoo")
    assert load_config(None).zoo == "s3://bucket/zoo"
    cfg = tmp_path / "b.toml"
    cfg.write_text('zoo = "/data/zoo"\n')
    assert load_config(str(cfg)).zoo == "s3://bucket/zoo"  # the environment beats the file ...
    assert load_config(str(cfg), {"zoo": "/flag/zoo"}).zoo == "/flag/zoo"  # ... and a flag beats both
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    config = load_config(str(cfg))
    assert config.address == "head:6379" and config.mlflow.tracking_uri == "http://127.0.0.1:5000"
    assert load_config(str(cfg), environ={}).zoo == "/data/zoo"  # a resolved config (`tans submit`)

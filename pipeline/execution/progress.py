"""Live build progress.

On a terminal: a progress bar of the job budget (jobs in the zoo of `max_jobs`) followed by
the status line's other figures, redrawn in place on the last line, log lines printed above
it. The status always fits the terminal's width (read again at every redraw, so a resized
window is followed at the next update): it never wraps, so old status lines never pile up.
Where the figures do not all fit, whole ones are dropped from the middle ("…"), keeping the
first ones and the last (mean HV and eta); tqdm draws the bar and keeps log lines above it.

On anything else (a file, a pipe, a Ray Job's log, TERM=dumb) every line is a plain log line
and the status is not printed: the progress figures ride on each result's line.
"""

from __future__ import annotations

import os
import re
import shutil
import sys

from tqdm import tqdm
from tqdm.utils import _supports_unicode, disp_len, disp_trim

MIN_BAR, MAX_BAR = 8, 30  # the bar's width in columns (between its two edges)
ERASE_LINE = "\r\x1b[K"  # back to the line's start, erase to its end

# "jobs: 12/40 in the zoo (3 this run), ..." -> "jobs", 12 of 40, "in the zoo (3 this run), ..."
_SEPARATORS = re.compile(r"(, | \| )")  # between the figures after the bar
_HEAD = re.compile(r"\s*(?:(?P<desc>[^:|/]*?):\s*)?(?P<done>\d+)/(?P<total>\d+)(?P<rest>.*)\Z", re.S)


class _Bar(tqdm):
    """tqdm's bar, redrawn only when told to (no monitor thread), erasing the line with an
    ANSI erase instead of tqdm's space padding (which wraps once the window has narrowed)."""

    monitor_interval = 0

    @staticmethod
    def status_printer(file):
        def print_status(s):
            file.write(ERASE_LINE + s)
            file.flush()

        return print_status


def is_terminal(stream) -> bool:
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    return bool(tty) and os.environ.get("TERM") != "dumb"


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


class Progress:
    """`update(line)` sets the status; `log(line)` prints a log line (above the bar on a
    terminal); `close()` leaves the last status on its own line. Also a context manager."""

    def __init__(self, stream=None, live: bool | None = None):
        self.stream = stream if stream is not None else sys.stdout
        self.live = is_terminal(self.stream) if live is None else live
        self._ellipsis = "…" if _supports_unicode(self.stream) else "..."
        self._bar: _Bar | None = None
        self._line = ""
        self._done: int | None = None
        self._total: int | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def columns(self) -> int:
        """The terminal's width now (the stream's own terminal, else $COLUMNS or 80)."""
        try:
            cols = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, ValueError, OSError):  # no fd (io.UnsupportedOperation is an OSError)
            cols = 0
        return cols or shutil.get_terminal_size().columns or 80

    def log(self, line: str) -> None:
        """A log line, printed whole; on a terminal it goes above the bar."""
        if self._bar is not None:
            self._fit()
            self._bar.write(line, file=self.stream)  # clears the bar, writes, redraws it
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def update(self, line: str, done: int | None = None, total: int | None = None) -> None:
        """The current status: `done` of `total` jobs and the other figures. Without them
        they are read from the line's head ("jobs: 12/40 ..."); a line without counts is
        shown as it is. Redrawn on a terminal, nothing elsewhere."""
        if not self.live:
            return
        self._line, self._done, self._total = line, done, total
        if self._bar is None:
            width = self.width()
            done, total = self._counts()
            self._bar = _Bar(
                file=self.stream,
                bar_format=self._format(width),
                total=total,
                initial=done,
                leave=True,
                dynamic_ncols=False,
                ncols=width,
                mininterval=0,
                miniters=0,
                disable=False,
            )  # drawn here
        else:
            self._fit()
            self._bar.refresh()

    def close(self) -> None:
        """The last status stays on its own line and the cursor goes to the next one; safe to
        call twice, and after an exception or an interrupt."""
        bar, self._bar = self._bar, None
        self._line = ""
        if bar is None:
            return
        try:
            bar.ncols = self.width()
            bar.close()
        finally:
            try:
                self.stream.flush()
            except (OSError, ValueError):
                pass

    # layout

    def width(self) -> int:
        """Columns the status may use: one less than the terminal's, so that the cursor never
        sits past the last column (where some terminals wrap at once)."""
        return max(self.columns() - 1, 1)

    def _fit(self) -> None:
        """Lay the bar out for the terminal's width now."""
        bar = self._bar
        bar.ncols = self.width()  # tqdm cuts to this too, as a safety net
        bar.bar_format = self._format(bar.ncols)
        bar.n, bar.total = self._counts()

    def _parts(self) -> tuple[str, int, int, str] | None:
        """(desc, done, total, the other figures) of the status, or None without counts."""
        line = " ".join(self._line.split())
        m = _HEAD.match(line)
        desc, rest = (m["desc"] or "", m["rest"]) if m else ("", line)
        if self._total is not None:
            return desc, self._done or 0, self._total, rest
        return (desc, int(m["done"]), int(m["total"]), rest) if m else None

    def _counts(self) -> tuple[int, int]:
        """What fills the bar: done of total, kept within tqdm's range."""
        parts = self._parts()
        total = max(parts[2], 1) if parts else 1
        return (max(0, min(parts[1], total)) if parts else 0), total

    def _format(self, width: int) -> str:
        """The bar_format: the head ("jobs 12/40"), the bar, then the other figures, cut with
        an ellipsis when they do not fit beside a bar of MIN_BAR columns."""
        parts = self._parts()
        if parts is None:
            return _escape(self._cut(" ".join(self._line.split()), width))
        desc, done, total, rest = parts
        head = f"{desc.strip()} {done}/{total} ".lstrip()
        rest = rest.strip()
        room = width - disp_len(head) - 2  # for the bar and the text after it
        if total <= 0 or room < 3:  # no budget, or a terminal too narrow for a bar
            return _escape(self._cut(f"{head}{rest}", width))
        bar = room - (1 + disp_len(rest) if rest else 0)
        if bar >= MIN_BAR:
            bar = min(bar, MAX_BAR)
        else:
            rest = self._figures(rest, room - min(MIN_BAR, room) - 1)
            bar = min(MAX_BAR, room - (1 + disp_len(rest) if rest else 0))  # what is left
        return _escape(head) + f"|{{bar:{bar}}}|" + (" " + _escape(rest) if rest else "")

    def _figures(self, text: str, width: int) -> str:
        """The figures ("a, b, c | d") in `width` columns: whole ones dropped from the middle
        (marked with an ellipsis), keeping the first ones that fit and the last one (the eta);
        cut at the end if even that does not fit."""
        if disp_len(text) <= width:
            return text
        parts = _SEPARATORS.split(text)  # figure, separator, figure, ..., figure
        if len(parts) >= 3:
            tail = self._ellipsis + "".join(parts[-2:])  # "… | mean HV 0.500 eta 14.0 min"
            kept = ""
            for i in range(0, len(parts) - 2, 2):
                if disp_len(kept + parts[i] + parts[i + 1] + tail) > width:
                    break
                kept += parts[i] + parts[i + 1]
            if kept:
                return kept + tail
            if disp_len(last := f"{self._ellipsis} {parts[-1]}") <= width:
                return last
        return self._cut(text, width)

    def _cut(self, text: str, width: int) -> str:
        if disp_len(text) <= width:
            return text
        if width <= len(self._ellipsis):
            return ""
        return disp_trim(text, width - len(self._ellipsis)).rstrip() + self._ellipsis

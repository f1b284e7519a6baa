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
import shutil
import sys
from dataclasses import dataclass

from tqdm import tqdm
from tqdm.utils import _supports_unicode, disp_len, disp_trim

MIN_BAR, MAX_BAR = 8, 30  # the bar's width in columns (between its two edges)
ERASE_LINE = "\r\x1b[K"  # back to the line's start, erase to its end


@dataclass(frozen=True)
class Status:
    """What the status line shows: `done` of `total` jobs (the bar) after `desc`, then the
    other figures in groups (figures within a group are joined by ", ", groups by " | ").
    Where they do not fit, whole figures are dropped from the middle; the last one stays."""

    done: int
    total: int
    groups: tuple[tuple[str, ...], ...] = ()
    desc: str = "jobs"

    def pieces(self) -> list[str]:
        """[figure, separator, figure, ..., figure]."""
        out: list[str] = []
        for group in (g for g in self.groups if g):
            for f, figure in enumerate(group):
                if out:
                    out.append(", " if f else " | ")
                out.append(figure)
        return out

    def figures(self) -> str:
        return "".join(self.pieces())


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
        self._status: Status | str = ""

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

    def update(self, status: Status | str) -> None:
        """The current status: a `Status` (a bar and its figures), or a plain line shown as it
        is. Redrawn on a terminal, nothing elsewhere."""
        if not self.live:
            return
        self._status = status
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
        self._status = ""
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

    def _counts(self) -> tuple[int, int]:
        """What fills the bar: done of total, kept within tqdm's range."""
        s = self._status
        if not isinstance(s, Status):
            return 0, 1
        total = max(s.total, 1)
        return max(0, min(s.done, total)), total

    def _format(self, width: int) -> str:
        """The bar_format: the head ("jobs 12/40"), the bar, then the other figures, cut with
        an ellipsis when they do not fit beside a bar of MIN_BAR columns."""
        s = self._status
        if not isinstance(s, Status):
            return _escape(self._cut(" ".join(str(s).split()), width))
        head = f"{s.desc} {s.done}/{s.total} ".lstrip()
        rest = s.figures()
        room = width - disp_len(head) - 2  # for the bar and the text after it
        if s.total <= 0 or room < 3:  # no budget, or a terminal too narrow for a bar
            return _escape(self._cut(f"{head}{rest}", width))
        bar = room - (1 + disp_len(rest) if rest else 0)
        if bar >= MIN_BAR:
            bar = min(bar, MAX_BAR)
        else:
            rest = self._figures(s.pieces(), room - min(MIN_BAR, room) - 1)
            bar = min(MAX_BAR, room - (1 + disp_len(rest) if rest else 0))  # what is left
        return _escape(head) + f"|{{bar:{bar}}}|" + (" " + _escape(rest) if rest else "")

    def _figures(self, parts: list[str], width: int) -> str:
        """The figures ([figure, separator, ..., figure]) in `width` columns: whole ones dropped
        from the middle (marked with an ellipsis), keeping the first ones that fit and the last
        one (the eta); cut at the end if even that does not fit."""
        text = "".join(parts)
        if disp_len(text) <= width:
            return text
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

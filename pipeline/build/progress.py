"""Live build progress: one status line redrawn in place under the log on a terminal;
on anything else (a file, a pipe, a Ray Job's log) every line is a plain log line, and the
progress figures ride on each result's line."""
from __future__ import annotations

import sys

CLEAR = "\r\x1b[2K"


class Progress:
    def __init__(self, stream=None, live: bool | None = None):
        self.stream = stream if stream is not None else sys.stdout
        self.live = bool(self.stream.isatty()) if live is None else live
        self._line = ""

    def log(self, line: str) -> None:
        """A log line; on a terminal it goes above the status line."""
        if self.live and self._line:
            self.stream.write(CLEAR)
        self.stream.write(line + "\n")
        if self.live and self._line:
            self.stream.write(self._line)
        self.stream.flush()

    def update(self, line: str) -> None:
        """The current status (redrawn on a terminal, nothing elsewhere)."""
        if self.live:
            self._line = line
            self.stream.write(CLEAR + line)
            self.stream.flush()

    def close(self) -> None:
        if self.live and self._line:
            self.stream.write("\n")
            self.stream.flush()
        self._line = ""

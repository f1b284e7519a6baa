"""Decoding for ingestion: what the zoo stores for each source image, the processes that
decode a source on all cores, and the spool that holds what they produce until it is written."""

from __future__ import annotations

import errno
import hashlib
import io
import multiprocessing
import os
import uuid
import warnings
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from tans.pipeline.datasets.settings import IngestSettings
from tans.pipeline.datasets.sources import Source
from tans.zoo_schema.errors import DatasetError, StorageError


class ImageTooLarge(ValueError):
    """An image refused before decoding because of its pixel count; the message is the reason."""


def _open_limited(raw: bytes, max_pixels: int):
    """The image opened lazily, its size checked before anything is decoded.

    A few hundred KB of PNG can decode to gigabytes (a decompression bomb). The limit counts
    the size a JPEG decodes at (callers set its reduced scale with `draft` first). PIL's own
    bomb warning at open is superseded by max_pixels; its errors raise ImageTooLarge."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"image refused by PIL: {e}") from None


def _check_pixels(im, width: int, height: int, max_pixels: int) -> None:
    if im.width * im.height > max_pixels:
        im.close()
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height / 1e6:.1f} MP, over "
            f"ingest.max_pixels ({max_pixels / 1e6:.1f} MP)"
        )


def _load(im) -> None:
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # e.g. a GIF frame larger than its header
        try:
            im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageTooLarge(f"image refused by PIL: {e}") from None


def _to_8bit(im):
    """16-bit, 32-bit and float images scaled to 8-bit 'L': convert('RGB') clips their values,
    so a 16-bit scan became all white. Values above 255 are taken as 16-bit, floats up to 1 as
    fractions."""
    if im.mode not in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return im
    f = im.convert("F")
    high = f.getextrema()[1]
    scale = 255.0 if im.mode == "F" and high <= 1 else 1 / 257 if high > 255 else 1.0
    return f.point(lambda v: v * scale).convert("L")


def stored_image(raw: bytes, settings: IngestSettings) -> bytes:
    """The bytes the zoo stores for one source image.

    An RGB JPEG of at most `keep_jpeg_side` is stored as it is: it is decoded to check it (at
    1/8 scale, which still reads all of its compressed data, so a truncated or corrupt file
    fails as in a full decode), and re-encoding it would only lose quality and time. Any
    other image is decoded, converted to RGB (alpha onto white, 16-bit and float scaled),
    downscaled to at most `max_side` and re-encoded as PNG. Raises ImageTooLarge, without
    decoding, for images over `max_pixels`."""
    from PIL import Image

    with _open_limited(raw, settings.max_pixels) as im:
        width, height = im.size
        if im.format == "JPEG" and im.mode == "RGB" and max(width, height) <= settings.keep_jpeg_side:
            im.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            _check_pixels(im, width, height, settings.max_pixels)
            _load(im)
            return raw
        im.draft("RGB", (settings.max_side, settings.max_side))  # no-op except for JPEG
        _check_pixels(im, width, height, settings.max_pixels)
        _load(im)
        im = _to_8bit(im)
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            background = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(background, im)
        im = im.convert("RGB")
        if max(im.size) > settings.max_side:
            scale = settings.max_side / max(im.size)
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR)
        out = io.BytesIO()
        im.save(out, format="PNG")
        return out.getvalue()


def decode_one(raw: bytes | None, settings: IngestSettings) -> tuple[bytes | None, str]:
    """(stored bytes, "") or (None, why the file is skipped)."""
    if not raw:
        return None, "no image bytes"
    try:
        return stored_image(raw, settings), ""
    except ImageTooLarge as e:
        return None, str(e)
    except MemoryError:
        raise  # this machine's trouble, not the file's
    except Exception as e:  # noqa: BLE001 - any decoder failure means a corrupt file
        return None, f"cannot decode image ({type(e).__name__})"


@dataclass(frozen=True, slots=True)
class Stored:
    """One validated image: in a spool file of the decoding processes, or, when its stored
    bytes are the local source file's own, in that file (whose device, inode, size,
    modification time and sha256 must not have changed when it is read again)."""

    spool: str  # the spool file's name in the spool folder, or the source file's absolute path
    offset: int
    length: int
    sha256: str
    stamp: tuple = ()  # (device, inode, mtime in ns) of a source file


_SPOOLS: dict[str, io.BufferedWriter] = {}


def decode_chunk(refs: list, settings: IngestSettings, spool_dir: str) -> list[tuple[Stored | None, str]]:
    """Decode a chunk of files (local paths, read here, or raw bytes) and append what is kept
    to this process's spool file: (Stored, "") or (None, why it is skipped) per file."""
    spool = _SPOOLS.get(spool_dir)
    if spool is None:
        spool = _SPOOLS[spool_dir] = open(os.path.join(spool_dir, f"{os.getpid()}-{uuid.uuid4().hex[:8]}"), "wb")
    out = []
    for ref in refs:
        path = None
        if isinstance(ref, str):
            path = os.path.abspath(ref)
            try:
                with open(path, "rb") as fh:
                    ref = fh.read()
                    st = os.fstat(fh.fileno())
            except OSError as e:
                out.append((None, f"cannot read file ({e.strerror})"))
                continue
        kept, why = decode_one(ref, settings)
        if kept is None:
            out.append((None, why))
        elif kept is ref and path is not None and st.st_size == len(kept):  # read again from the source
            out.append(
                (
                    Stored(
                        path, 0, len(kept), hashlib.sha256(kept).hexdigest(), (st.st_dev, st.st_ino, st.st_mtime_ns)
                    ),
                    "",
                )
            )
        else:
            out.append((_spool(spool, kept), ""))
    spool.flush()
    return out


def _spool(spool, kept: bytes) -> Stored:
    """Append an image's stored bytes to a spool file."""
    stored = Stored(os.path.basename(spool.name), spool.tell(), len(kept), hashlib.sha256(kept).hexdigest())
    spool.write(kept)
    return stored


def _close_spools(spool_dir: str) -> None:
    if spool := _SPOOLS.pop(spool_dir, None):
        spool.close()


class SpoolReader:
    """Reads Stored images back from a spool folder."""

    def __init__(self, spool_dir: str):
        self.dir, self._fds = spool_dir, {}

    def read(self, s: Stored) -> bytes:
        if s.stamp:
            try:
                with open(s.spool, "rb") as fh:
                    data = fh.read()
                    st = os.fstat(fh.fileno())
                    same = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, len(data)) == (
                        *s.stamp,
                        s.length,
                        s.length,
                    )
            except OSError:
                same = False
            if not same or hashlib.sha256(data).hexdigest() != s.sha256:  # a rewrite may keep its size and time
                raise DatasetError(
                    f"{s.spool} changed or went away while it was being ingested; "
                    "add the dataset again once nothing writes to it (the zoo is unchanged)"
                )
            return data
        fd = self._fds.get(s.spool)
        if fd is None:
            fd = self._fds[s.spool] = os.open(os.path.join(self.dir, s.spool), os.O_RDONLY)
        return os.pread(fd, s.length, s.offset)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


CHUNK = 64  # files a decoding process takes at a time
WINDOW = 4  # chunks in flight per decoding process
PARALLEL_MIN_BYTES = 16 << 20  # below this, starting decoding processes costs more than it saves


def decode_source(source: Source, settings: IngestSettings, spool_dir: str, processes: int | None = None):
    """(SourceFile, Stored or None, why skipped) for every file of the source, in order.

    From 16 MB of files on (or with `processes` > 1), decoding runs in processes on all cores
    (processes, not threads: decoding checks PIL's bomb warnings, whose filters are per
    process), at most WINDOW chunks per process in flight, so memory does not grow with the
    dataset. Local files are read by the processes themselves; remote files and Parquet
    rows are read here, a chunk at a time. (On a Ray cluster, `on_ray.decode_on_ray` decodes
    instead.)"""
    if processes is None:
        small = sum(f.size for f in source.files) < PARALLEL_MIN_BYTES
        processes = 1 if small else min(os.cpu_count() or 1, 16)
    chunks = [source.files[i : i + CHUNK] for i in range(0, len(source.files), CHUNK)]

    def refs(chunk):
        return [f.ref for f in chunk] if source.local else source.read(chunk)

    try:
        if processes == 1:
            try:
                for chunk in chunks:
                    for f, (s, why) in zip(chunk, decode_chunk(refs(chunk), settings, spool_dir)):
                        yield f, s, why
            finally:
                _close_spools(spool_dir)
            return
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            pending: deque = deque()
            for chunk in chunks + [None] * (WINDOW * processes):
                if chunk is not None:
                    pending.append((chunk, pool.submit(decode_chunk, refs(chunk), settings, spool_dir)))
                if pending and (chunk is None or len(pending) > WINDOW * processes):
                    done, future = pending.popleft()
                    for f, (s, why) in zip(done, future.result()):
                        yield f, s, why
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        raise StorageError(
            f"no space left in the temporary folder {os.path.dirname(spool_dir)} while "
            f"decoding {source.uri}: ingestion keeps the decoded images there until they "
            "are written (about the dataset's size); free space or set TMPDIR to a "
            "larger disk, then add the dataset again (the zoo is unchanged)"
        ) from None

"""Dataset sources, listed before anything is read: an ImageFolder directory (local or s3://)
or a Parquet file with `image` and `label` columns. Reading is lazy, so ingestion can stream a
source and a search query reads only the files it samples."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tans.zoo_schema.errors import DatasetError, StorageError
from tans.zoo_schema.store import S3Settings, source_filesystem

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


@dataclass(frozen=True, slots=True)
class SourceFile:
    cls: str  # class name
    name: str  # the name reports use: the path below the folder, or "row i"
    ref: object  # the file's path in the source's filesystem, or its Parquet row index
    size: int  # bytes (Parquet rows: the file's size shared out)


class Source:
    """A listed dataset source: its candidate images in order and a way to read their bytes."""

    def __init__(
        self, uri: str, fs, files: list[SourceFile], skipped: list[tuple[str, str]], parquet_path: str | None = None
    ):
        self.uri, self.fs, self.files, self.skipped = uri, fs, files, skipped
        self.parquet_path, self._group = parquet_path, (None, None)  # the path of a Parquet source
        self.local = isinstance(fs, pafs.LocalFileSystem) and parquet_path is None

    def read(self, files: list[SourceFile]) -> list[bytes]:
        """The raw bytes of these files, in order."""
        if self.parquet_path is None:
            out = []
            for f in files:
                with self.fs.open_input_stream(f.ref) as fh:
                    out.append(fh.read())
            return out
        return [self._parquet_row(f.ref) for f in files]

    def _parquet_row(self, row: int) -> bytes:
        """One row's image bytes; the row group read last is kept, so reading in row order
        reads each row group once and holds one at a time."""
        (first, images) = self._group
        if first is None or not first <= row < first + len(images):
            try:
                first, images = self._row_group_of(row)
            except PARQUET_ERRORS as e:
                raise unreadable_parquet(self.uri, self.fs, e) from None
            self._group = (first, images)
        img = images[row - first]
        return img.get("bytes") if isinstance(img, dict) else img

    def _row_group_of(self, row: int) -> tuple[int, list]:
        """(first row, images) of the row group holding `row`."""
        with self.fs.open_input_file(self.parquet_path) as fh:
            pf = pq.ParquetFile(fh)
            first = 0
            for g in range(pf.num_row_groups):
                n = pf.metadata.row_group(g).num_rows
                if row < first + n:
                    return first, pf.read_row_group(g, columns=["image"]).column("image").to_pylist()
                first += n
        raise EOFError(f"row {row} is past the file's last row group")


def _info(fs, path, uri):
    try:
        return fs.get_file_info(path)
    except OSError as e:
        raise StorageError(f"cannot read dataset source {uri}: {e}; check the path, endpoint and credentials") from None


def list_source(uri: str, s3: S3Settings | None = None) -> Source:
    """The candidate images of a dataset source, nothing decoded, plus files skipped early."""
    fs, path = source_filesystem(uri, s3)
    info = _info(fs, path, uri)
    if info.type == pafs.FileType.NotFound:
        raise DatasetError(
            f"dataset source {uri} does not exist; pass an ImageFolder directory "
            "(one folder per class) or a Parquet file"
        )
    if info.type == pafs.FileType.File:
        if not path.endswith(".parquet"):
            raise DatasetError(
                f"dataset source {uri} is a file but not .parquet; pass an ImageFolder "
                "directory or a Parquet file with image and label columns"
            )
        return _list_parquet(fs, path, uri, info.size or 0)
    if isinstance(fs, pafs.LocalFileSystem):
        files, skipped = _local_files(path)
    else:  # object stores have no symlinks; hidden names are skipped as on disk
        files, skipped = [], []
        for f in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
            rel = f.path[len(path) :].lstrip("/")
            if f.type != pafs.FileType.File or _hidden(rel):
                continue
            if reason := _name_skip(rel):
                skipped.append((rel, reason))
            else:
                files.append((rel, f.path, f.size or 0))
    return Source(uri, fs, [SourceFile(rel.split("/")[0], rel, full, size) for rel, full, size in files], skipped)


def _hidden(rel: str) -> bool:
    """Hidden files and folders (`.ipynb_checkpoints`, `.DS_Store`) are tool debris, not classes."""
    return any(part.startswith(".") for part in rel.split("/"))


def _name_skip(rel: str) -> str | None:
    """Why a file is not a candidate image by its path alone, or None."""
    if "/" not in rel:
        return "not inside a class folder"
    if "." + rel.rsplit(".", 1)[-1].lower() not in IMAGE_SUFFIXES:
        return "not an image file name"
    return None


def _local_files(root: str) -> tuple[list[tuple[str, str, int]], list[tuple[str, str]]]:
    """(relative name, path, size) of each candidate image below a local folder, plus skipped files.

    Symlinks are followed only while they stay inside the folder: pyarrow's recursive listing
    follows every link, so `up -> ..` multiplied the images and a link to `/` would have copied
    host files into the zoo. Each folder is walked once (link cycles) and each file read once
    (by device and inode, so hard links count as the same file too)."""
    real_root = os.path.realpath(root)
    files, skipped, seen_dirs, seen_files = [], [], {real_root}, {}

    below = real_root.rstrip(os.sep) + os.sep

    def inside(real: str) -> bool:
        return real == real_root or real.startswith(below)

    def file_skip(path: str, rel: str) -> str | int:
        """Why the file is skipped, or its size. Only links need resolving: every folder
        walked is inside the root already."""
        if os.path.islink(path) and not inside(os.path.realpath(path)):
            return "symlink leaves the dataset folder"
        if reason := _name_skip(rel):
            return reason
        try:
            st = os.stat(path)
        except OSError as e:  # a dangling symlink, no permission
            return f"cannot read file ({e.strerror})"
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"  # reading a FIFO or device would block or never end
        first = seen_files.setdefault((st.st_dev, st.st_ino), rel)
        return st.st_size if first == rel else f"same file as {first}"

    for top, dirs, names in os.walk(root, followlinks=True):
        here = os.path.relpath(top, root).replace(os.sep, "/")
        prefix = "" if here == "." else here + "/"
        walk = []
        for d in sorted(dirs):
            real = os.path.realpath(os.path.join(top, d))
            if d.startswith(".") or real in seen_dirs:
                continue
            if inside(real):
                seen_dirs.add(real)
                walk.append(d)
            else:
                skipped.append((prefix + d, "symlink leaves the dataset folder"))
        dirs[:] = walk
        for name in sorted(n for n in names if not n.startswith(".")):
            outcome = file_skip(os.path.join(top, name), prefix + name)
            if isinstance(outcome, str):
                skipped.append((prefix + name, outcome))
            else:
                files.append((prefix + name, os.path.join(top, name), outcome))
    return files, skipped


def _list_parquet(fs, path: str, uri: str, size: int) -> Source:
    """Rows as (label, "row i", row index); only the label column is read here.

    A file that is not what it claims (empty, truncated, not Parquet) is refused with the file
    named, and so are labels that are not plain ints or strings (bytes, lists, structs: their
    text would be a class name like "b'c0'"), and null labels (str(None) made them a class
    "None"). Rows without image bytes are skipped when they are read ("no image bytes")."""
    try:
        with fs.open_input_file(path) as fh:
            pf = pq.ParquetFile(fh)
            schema = pf.schema_arrow
            missing = {"image", "label"} - set(schema.names)
            if missing:
                raise DatasetError(
                    f"Parquet dataset {uri} lacks column(s) {sorted(missing)}; it needs "
                    "'image' (bytes) and 'label' (int or string)"
                )
            _check_columns(schema, uri)
            labels = pf.read(columns=["label"]).column("label")
    except PARQUET_ERRORS as e:
        raise unreadable_parquet(uri, fs, e) from None
    nulls = labels.null_count
    if nulls:
        raise DatasetError(
            f"Parquet dataset {uri}: {nulls} of {len(labels)} rows have a null "
            "label; drop those rows or fill in their label, then add it again"
        )
    share = size // max(len(labels), 1)
    files = [SourceFile(str(label), f"row {i}", i, share) for i, label in enumerate(labels.to_pylist())]
    return Source(uri, fs, files, [], parquet_path=path)


PARQUET_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, EOFError)


def unreadable_parquet(uri: str, fs, e: BaseException) -> Exception:
    """The error for a Parquet source that cannot be read: a damaged file, or (an OSError
    from an object store) a store out of reach."""
    first = (str(e).splitlines() or [type(e).__name__])[0][:200]
    if isinstance(e, OSError) and not isinstance(fs, pafs.LocalFileSystem):
        return StorageError(f"cannot read dataset source {uri}: {first}; check the endpoint and credentials")
    return DatasetError(
        f"Parquet dataset {uri} cannot be read ({type(e).__name__}: {first}): the file is "
        "empty, truncated or not Parquet. Write it again (e.g. pandas.DataFrame.to_parquet "
        "with 'image' bytes and 'label' columns) and add it again"
    )


def _check_columns(schema: pa.Schema, uri: str) -> None:
    label, image = schema.field("label").type, schema.field("image").type
    if not (
        pa.types.is_integer(label)
        or pa.types.is_string(label)
        or pa.types.is_large_string(label)
        or pa.types.is_dictionary(label)
        and pa.types.is_string(label.value_type)
    ):
        raise DatasetError(
            f"Parquet dataset {uri}: its 'label' column is {label}, not ints or strings; "
            "write the labels as ints or as text (bytes labels: decode them; one label per "
            "image, not lists), then add it again"
        )
    if not (
        _is_bytes(image)
        or pa.types.is_struct(image)
        and image.get_field_index("bytes") >= 0
        and _is_bytes(image.field("bytes").type)
    ):
        raise DatasetError(
            f"Parquet dataset {uri}: its 'image' column is {image}, not the encoded image "
            "file bytes (binary, or a struct with a 'bytes' field as Hugging Face datasets "
            "write); store each image's PNG/JPEG bytes, then add it again"
        )


def _is_bytes(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)

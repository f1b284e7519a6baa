"""Files a command writes outside the zoo (`export --out`, `report --out`, `pretrain-base
--out`): each whole or absent, and never written through a link someone planted.

- The folder is created when absent. An existing one must be a real folder (not a file,
  not a symlink) owned by the user running tans: a folder another local user prepared
  (`/tmp/x`) could hold links that redirect the writes.
- Each file is first written to a temp file created exclusively in that folder, with an
  unpredictable name (`mkstemp`: `O_CREAT | O_EXCL`, mode 0600), flushed, then renamed over
  its name with `os.replace`, which replaces a symlink standing there instead of following it.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from tans.zoo_schema.errors import StorageError


def output_folder(path: str | os.PathLike, what: str = "--out") -> Path:
    """`path` as a folder to write into: created if absent, else checked (see the module)."""
    folder = Path(path).expanduser()
    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise StorageError(f"{what} {folder}: {e.strerror}; pass a folder you can write to") from None
    if st is None:
        try:
            folder.mkdir(parents=True, mode=0o755)
        except FileExistsError:  # made by someone else meanwhile: check it like any existing one
            return output_folder(path, what)
        except OSError as e:
            raise StorageError(
                f"cannot create {what} folder {folder}: {e.strerror}; check the path and the free space"
            ) from None
        return folder
    if stat.S_ISLNK(st.st_mode):
        real = folder.resolve()
        if st.st_uid != os.geteuid() or not real.is_dir():
            raise StorageError(
                f"{what} {folder} is a symlink (to {real}) that is not yours or not a folder; "
                "pass the real folder, or a new path"
            )
        return output_folder(real, what)
    if not stat.S_ISDIR(st.st_mode):
        raise StorageError(
            f"{what} {folder} exists and is not a folder; pass a folder path (it is created "
            "when absent) or remove that file"
        )
    if st.st_uid != os.geteuid():
        raise StorageError(
            f"{what} {folder} belongs to another user (uid {st.st_uid}); its contents could "
            "redirect the files written there. Pass a folder of your own, or a new path"
        )
    return folder


def write_file(folder: Path, name: str, data: bytes | str) -> Path:
    """Write `folder/name` whole or not at all, replacing (never following) what stands there."""
    if isinstance(data, str):
        data = data.encode()
    target = folder / name
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{Path(name).name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise StorageError(f"cannot write {target}: {e.strerror}; check the folder and the free space") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except OSError as e:
        raise StorageError(f"cannot write {target}: {e.strerror}; check the folder and the free space") from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    return target

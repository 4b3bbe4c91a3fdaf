"""The sidecar's state directory: small files written atomically (cursor, encrypted CSK cache).

Owns the write protocol (directory 0700; temp file created exclusively with mode 0600 in the same
directory, written, fsynced, renamed over the target, directory fsynced; temp removed on failure) and
bounded reads that refuse non-regular and oversized files. Must not interpret contents or hold plaintext
secrets: callers store only public data or ciphertext.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

MAX_FILE_BYTES = 64 * 1024


class StoreError(OSError):
    """A state file could not be read or written."""


class StateStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _ensure_dir(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.directory.chmod(0o700)

    def read(self, name: str, max_bytes: int = MAX_FILE_BYTES) -> bytes | None:
        """The file's bytes; None when it does not exist."""
        path = self.directory / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot open state file {path}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise StoreError(f"state file {path} is not a regular file")
            if st.st_size > max_bytes:
                raise StoreError(f"state file {path} is larger than {max_bytes} bytes")
            return fh.read(max_bytes + 1)[:max_bytes]

    def write(self, name: str, data: bytes) -> None:
        """Replace the file atomically (readers see the old or the new content, never a mix)."""
        self._ensure_dir()
        target = self.directory / name
        tmp = self.directory / f".{name}.{os.getpid()}.{secrets.token_hex(8)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def remove(self, name: str) -> None:
        (self.directory / name).unlink(missing_ok=True)

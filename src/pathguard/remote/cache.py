"""The on-disk cache of the last good policy bundle, for cold starts while the server is down.

One bundle per cache directory (use one directory per agent). `save` writes a temp file in
the same directory, fsyncs it, renames it over the cache file with `os.replace` and fsyncs the
directory, so a crash at any moment leaves either the old file or the new one, never a mix.
The file is created with mode 0600: it is the agent's policy and can name its tools and data.

`load` re-verifies the cached body with the configured keys exactly as a fresh download is
verified, so editing the file is detected; with no key configured it is only validated as a
policy document.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Final

from pathguard.remote.bundle import BundleVerificationError, PolicyBundle, VerificationKeys

__all__ = ["CACHE_FILENAME", "PolicyCache"]

logger = logging.getLogger("pathguard")

CACHE_FILENAME: Final = "policy-bundle.json"
_TEMP_PREFIX: Final = ".policy-bundle."
_TEMP_SUFFIX: Final = ".tmp"
_FORMAT: Final = 1
_STALE_TEMP_SECONDS: Final = 600.0


def fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directory entries are durable with the file
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes, *, prefix: str, suffix: str = ".tmp") -> None:
    """Replace `path` with `data`: temp file in the same directory, fsync, rename, mode 0600."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsync_directory(path.parent)


class PolicyCache:
    """Keeps the last verified policy bundle in `directory` (created with mode 0700)."""

    def __init__(
        self, directory: str | os.PathLike[str], *, keys: VerificationKeys | None = None
    ) -> None:
        self.directory = Path(directory)
        self.keys = keys or VerificationKeys()
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = self.directory / CACHE_FILENAME
        self._remove_stale_temps()

    def __repr__(self) -> str:
        return f"PolicyCache({str(self.directory)!r})"

    def save(self, bundle: PolicyBundle) -> None:
        """Write a verified bundle, atomically replacing the one before (OSError on failure)."""
        document: dict[str, Any] = {
            "format": _FORMAT,
            "etag": bundle.etag,
            "signature": bundle.signature,
            "fetched_at": bundle.fetched_at,
            # base64 keeps the exact signed bytes, whatever their whitespace or escapes.
            "body": base64.b64encode(bundle.body).decode("ascii"),
        }
        data = json.dumps(document, indent=2).encode("utf-8") + b"\n"
        write_atomically(self.path, data, prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX)
        logger.debug("cached policy bundle %s in %s", bundle.etag, self.path)

    def load(self) -> PolicyBundle | None:
        """The cached bundle, verified again; None when nothing is cached.

        Raises BundleVerificationError naming the file when it is corrupt or fails
        verification (a refused cache file is left in place for inspection).
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        where = f"The policy cache file {str(self.path)!r}"
        try:
            document = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleVerificationError(
                f"{where} is not valid JSON ({exc}); delete it so the next good bundle from "
                "the server replaces it."
            ) from None
        problem = _shape_problem(document)
        if problem is not None:
            raise BundleVerificationError(
                f"{where} {problem}; delete it so the next good bundle replaces it."
            )
        try:
            body = base64.b64decode(document["body"], validate=True)
        except (binascii.Error, ValueError):
            raise BundleVerificationError(
                f"{where} has a body that is not valid base64; delete it so the next good "
                "bundle replaces it."
            ) from None
        headers = {}
        if document["etag"] is not None:
            headers["ETag"] = document["etag"]
        if document["signature"] is not None:
            headers["X-Pathguard-Signature"] = document["signature"]
        try:
            return PolicyBundle.verify(
                body, headers, fetched_at=document["fetched_at"], keys=self.keys
            )
        except BundleVerificationError as exc:
            raise BundleVerificationError(
                f"{where} was refused: {exc} The file may have been tampered with."
            ) from None

    def clear(self) -> None:
        """Delete the cached bundle (nothing happens when there is none)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _remove_stale_temps(self) -> None:
        # Temp files left by a crash mid-save are never read; remove old ones so repeated
        # crashes do not pile them up. Young ones may belong to another process's save.
        now = time.time()
        for temp in self.directory.glob(f"{_TEMP_PREFIX}*{_TEMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                if now - temp.stat().st_mtime > _STALE_TEMP_SECONDS:
                    temp.unlink()


def _shape_problem(document: Any) -> str | None:
    if not isinstance(document, dict):
        return "does not hold a JSON object"
    if document.get("format") != _FORMAT:
        return f"has format {document.get('format')!r}; this pathguard reads format {_FORMAT}"
    if not isinstance(document.get("body"), str):
        return "has no 'body' string"
    for key in ("etag", "signature"):
        if document.get(key) is not None and not isinstance(document.get(key), str):
            return f"has a {key!r} that is not a string"
    stamp = document.get("fetched_at")
    if isinstance(stamp, bool) or not isinstance(stamp, int | float):
        return "has no numeric 'fetched_at'"
    return None

"""The one downloader of weights files: atomic, bounded, with a progress bar, checked before it
is kept.

A download goes to a ``.part-*`` file beside its target and is renamed into place only once it
is complete (as long as the server said, and not empty) and matches the expected checksum (a
full sha256, or the leading hex digits OpenMMLab writes into its file names). It is bounded in
size (the expected size when the caller knows it, else :data:`DEFAULT_MAX_BYTES`, or
``$DYHEAD_SERVE_DOWNLOAD_MAX_BYTES``), in silence (no byte for ``stall_timeout`` seconds) and in
total time (``total_timeout``), so an endless or trickling body cannot hold the process. Every
failure is a :class:`DownloadError` whose message says how to supply the file by hand, and
removes the ``.part-*`` file.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from dyhead_serve.errors import UserError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_BYTES_VARIABLE",
    "DownloadError",
    "checksum_problem",
    "download",
    "max_download_bytes",
    "sha256_of",
]

logger = logging.getLogger(__name__)

# The largest weights file we know (Swin-L DyHead) is under 1 GiB.
DEFAULT_MAX_BYTES = 4 * 2**30
MAX_BYTES_VARIABLE = "DYHEAD_SERVE_DOWNLOAD_MAX_BYTES"
_BLOCK = 1 << 20


class DownloadError(UserError, RuntimeError):
    """A file cannot be downloaded (no network, HTTP error, incomplete, wrong checksum)."""


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def checksum_problem(path: Path, sha256: str = "", sha256_prefix: str = "") -> str | None:
    """Why ``path`` does not have the expected checksum (``sha256``, or its leading digits
    ``sha256_prefix``), or None; None as well when neither is known."""
    if not (sha256 or sha256_prefix):
        return None
    digest = sha256_of(path)
    if sha256 and digest != sha256:
        return f"checksum mismatch (expected sha256 {sha256})"
    if not digest.startswith(sha256_prefix):
        return f"checksum mismatch (expected a sha256 starting with {sha256_prefix})"
    return None


def max_download_bytes() -> int:
    """``$DYHEAD_SERVE_DOWNLOAD_MAX_BYTES`` when set, else :data:`DEFAULT_MAX_BYTES`.

    Raises:
        DownloadError: the variable is not a positive integer.
    """
    value = os.environ.get(MAX_BYTES_VARIABLE, "").strip()
    if not value:
        return DEFAULT_MAX_BYTES
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit <= 0:
        raise DownloadError(f"${MAX_BYTES_VARIABLE}={value!r}: expected a positive number of bytes")
    return limit


def download(
    url: str,
    target: Path,
    sha256: str = "",
    *,
    timeout: float = 30.0,
    progress: bool = True,
    sha256_prefix: str = "",
    expected_size: int | None = None,
    max_bytes: int | None = None,
    total_timeout: float = 2 * 3600.0,
) -> Path:
    """Download ``url`` to ``target`` (atomically, with a progress bar) and verify it (against
    ``sha256``, or the leading digits ``sha256_prefix``, when given).

    Args:
        timeout: the stall deadline: seconds without a byte (connecting included) before the
            download is given up.
        expected_size: the file's size in bytes when known: a server that announces or sends
            another size is refused.
        max_bytes: the most bytes accepted when ``expected_size`` is not known (default
            :func:`max_download_bytes`).
        total_timeout: seconds the whole download may take (checked at each received block, so
            at most ``timeout`` late).

    Raises:
        DownloadError: no network, HTTP error, a broken, stalled, too slow, too large, empty or
            incomplete download, or a checksum mismatch; the message says how to supply the file
            by hand. No ``.part-*`` file is left behind.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    by_hand = f"download {url} by hand and pass its path with --weights PATH (or place it at {target})"
    limit = expected_size if expected_size is not None else (max_bytes or max_download_bytes())
    deadline = time.monotonic() + total_timeout
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
        raise DownloadError(f"cannot download {target.name} ({reason}); {by_hand}") from exc
    with response:
        announced = _announced_size(response)
        if announced is not None and announced > limit:
            raise DownloadError(
                f"{target.name}: the server announces {announced} bytes, more than the {limit} "
                f"expected; {by_hand}"
            )
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".part-", delete=False) as tmp:
            tmp_path = Path(tmp.name)
        try:
            _receive(response, tmp_path, target.name, announced, limit, deadline, progress, total_timeout)
            size = tmp_path.stat().st_size
            if size == 0 or (announced is not None and size != announced):
                raise DownloadError(f"download of {target.name} is incomplete ({size} bytes)")
            if expected_size is not None and size != expected_size:
                raise DownloadError(
                    f"download of {target.name} has {size} bytes, not the {expected_size} expected"
                )
            problem = checksum_problem(tmp_path, sha256, sha256_prefix)
            if problem:
                raise DownloadError(f"{target.name}: {problem}")
            shutil.move(str(tmp_path), target)
        except DownloadError as exc:
            raise DownloadError(f"{exc}; {by_hand}") from exc.__cause__
        except OSError as exc:  # writing the file: a full disk, a folder that went away
            raise DownloadError(f"cannot write {tmp_path} ({exc}); {by_hand}") from exc
        finally:
            tmp_path.unlink(missing_ok=True)  # gone already when the download was kept
    logger.info("downloaded %s (%d bytes)", target, target.stat().st_size)
    return target


def _announced_size(response: object) -> int | None:
    headers = getattr(response, "headers", None)
    value = headers.get("Content-Length") if headers is not None else None
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _receive(
    response: BinaryIO,
    path: Path,
    name: str,
    announced: int | None,
    limit: int,
    deadline: float,
    progress: bool,
    total_timeout: float,
) -> None:
    """Copy the body to ``path``, block by block, within ``limit`` bytes and the deadline.

    ``read1`` returns whatever one receive brings (a trickle of bytes included), so the deadline
    is looked at after every receive; the socket's own timeout bounds each wait for one.
    """
    read = getattr(response, "read1", response.read)
    received = 0
    with path.open("wb") as file, tqdm(
        total=announced, unit="B", unit_scale=True, desc=name, disable=not progress
    ) as bar:  # fmt: skip
        while True:
            try:
                block = read(_BLOCK)
            except (http.client.HTTPException, OSError, ValueError) as exc:  # IncompleteRead, reset, timeout
                reason = (
                    "no data for too long"
                    if isinstance(exc, TimeoutError)
                    else f"{type(exc).__name__}: {exc}"
                )
                raise DownloadError(f"download of {name} broke off ({reason})") from exc
            if not block:
                return
            received += len(block)
            if received > limit:
                raise DownloadError(f"download of {name} exceeds {limit} bytes; refusing the rest")
            file.write(block)
            bar.update(len(block))
            if time.monotonic() > deadline:
                raise DownloadError(f"download of {name} takes longer than {total_timeout:g} s")

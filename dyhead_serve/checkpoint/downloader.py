"""The one downloader of weights files: atomic, with a progress bar, checked before it is kept.

A download goes to a ``.part-*`` file beside its target and is renamed into place only once it
is complete (as long as the server said, and not empty) and matches the expected checksum (a
full sha256, or the leading hex digits OpenMMLab writes into its file names). Every failure is a
:class:`DownloadError` whose message says how to supply the file by hand.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from dyhead_serve.errors import UserError

__all__ = ["DownloadError", "checksum_problem", "download", "sha256_of"]

logger = logging.getLogger(__name__)


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


def download(
    url: str,
    target: Path,
    sha256: str = "",
    *,
    timeout: float = 30.0,
    progress: bool = True,
    sha256_prefix: str = "",
) -> Path:
    """Download ``url`` to ``target`` (atomically, with a progress bar) and verify it (against
    ``sha256``, or the leading digits ``sha256_prefix``, when given).

    Raises:
        DownloadError: no network, HTTP error, empty file or checksum mismatch; the message says
            how to supply the file by hand.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    by_hand = f"download {url} by hand and pass its path with --weights PATH (or place it at {target})"
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"cannot download {target.name} ({reason}); {by_hand}") from exc
    total = int(response.headers.get("Content-Length") or 0) or None
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".part-", delete=False) as tmp:
        tmp_path = Path(tmp.name)
        try:
            with response, tqdm(
                total=total, unit="B", unit_scale=True, desc=target.name, disable=not progress
            ) as bar:  # fmt: skip
                while block := response.read(1 << 20):
                    tmp.write(block)
                    bar.update(len(block))
        except (OSError, urllib.error.URLError) as exc:
            tmp_path.unlink(missing_ok=True)
            raise DownloadError(f"download of {target.name} broke off ({exc}); {by_hand}") from exc
    if tmp_path.stat().st_size == 0 or (total is not None and tmp_path.stat().st_size != total):
        tmp_path.unlink(missing_ok=True)
        raise DownloadError(f"download of {target.name} is incomplete; {by_hand}")
    problem = checksum_problem(tmp_path, sha256, sha256_prefix)
    if problem:
        tmp_path.unlink(missing_ok=True)
        raise DownloadError(f"{target.name}: {problem}; {by_hand}")
    shutil.move(str(tmp_path), target)
    logger.info("downloaded %s (%d bytes)", target, target.stat().st_size)
    return target

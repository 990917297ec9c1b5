"""Exports made once and reused: what lets ``--backend auto`` run a zoo model or a config with its
weights in ONNX Runtime (or TensorRT) without anyone running ``dyhead-export`` first.

The first run of a model on a machine exports it with ``dyhead-export onnx`` (in a child process,
with its progress bar: loading, tracing, checking, verifying against PyTorch) into the cache;
later runs find it there and only check it. The cache lives under ``$DYHEAD_SERVE_CACHE/onnx``::

    <root>/<label>-<id>/model.onnx, model.json, cache_entry.json
    <root>/<label>-<id>.failed      the export failed: auto runs torch until this file is deleted
    <root>/.locks/<label>-<id>.lock one first run exports, the others wait for it

``<id>`` is a checksum of everything that decides the exported network (:func:`model_fingerprint`:
the weights' SHA-256, the resolved config, the overrides, this package's code and the versions of
torch, onnx and onnxruntime) and of the export options. An entry appears only complete (exported
beside its final name, renamed into place), and ``cache_entry.json``, written last, records its key
and the SHA-256 of each file: an entry whose record is missing, unreadable, of another key or whose
files do not match is exported again, never trusted.

The TensorRT engine cache (:mod:`dyhead_serve.export.engine_cache`, ``dyhead-export engine``)
names its models with the same fingerprint and uses the same lock and child-process helpers.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import IO, Any, Literal

from dyhead_serve import __version__
from dyhead_serve.checkpoint import sha256_of
from dyhead_serve.checkpoint.cache import CACHE_VARIABLE
from dyhead_serve.errors import UserError
from dyhead_serve.model_source import ModelSource
from dyhead_serve.runtime.export_command import exporter_command, override_flags

__all__ = [
    "ENTRY_FILE",
    "CachedExport",
    "ExportCacheError",
    "OnnxExportCache",
    "entry_problem",
    "exclusive",
    "model_fingerprint",
    "run_exporter",
    "source_arguments",
]

logger = logging.getLogger(__name__)

ENTRY_FILE = "cache_entry.json"
# Bumped when the layout of an entry changes (old entries are then exported again).
CACHE_FORMAT = 1
# Exit statuses of `dyhead-export onnx` that mean the model does not export or verify (1: the
# verification failed or an exception; 2: `error: ...`), remembered so that later runs do not
# spend the export again. Signals (negative) and shells' 128+ are not.
REMEMBERED_STATUSES = (1, 2)
# The largest batch of `dyhead-export engine`'s shape presets (export/engine_cache.BATCH_PROFILES).
LARGEST_PRESET_BATCH = 8
ENGINE_PRECISION_VARIABLE = "DYHEAD_ENGINE_PRECISION"
# Half-written export folders older than this are abandoned (their process died).
ABANDONED_AFTER_S = 6 * 3600.0
# The packages whose versions change the exported graph or the runtime that verified it.
_GRAPH_PACKAGES = ("torch", "torchvision", "onnx", "onnxruntime", "onnxscript")


class ExportCacheError(UserError, RuntimeError):
    """A cached export can be neither found nor made; the message says why."""


@dataclass(frozen=True)
class CachedExport:
    """An exported folder from the cache, and whether this call made it."""

    path: Path
    how: Literal["exported", "reused"]
    seconds: float = 0.0


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


# Subpackages whose code does not change an exported network or its model.json.
_NOT_GRAPH_CODE = ("server", "training")


def _code_digest() -> str:
    """SHA-256 of this installation's Python sources that make the graph (``dyhead_serve`` and
    what it links in, such as ``export/``; not the server's or training's): an edited working tree
    exports again, as a new release does."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for folder, subfolders, files in os.walk(package, followlinks=True):
        if Path(folder) == package:
            subfolders[:] = [name for name in subfolders if name not in _NOT_GRAPH_CODE]
        subfolders.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = Path(folder) / name
                digest.update(str(path.relative_to(package)).encode() + b"\0")
                digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


# Config keys that do not change the exported network or its model.json (datasets, training,
# where the weights came from: the weights count by their checksum): `eval` and `train` pass
# them as overrides, and they must not make another export.
NOT_THE_NETWORK = (
    "DATASETS", "DATALOADER", "SOLVER", "OUTPUT_DIR", "SEED", "VIS_PERIOD", "CUDNN_BENCHMARK",
    "GLOBAL", "MODEL.WEIGHTS", "MODEL.DEVICE",
)  # fmt: skip


def _network_overrides(overrides: Sequence[str]) -> list[str]:
    """Flattened ``KEY VALUE`` overrides without those of :data:`NOT_THE_NETWORK`."""
    pairs = zip(overrides[::2], overrides[1::2], strict=True)
    return [item for key, value in pairs if not _outside_the_network(key) for item in (key, value)]


def _outside_the_network(key: str) -> bool:
    return any(key == name or key.startswith(f"{name}.") for name in NOT_THE_NETWORK)


def model_fingerprint(source: ModelSource) -> dict[str, Any]:
    """Everything that decides the network of a zoo model or a config with weights.

    The config is resolved (defaults, ``_BASE_`` files or mmdetection ``_base_`` files, the
    overrides) and recorded whole but for :data:`NOT_THE_NETWORK`, so an edit anywhere in its
    inheritance counts; the weights count by their SHA-256.

    Raises:
        ExportCacheError: the source is an exported folder.
        UserError: its weights file does not exist; ConfigError: the config does not load.
    """
    from dyhead_serve.config import load_config

    if source.kind == "exported" or source.config is None:
        raise ExportCacheError(f"{source.folder or source.name} is already exported")
    # The config first, as the torch backend reads them: its errors are named before the file's.
    config = load_config(source.config, overrides=list(source.overrides)).to_dict()
    if source.weights is None:
        raise ExportCacheError(f"{source.name}: its weights were not resolved")
    if not source.weights.is_file():
        raise UserError(f"{source.weights}: no such checkpoint file")
    for key in NOT_THE_NETWORK:
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    config_text = json.dumps(config, sort_keys=True, default=str)
    return {
        "name": source.name,
        "weights_sha256": sha256_of(source.weights),
        "config_sha256": hashlib.sha256(config_text.encode()).hexdigest(),
        "overrides": _network_overrides(source.overrides),
        "dyhead_serve": __version__,
        "code_sha256": _code_digest(),
        "packages": {name: _package_version(name) for name in _GRAPH_PACKAGES},
    }


def source_arguments(source: ModelSource) -> tuple[str, ...]:
    """The ``dyhead-export`` flags that name ``source``: ``--model NAME [--weights W]``,
    ``--config CFG --weights W`` or ``--model FOLDER``, then ``--set KEY VALUE`` per override."""
    if source.kind == "exported":
        return ("--model", str(source.folder))
    name = ("--model", source.name) if source.kind == "zoo" else ("--config", str(source.config))
    # A zoo model's own weights are found by the command itself (they are cached by now).
    weights = ("--weights", str(source.weights)) if source.weights_given else ()
    return (*name, *weights, *override_flags(_network_overrides(source.overrides)))


@contextmanager
def exclusive(lock_file: Path, waiting: str = "another process is building this") -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file``, waiting (and logging ``waiting``) while another
    process holds it. The lock goes with the process, so a process that dies releases it."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.warning("%s; waiting for it (%s)", waiting, lock_file)
                fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as exc:  # ENOLCK, EOPNOTSUPP: a network file system without locks
            raise ExportCacheError(
                f"cannot lock {lock_file} ({exc.strerror or exc}): this file system does not support "
                f"locks; point {CACHE_VARIABLE} at a local folder"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# The longest a child export or engine build may take (Swin-L, Faster R-CNN: minutes).
CHILD_TIMEOUT_S = 3 * 3600


def _child_environment() -> dict[str, str]:
    """This environment, with the folder this process imports ``dyhead_serve`` from first on the
    child's path: the child exports with the code the cache key was computed from, whichever
    ``dyhead-export`` it runs (an installed script, a source tree)."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


def _die_with_parent() -> None:
    """In the child, before it runs: ask Linux to stop it when its parent dies (a server killed
    during its first start must not leave an export running)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the child may outlive its parent
        pass


def _run_child(command: Sequence[str], stdout: Any) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(command), stdout=stdout, env=_child_environment(), preexec_fn=_die_with_parent,
            timeout=CHILD_TIMEOUT_S, text=True, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise ExportCacheError(f"`{' '.join(command[-8:])}` ran past {CHILD_TIMEOUT_S} s; stopped") from None


def run_exporter(command: Sequence[str]) -> int:
    """Run a ``dyhead-export`` command line with its output on stderr (stdout belongs to the
    caller: detections, an engine folder) and return its exit status."""
    return _run_child(command, _stderr_of_this_process()).returncode


def _stderr_of_this_process() -> int | IO[str]:
    """``sys.stderr`` when it is a file, else file descriptor 2: where a notebook or a test has
    replaced ``sys.stderr`` with an object without a file descriptor."""
    try:
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both of the last
        return 2
    sys.stderr.flush()
    return sys.stderr


def _entry_files(folder: Path) -> dict[str, str]:
    """SHA-256 of each file of an entry; a link or a folder inside it is a changed entry."""
    files = {}
    for path in sorted(folder.iterdir()):
        if path.is_symlink() or not path.is_file():
            files[path.name] = "not a plain file"
        elif path.name != ENTRY_FILE:
            files[path.name] = sha256_of(path)
    return files


def entry_problem(folder: Path, key: str) -> str | None:
    """Why ``folder`` is not a complete, intact cache entry of ``key`` (None: it is)."""
    if not folder.is_dir():
        return "missing"
    try:
        record = json.loads((folder / ENTRY_FILE).read_text())
    except FileNotFoundError:
        return f"no {ENTRY_FILE} (an export that did not finish)"
    except (OSError, ValueError) as exc:
        return f"{ENTRY_FILE} is unreadable ({exc})"
    if not isinstance(record, dict) or record.get("key") != key:
        return f"{ENTRY_FILE} names another key"
    files = record.get("files")
    if not isinstance(files, dict) or "model.onnx" not in files or "model.json" not in files:
        return f"{ENTRY_FILE} lists no model.onnx and model.json"
    try:
        present = _entry_files(folder)
    except OSError as exc:
        return f"cannot read it ({exc})"
    changed = sorted(set(files) ^ set(present) | {n for n in files if present.get(n) != files[n]})
    if changed:
        return f"{', '.join(changed)} changed since it was verified"
    return None


def _key(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _entry_name(label: str, key: str) -> str:
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', label)}-{key[:16]}"


class OnnxExportCache:
    """The cache entry of one model's ONNX export under ``root`` (``$DYHEAD_SERVE_CACHE/onnx``):
    :meth:`lookup` finds it when it is there and intact, :meth:`export` makes it first when not.

    Args:
        source: a zoo model or a config with weights.
        precision: ``dyhead-export onnx --precision``.

    Raises:
        UserError: the weights file does not exist; ConfigError: the config does not load.
    """

    def __init__(self, source: ModelSource, root: Path, *, precision: str = "fp32") -> None:
        self.source, self.root = source, root
        self.export_options = ("--precision", precision)
        fields = {
            "format": CACHE_FORMAT,
            "model": model_fingerprint(source),
            "export": list(self.export_options),
        }
        self.fields, self.key = fields, _key(fields)
        name = _entry_name(source.name, self.key)
        self.name, self.path, self.failed = name, root / name, root / f"{name}.failed"

    def lookup(self) -> CachedExport | None:
        """The entry when it is complete and intact, else None."""
        return CachedExport(self.path, "reused") if entry_problem(self.path, self.key) is None else None

    def export(
        self,
        *,
        retry_failed: bool = False,
        run: Callable[[Sequence[str]], int] | None = None,
        before_export: Callable[[], None] | None = None,
    ) -> CachedExport:
        """The entry, exported first with ``dyhead-export onnx`` (verified against PyTorch) when
        the cache has none, or only a corrupt or partial one; one process exports, others wait.

        Args:
            retry_failed: export again even when an earlier export of this key failed (otherwise
                that failure is raised at once, without spending minutes on it again).
            run: runs a command line and returns its exit status (default: :func:`run_exporter`).
            before_export: called under the lock just before an export starts (not when the
                entry is reused): where the caller builds its fallback, so that processes that
                wait and reuse never hold a second model.

        Raises:
            ExportCacheError: the export failed (now or, unless ``retry_failed``, before), the
                cache cannot be written or locked.
        """
        run = run if run is not None else run_exporter
        found = self.lookup()
        if found is not None:
            return found
        try:
            return self._export_locked(run, retry_failed, before_export)
        except OSError as exc:  # a full disk, a read-only or vanished volume
            where = exc.filename or self.root
            raise ExportCacheError(
                f"the export cache {where} cannot be written ({exc.strerror or exc}); set "
                f"{CACHE_VARIABLE} to a writable folder"
            ) from None

    def _export_locked(
        self,
        run: Callable[[Sequence[str]], int],
        retry_failed: bool,
        before_export: Callable[[], None] | None,
    ) -> CachedExport:
        source, root, final, failed = self.source, self.root, self.path, self.failed
        root.mkdir(parents=True, exist_ok=True)
        with exclusive(root / ".locks" / f"{self.name}.lock", f"another process is exporting {source.name}"):
            problem = entry_problem(final, self.key)
            if problem is None:  # exported by another process while this one waited
                return CachedExport(final, "reused")
            if failed.is_file() and not retry_failed:
                raise ExportCacheError(_failure_text(failed))
            if before_export is not None:
                before_export()
            if problem != "missing":
                logger.warning("cached export %s is not to be trusted (%s); exporting again", final, problem)
                shutil.rmtree(final)
            _remove_abandoned(root, self.name)
            # Named by host, process and a random part: replicas on one volume may share a PID.
            unique = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            staging = root / f".{self.name}.partial-{unique}"
            command = [*exporter_command(), "onnx", *source_arguments(source), *self.export_options]
            command += ["--out", str(staging)]
            logger.warning(
                "first run of %s here: exporting it to ONNX and verifying it against PyTorch, once "
                "(ATSS R-50: half a minute on two cores); later runs reuse %s",
                source.name,
                final,
            )
            started = time.monotonic()
            status = run(command)
            seconds = time.monotonic() - started
            written = all((staging / name).is_file() for name in ("model.onnx", "model.json"))
            if status != 0 or not written:
                shutil.rmtree(staging, ignore_errors=True)
                if status in REMEMBERED_STATUSES:
                    # A clean failure (the graph does not export, or differs from PyTorch):
                    # remembered. A signal (the OOM killer, a stop) or a crash is tried again.
                    record = {
                        "model": source.name,
                        "exit_status": status,
                        "host": socket.gethostname(),
                        "command": command,
                        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    }
                    failed.write_text(json.dumps(record, indent=2) + "\n")
                raise ExportCacheError(
                    f"`dyhead-export onnx` failed for {source.name} (exit status {status}; its output "
                    "is above)"
                )
            entry = {
                "key": self.key,
                "fields": self.fields,
                "files": _entry_files(staging),
                "export_seconds": round(seconds, 1),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            (staging / ENTRY_FILE).write_text(json.dumps(entry, indent=2) + "\n")
            try:
                os.replace(staging, final)
            except OSError:  # another host, whose lock this file system did not honour, was first
                shutil.rmtree(staging, ignore_errors=True)
                if entry_problem(final, self.key) is not None:
                    raise
                return CachedExport(final, "reused")
            failed.unlink(missing_ok=True)
        logger.warning("exported %s to ONNX in %.0f s (verified): %s", source.name, seconds, final)
        return CachedExport(final, "exported", seconds)


def _remove_abandoned(root: Path, name: str) -> None:
    """Remove the half-written folders of exports of ``name`` that were abandoned: older than
    :data:`ABANDONED_AFTER_S` (an export in progress on another host that shares the volume, if
    its lock did not reach this one, is younger)."""
    for partial in root.glob(f".{name}.partial-*"):
        try:
            age = time.time() - partial.stat().st_mtime
        except FileNotFoundError:
            continue
        if age > ABANDONED_AFTER_S:
            shutil.rmtree(partial, ignore_errors=True)


def _failure_text(failed: Path) -> str:
    try:
        record = json.loads(failed.read_text())
        status, when = record["exit_status"], record["when"]
    except (OSError, ValueError, KeyError, TypeError):
        status, when = "?", "?"
    return (
        f"`dyhead-export onnx` failed for this model (exit status {status} on {when}), not tried "
        f"again; delete {failed} to try again"
    )


def capture_exporter(command: Sequence[str]) -> tuple[int, str]:
    """Run a ``dyhead-export`` command line, its progress on stderr; returns the exit status and
    what it printed on stdout."""
    result = _run_child(command, subprocess.PIPE)
    return result.returncode, result.stdout


def cached_engine(
    source: ModelSource,
    max_batch: int | None = None,
    *,
    run: Callable[[Sequence[str]], tuple[int, str]] | None = None,
) -> Path:
    """The folder of ``source``'s TensorRT engine for this GPU and TensorRT version, from the
    engine cache: ``dyhead-export engine`` finds it there, or builds and verifies it once.

    Args:
        max_batch: the most images per batch the engine must take (None: one); more than the
            largest shape preset (8) is run in chunks of 8. ``$DYHEAD_ENGINE_PRECISION`` picks the
            precision, as in the GPU image (default: the command's, fp16).
        run: runs a command line, returns its exit status and standard output (default:
            :func:`capture_exporter`).

    Raises:
        ExportCacheError: the command failed (its output went to stderr).
    """
    run = run if run is not None else capture_exporter
    # The engine's profile takes the caller's batches (one image for predict and eval); the largest
    # shape preset takes 8, and the backend runs larger batches in chunks of what it takes.
    batch = min(max_batch or 1, LARGEST_PRESET_BATCH)
    precision = os.environ.get(ENGINE_PRECISION_VARIABLE)  # as the GPU image's entrypoint reads it
    command = [*exporter_command(), "engine", *source_arguments(source), "--max-batch", str(batch)]
    command += ["--precision", precision] if precision else []
    status, out = run(command)
    lines = out.strip().splitlines()
    folder = Path(lines[-1]) if lines else None
    if status != 0 or folder is None or not (folder / "model.plan").is_file():
        raise ExportCacheError(
            f"`dyhead-export engine` found or built no engine for {source.name} (exit status {status}; "
            "its output is above)"
        )
    return folder

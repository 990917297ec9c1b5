"""What a checkpoint may make us allocate: no more than its file can hold.

A pickle is a program: ``bytearray(3_000_000_000)`` takes 69 bytes to write and 3 GB to run, and
a zip entry of 2 MB can inflate to 2 GiB. Before a checkpoint is read for real, its pickles are
run once by :class:`BudgetProbe`, in which every global is an inert stand-in (nothing is
imported, called or allocated): a call that asks for more elements than the file's budget
(:func:`budget_of`) through an integer argument (``bytearray(n)``, ``numpy.ndarray(shape)``, a
storage or legacy tensor of ``n`` elements, a tensor view of a huge shape) is refused with
:class:`~dyhead_serve.checkpoint.report.CheckpointError`, and the storages the pickle declares
(their sizes in bytes) are collected, so that a zip's storage entries can be checked against
them (:func:`check_zip_entries`) before torch reads one.

Objects a pickle builds from its own bytes (strings, lists, array data) are bounded by the file
already. Memo indices are too: the probe, and the readers that follow it, use Python's own
unpickler (its memo is a dict), not the C one, which sizes its memo by the largest index.
"""

from __future__ import annotations

import math
import pickle
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from dyhead_serve.checkpoint.report import CheckpointError

__all__ = ["BudgetProbe", "budget_of", "check_zip_entries", "probe_pickles"]

# A budget in elements: the file size, and never under 1 MiB, so no small file is refused.
_MIN_BUDGET = 2**20
# torch.save stores zip entries uncompressed; a compressed entry may inflate this much, no more.
_MAX_INFLATION = 16

# Bytes per element of the storage types torch.save names in its persistent ids.
_STORAGE_ITEMSIZE = {
    "DoubleStorage": 8,
    "FloatStorage": 4,
    "HalfStorage": 2,
    "BFloat16Storage": 2,
    "LongStorage": 8,
    "IntStorage": 4,
    "ShortStorage": 2,
    "CharStorage": 1,
    "ByteStorage": 1,
    "BoolStorage": 1,
    "ComplexDoubleStorage": 16,
    "ComplexFloatStorage": 8,
    "UntypedStorage": 1,
}


def budget_of(path: Path) -> int:
    """How many elements a call in the pickle of ``path`` may ask for."""
    return max(path.stat().st_size, _MIN_BUDGET)


def _requested_elements(qualname: str, args: tuple[Any, ...]) -> int:
    """How many elements (or bytes) a call of ``qualname`` with ``args`` would allocate: the
    product of its size arguments; 0 for calls that allocate nothing by an integer."""
    module, _, name = qualname.rpartition(".")
    if qualname in ("builtins.bytearray", "builtins.bytes", "pickle.BYTEARRAY8"):
        sized: tuple[Any, ...] = args[:1]
    elif name in ("_reconstruct", "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3"):
        sized = args[1:2] if name == "_reconstruct" else args[2:3]  # the shape
    elif qualname == "numpy.ndarray" or name == "dtype":
        sized = args  # ndarray(shape, ...); dtype(("f8", (1000, 1000)))
    elif module.split(".")[0] == "torch" and (name.endswith(("Storage", "Tensor"))):
        sized = args  # FloatStorage(n), FloatTensor(n, m), UntypedStorage(n), Tensor(n)
    else:
        return 0
    return math.prod(_positive_ints(sized))


def _positive_ints(value: Any, depth: int = 0) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value] if value > 0 else []
    if isinstance(value, (tuple, list)) and depth < 4:
        return [n for item in value for n in _positive_ints(item, depth + 1)]
    return []


class _Stub:
    """Stands in for every global and everything built from one: accepts any use, keeps nothing."""

    qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Stub:
        return _Stub()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass


class BudgetProbe(pickle._Unpickler):
    """Runs a pickle with stand-ins for every global, refusing calls over ``budget`` elements and
    collecting the storages it declares (``storages``: key -> bytes)."""

    # set by pickle._Unpickler.load(), which typeshed does not describe
    read: Callable[[int], bytes]
    append: Callable[[Any], None]

    def __init__(self, file: BinaryIO, path: Path, budget: int) -> None:
        super().__init__(file, encoding="latin1")
        self.path = path
        self.budget = budget
        self.storages: dict[str, int] = {}

    def _load_bytearray8(self) -> None:
        # Python's unpickler zero-fills bytearray(n) before reading n bytes: bound n first.
        (size,) = struct.unpack("<Q", self.read(8))
        self.check("pickle.BYTEARRAY8", (size,))
        data = self.read(size)
        if len(data) < size:
            raise pickle.UnpicklingError("pickle data was truncated")
        self.append(bytearray(data))

    dispatch: ClassVar[dict[int, Any]] = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8

    def find_class(self, module: str, name: str) -> Any:
        probe = self
        qualname = f"{'builtins' if module == '__builtin__' else module}.{name}"  # Python 2 spelling

        class Global(_Stub):
            def __new__(cls, *args: Any, **kwargs: Any) -> Global:
                probe.check(qualname, args)
                return super().__new__(cls)

        Global.qualname = qualname
        return Global

    def check(self, qualname: str, args: tuple[Any, ...]) -> None:
        """Refuse a call of ``qualname`` that asks for more than the budget."""
        requested = _requested_elements(qualname, args)
        if requested > self.budget:
            raise CheckpointError(
                f"checkpoint {self.path}: its pickle asks {qualname} for {requested} elements, far more "
                f"than the file ({self.path.stat().st_size} bytes) holds; refusing it"
            )

    def persistent_load(self, pid: Any) -> Any:
        """torch's storage ids: ``("storage", storage type, key, location, numel, ...)``."""
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage":
            storage_type, key, numel = pid[1], str(pid[2]), pid[4]
            name = getattr(storage_type, "qualname", "").rpartition(".")[2]
            if isinstance(numel, int) and not isinstance(numel, bool) and numel >= 0:
                self.storages[key] = numel * _STORAGE_ITEMSIZE.get(name, 1)
        return _Stub()


def probe_pickles(
    file: BinaryIO, path: Path, budget: int, count: int = 1, storage_budget: int | None = None
) -> dict[str, int]:
    """Run ``count`` consecutive pickles of ``file`` through :class:`BudgetProbe`; the storages
    they declare (key -> bytes).

    Raises:
        CheckpointError: a call asks for more than ``budget`` elements, or the storages declared
            add up to more than ``storage_budget`` bytes (default ``budget``).
    """
    storages: dict[str, int] = {}
    for _ in range(count):
        probe = BudgetProbe(file, path, budget)
        try:
            probe.load()
        except CheckpointError:
            raise
        except Exception as exc:  # malformed: left for the reader, which names the reason
            raise _MalformedPickleError from exc
        storages.update(probe.storages)
    declared = sum(storages.values())
    if declared > (budget if storage_budget is None else storage_budget):
        raise CheckpointError(
            f"checkpoint {path}: its pickle declares {declared} bytes of tensor storage, more than the "
            f"file ({path.stat().st_size} bytes) holds; refusing it"
        )
    return storages


class _MalformedPickleError(Exception):
    """The probe could not run the pickle; the real reader then reports why."""


def check_zip_entries(path: Path) -> None:
    """Refuse a zip checkpoint whose entries would inflate far beyond the file before torch reads
    any: an entry inflating more than :data:`_MAX_INFLATION` times, a pickle asking for more than
    the file holds, or a storage entry larger than its tensors declare.

    Raises:
        CheckpointError: as above.
    """
    budget = budget_of(path)
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            for info in infos:
                if info.file_size > _MAX_INFLATION * info.compress_size + _MIN_BUDGET:
                    raise CheckpointError(
                        f"checkpoint {path}: zip entry {info.filename!r} inflates from {info.compress_size} "
                        f"to {info.file_size} bytes; refusing it"
                    )
            pickles = [info for info in infos if info.filename.rpartition("/")[2] == "data.pkl"]
            if len(pickles) != 1:
                return  # not a torch.save archive: torch.load says so
            prefix = pickles[0].filename[: -len("data.pkl")]
            try:
                with archive.open(pickles[0]) as pickled:
                    storage_budget = _MAX_INFLATION * budget  # stored entries may be compressed
                    storages = probe_pickles(pickled, path, budget, storage_budget=storage_budget)  # type: ignore[arg-type]
            except _MalformedPickleError:
                return  # torch.load reports the corrupt pickle
            by_name = {info.filename: info for info in infos}
            for key, declared in storages.items():
                record = by_name.get(f"{prefix}data/{key}")
                if record is not None and record.file_size > declared:
                    raise CheckpointError(
                        f"checkpoint {path}: storage entry {record.filename!r} inflates to "
                        f"{record.file_size} bytes, but its tensors declare {declared}; refusing it"
                    )
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise CheckpointError(f"checkpoint {path}: corrupt zip archive ({reason})") from exc


def probe_file(file: BinaryIO, path: Path, budget: int, count: int = 1) -> None:
    """:func:`probe_pickles`, leaving a pickle the probe cannot run to the real reader."""
    try:
        probe_pickles(file, path, budget, count)
    except _MalformedPickleError:
        return

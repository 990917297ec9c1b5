"""What loading a checkpoint tells its caller: the errors and the report of mismatched keys.

:class:`LoadReport` compares a checkpoint's tensors with a model's ``state_dict()`` by name and
shape (see :func:`~dyhead_serve.checkpoint.load.compare_state_dicts`); its :meth:`LoadReport.format`
is the readable multi-line text a :class:`CheckpointMismatchError` carries.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from dyhead_serve.errors import UserError

__all__ = ["MAX_REPORT_LINES", "CheckpointError", "CheckpointMismatchError", "LoadReport", "ShapeMismatch"]

# Lines per section of LoadReport.format() before "... and N more".
MAX_REPORT_LINES = 20


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be read: missing, corrupt, or holding code we refuse to run.

    The message is one line naming the file and the reason.
    """


@dataclass(frozen=True)
class ShapeMismatch:
    """A tensor present in both the checkpoint and the model, with different shapes."""

    name: str
    file_shape: tuple[int, ...]
    model_shape: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.name}: {self.file_shape} in file vs {self.model_shape} in model"


@dataclass
class LoadReport:
    """How a checkpoint's tensors match a model's ``state_dict()``.

    Attributes:
        missing_keys: in the model but not in the checkpoint, in the model's order.
        unexpected_keys: in the checkpoint but not in the model, in the checkpoint's order.
        shape_mismatches: in both, with different shapes; these are never loaded.
        source: where the checkpoint came from (a path), for messages.
        hint: a last line for the reader (what the mismatch suggests), or empty.
    """

    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    shape_mismatches: list[ShapeMismatch] = field(default_factory=list)
    source: str = "the given state dict"
    hint: str = ""

    @property
    def ok(self) -> bool:
        """True when every model tensor has a same-shaped counterpart and nothing is left over."""
        return not (self.missing_keys or self.unexpected_keys or self.shape_mismatches)

    def format(self) -> str:
        """A readable multi-line report.

        Keys are grouped by their parent module (``head.cls_logits.{weight, bias}``) and each
        section shows at most :data:`MAX_REPORT_LINES` lines, then ``... and N more``.
        """
        if self.ok:
            return f"checkpoint {self.source} matches the model"
        counts = ", ".join(
            _plural(n, what)
            for n, what in (
                (len(self.missing_keys), "missing key"),
                (len(self.unexpected_keys), "unexpected key"),
                (len(self.shape_mismatches), "shape mismatch"),
            )
            if n
        )
        lines = [f"checkpoint {self.source} does not match the model: {counts}"]
        lines += _section(
            f"missing keys (in the model, not in the checkpoint): {len(self.missing_keys)}",
            _group_keys(self.missing_keys),
        )
        lines += _section(
            f"unexpected keys (in the checkpoint, not in the model): {len(self.unexpected_keys)}",
            _group_keys(self.unexpected_keys),
        )
        lines += _section(
            f"shape mismatches (not loaded): {len(self.shape_mismatches)}",
            [str(mismatch) for mismatch in self.shape_mismatches],
        )
        if self.hint:
            lines.append(self.hint)
        return "\n".join(lines)


class CheckpointMismatchError(CheckpointError):
    """A checkpoint whose tensors do not match the model; ``report`` says how."""

    def __init__(self, report: LoadReport) -> None:
        super().__init__(report.format())
        self.report = report


def _plural(count: int, noun: str) -> str:
    if count == 1:
        return f"1 {noun}"
    return f"{count} {noun}es" if noun.endswith("ch") else f"{count} {noun}s"


def _group_keys(keys: Iterable[str]) -> list[str]:
    """``a.b.weight, a.b.bias, c`` -> ``a.b.{weight, bias}, c``, in first-seen order."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        parent, _, leaf = key.rpartition(".")
        groups.setdefault(parent, []).append(leaf)
    lines = []
    for parent, leaves in groups.items():
        prefix = f"{parent}." if parent else ""
        lines.append(f"{prefix}{leaves[0]}" if len(leaves) == 1 else f"{prefix}{{{', '.join(leaves)}}}")
    return lines


def _section(title: str, lines: list[str]) -> list[str]:
    if not lines:
        return []
    shown = [f"  {line}" for line in lines[:MAX_REPORT_LINES]]
    if len(lines) > MAX_REPORT_LINES:
        shown.append(f"  ... and {len(lines) - MAX_REPORT_LINES} more")
    return [title, *shown]

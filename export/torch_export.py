"""The ``torch.export`` ONNX exporter (``dyhead-export onnx --exporter dynamo``): capture with
symbolic sizes, find the sizes the capture assumed away, check the graph there, translate.

torch.export, with guards deferred to run-time asserts (as ``torch.onnx.export(dynamo=True)``
captures), does not fail where a model's shape arithmetic holds only for some sizes: it narrows
the declared range of an axis, or records an assert (``Ne(batch, 1)``, ``P6 != P7``), and keeps
going. The ONNX graph carries none of these asserts. Many are harmless (torch assumes sizes are
not 1 to avoid specialising broadcasts; the graph is right at 1 all the same), some are not (a
branch taken on the example's size). So every assumption is evaluated over a grid of sizes the
export promises, and the graph is run against PyTorch at the smallest size that breaks each
distinct set of assumptions: the export is refused, naming the size and the assumption, where
ONNX Runtime and PyTorch disagree. A range with an upper bound is refused outright.
"""

from __future__ import annotations

import itertools
import logging
import re
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from .errors import ExportError

__all__ = [
    "SizePoint",
    "TorchExportError",
    "assumption_violations",
    "capture",
    "translate",
    "write_torch_export",
]

logger = logging.getLogger(__name__)

# The sizes assumptions are evaluated at: batches 1-3 (a dynamic batch), 1-32 blocks of the size
# divisibility per axis (4096 px at 128). The graph runs at the sizes each assumption needs, then
# at further distinct sets of broken assumptions up to this many sizes in all.
GRID_BATCHES = (1, 2, 3)
GRID_BLOCKS = tuple(range(1, 33))
MAX_CHECKED_SIZES = 10
# PyTorch vs ONNX Runtime on the raw outputs, relative to the outputs' scale: float32 rounding of
# different kernels reached 7e-4 on a narrow random-weight ATSS; a graph specialised to other
# sizes is off by the outputs' own scale.
RELATIVE_TOLERANCE = 1e-2


class TorchExportError(ExportError):
    """torch.export cannot capture the model, or its graph is wrong at sizes it promises."""


@dataclass(frozen=True, order=True)
class SizePoint:
    """An input size: batch and height/width in blocks of the size divisibility."""

    batch: int
    height_blocks: int
    width_blocks: int

    def describe(self, divisibility: int) -> str:
        return f"batch {self.batch}, {self.height_blocks * divisibility}x{self.width_blocks * divisibility}"


def capture(
    model: nn.Module, inputs: tuple[Tensor, Tensor], *, fixed_batch: bool, size_divisibility: int
) -> torch.export.ExportedProgram:
    """``torch.export`` with a free batch (unless fixed) and height/width as multiples of
    ``size_divisibility`` (the padding the input spec guarantees). The example batch must not be
    1: torch.export specialises sizes 0 and 1."""
    from torch.fx.experimental import _config as fx_config

    if not hasattr(fx_config, "backed_size_oblivious"):
        raise TorchExportError(f"--exporter dynamo needs torch >= 2.7 (this is {torch.__version__})")
    dim = torch.export.Dim
    batch = dim.STATIC if fixed_batch else dim("batch", min=1)
    height = size_divisibility * dim("height_blocks", min=1)
    width = size_divisibility * dim("width_blocks", min=1)
    dynamic_shapes = ({0: batch, 2: height, 3: width}, {0: batch, 1: dim.STATIC})
    # As torch.onnx.export(dynamo=True) captures a module: size-oblivious reasoning about sizes 0
    # and 1, guards that the dims cannot express deferred to run-time asserts. Without them,
    # capturing Swin-T's window padding takes hours instead of minutes in sympy. Unlike
    # torch.onnx.export, no retry with the constraint fixes torch suggests (they could fix an axis).
    oblivious = fx_config.patch(backed_size_oblivious=True)  # type: ignore[attr-defined]
    with warnings.catch_warnings(), torch.no_grad(), oblivious:
        warnings.simplefilter("ignore")
        try:
            return torch.export.export(
                model,
                inputs,
                dynamic_shapes=dynamic_shapes,
                strict=False,
                prefer_deferred_runtime_asserts_over_guards=True,
            )
        except Exception as exc:  # torch.export raises many types; each one means "cannot capture"
            raise TorchExportError(
                f"torch.export cannot capture {type(model).__name__}: {summary(exc)}"
            ) from exc


def _input_symbols(program: torch.export.ExportedProgram) -> tuple[Any, dict[int, Any]]:
    """The shape environment and, per dynamic axis of ``images`` (0, 2, 3), its one symbol."""
    images = next((n for n in program.graph.nodes if n.op == "placeholder" and n.name == "images"), None)
    if images is None or "val" not in images.meta:
        raise TorchExportError("the captured program has no input named images to check sizes on")
    shape_env, symbols = None, {}
    for axis in (0, 2, 3):
        size = images.meta["val"].shape[axis]
        if isinstance(size, torch.SymInt):
            shape_env = size.node.shape_env
            free = size.node.expr.free_symbols
            if len(free) != 1:
                raise TorchExportError(f"torch.export gave the images' axis {axis} the size {size}")
            symbols[axis] = next(iter(free))
    return shape_env, symbols


def _deferred_asserts(program: torch.export.ExportedProgram, shape_env: Any, symbols: set[Any]) -> list[Any]:
    """The distinct size expressions the program asserts at run time (those known to hold left out)."""
    import sympy

    found: dict[Any, None] = {}
    for node in program.graph.nodes:
        if node.target is not torch.ops.aten._assert_scalar.default:
            continue
        argument = node.args[0]
        value = argument.meta.get("val") if isinstance(argument, torch.fx.Node) else argument
        if value is True:
            continue
        if not isinstance(value, torch.SymBool):
            raise TorchExportError(
                f"torch.export recorded a run-time assert this export cannot read: {node.args}"
            )
        expr = shape_env.replace(value.node.expr) if shape_env is not None else value.node.expr
        if expr is sympy.true:
            continue
        if expr.free_symbols - symbols:
            raise TorchExportError(
                f"torch.export's graph assumes {expr}, on sizes that are not the input's; "
                "use --exporter torchscript"
            )
        found.setdefault(expr, None)
    return list(found)


def assumption_violations(
    program: torch.export.ExportedProgram, size_divisibility: int, fixed_batch: int | None = None
) -> dict[SizePoint, list[str]]:
    """The sizes of the grid at which the capture's recorded assumptions do not hold, each with
    the assumptions it breaks (a narrowed range, a deferred run-time assert). torch.export also
    assumes sizes of 1 away without recording it (size-oblivious reasoning): that is why
    ``sizes_to_check`` always adds the smallest input.

    Raises:
        TorchExportError: an axis narrowed to an upper bound, or an assumption this check cannot
            evaluate.
    """
    import sympy
    from torch.utils._sympy.numbers import int_oo

    shape_env, symbols = _input_symbols(program)
    names = {0: "batch", 2: "height", 3: "width"}
    unit = {0: 1, 2: size_divisibility, 3: size_divisibility}
    ranges: dict[int, tuple[int, int | None]] = {}
    for axis, symbol in symbols.items():
        allowed = program.range_constraints.get(symbol)
        if allowed is not None:
            ranges[axis] = (int(allowed.lower), None if allowed.upper == int_oo else int(allowed.upper))
    bounded = [
        f"{names[a]} {lo * unit[a]} to {hi * unit[a]}" for a, (lo, hi) in ranges.items() if hi is not None
    ]
    if bounded:
        raise TorchExportError(
            f"torch.export captured the model only for {', '.join(bounded)}: the graph assumes sizes "
            "near the example's (run-time asserts ONNX does not keep); use --exporter torchscript"
        )
    asserts = _deferred_asserts(program, shape_env, set(symbols.values()))
    readable = {symbol: sympy.Symbol(names[axis] if axis == 0 else f"{names[axis]}_blocks", integer=True)
                for axis, symbol in symbols.items()}  # fmt: skip
    grid = {0: GRID_BATCHES if 0 in symbols else (fixed_batch or 1,), 2: GRID_BLOCKS, 3: GRID_BLOCKS}
    axis_of = {symbol: axis for axis, symbol in symbols.items()}
    # Each assert over its own symbols only (most involve one axis): where it fails.
    failing: list[tuple[str, list[int], set[tuple[int, ...]]]] = []
    for expr in asserts:
        axes = sorted(axis_of[symbol] for symbol in expr.free_symbols)
        where = set()
        for values in itertools.product(*(grid[a] for a in axes)):
            result = expr.xreplace({symbols[a]: v for a, v in zip(axes, values, strict=True)})
            if result not in (sympy.true, sympy.false):
                raise TorchExportError(f"cannot evaluate torch.export's assumption {expr} at {values}")
            if result is sympy.false:
                where.add(values)
        if where:
            failing.append((str(expr.xreplace(readable)), axes, where))
    violations: dict[SizePoint, list[str]] = {}
    for b, h, w in itertools.product(grid[0], grid[2], grid[3]):
        at = {0: b, 2: h, 3: w}
        broken = [f"{names[a]} >= {lo * unit[a]}" for a, (lo, _) in ranges.items() if at[a] < lo]
        broken += [text for text, axes, where in failing if tuple(at[a] for a in axes) in where]
        if broken:
            violations[SizePoint(b, h, w)] = broken
    return violations


def _size(point: SizePoint) -> tuple[int, SizePoint]:
    return point.batch * point.height_blocks * point.width_blocks, point


def sizes_to_check(violations: dict[SizePoint, list[str]], fixed_batch: int | None) -> list[SizePoint]:
    """Where to run the graph: always the smallest input (one block, batch 1 or the fixed batch:
    torch.export assumes sizes of 1 away without recording it); for each assumption, the size
    that breaks it with the fewest others (then the smallest); then the smallest size of each
    further distinct set of broken assumptions, up to MAX_CHECKED_SIZES in all."""
    points = [SizePoint(fixed_batch or 1, 1, 1)]
    by_size = sorted(violations, key=_size)
    for assumption in dict.fromkeys(a for p in by_size for a in violations[p]):
        alone = min(
            (p for p in by_size if assumption in violations[p]), key=lambda p: (len(violations[p]), _size(p))
        )
        if alone not in points:
            points.append(alone)
    seen = {frozenset(violations.get(p, [])) for p in points}
    for point in by_size:
        if len(points) >= MAX_CHECKED_SIZES:
            break
        if frozenset(violations[point]) not in seen:
            seen.add(frozenset(violations[point]))
            points.append(point)
    return sorted(points, key=_size)


def _differs(reference: np.ndarray, value: np.ndarray) -> str | None:
    """How an output of the graph differs from PyTorch's, or None: exactly for integers and
    booleans; for floats NaN and infinities in the same places, the finite values within
    RELATIVE_TOLERANCE of the outputs' scale."""
    if not np.issubdtype(reference.dtype, np.floating):
        return None if np.array_equal(reference, value) else "different values"
    value = value.astype(reference.dtype, copy=False)
    finite = np.isfinite(reference)
    same_special = np.array_equal(np.isnan(reference), np.isnan(value)) and np.array_equal(
        reference[~finite & ~np.isnan(reference)], value[~finite & ~np.isnan(reference)]
    )
    if not same_special or not np.isfinite(value[finite]).all():
        return "NaN or infinity in other places"
    scale = max(1.0, float(np.abs(reference[finite]).max(initial=0.0)))
    difference = float(np.abs(reference[finite] - value[finite]).max(initial=0.0))
    if difference <= RELATIVE_TOLERANCE * scale:
        return None
    return f"by {difference:.3g} (outputs up to {scale:.3g})"


def check_graph_at_sizes(
    model: nn.Module, graph: onnx.ModelProto, points: list[SizePoint], size_divisibility: int,
    violations: dict[SizePoint, list[str]], device: torch.device,
) -> None:  # fmt: skip
    """Run the graph (DeformConv flavour) in ONNX Runtime and the model in PyTorch at ``points``
    on the same random images; raise TorchExportError where they disagree."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime's errors have no common type
        raise TorchExportError(f"ONNX Runtime cannot load torch.export's graph: {_first_line(exc)}") from exc
    generator = torch.Generator().manual_seed(0)
    for point in points:
        height, width = point.height_blocks * size_divisibility, point.width_blocks * size_divisibility
        images = torch.randn(point.batch, 3, height, width, generator=generator)
        sizes = torch.tensor([[height, width]] * point.batch, dtype=torch.int64)
        where = point.describe(size_divisibility)
        recorded = "; ".join(violations.get(point, [])) or "none recorded"
        advice = f"broken there: {recorded}, and sizes of 1 if any; use --exporter torchscript"
        try:
            with torch.no_grad():
                expected = model(images.to(device), sizes.to(device))
        except Exception as exc:  # the model itself cannot run this size: nothing to compare
            raise TorchExportError(f"PyTorch cannot run the model at {where} ({_first_line(exc)})") from exc
        try:
            got = session.run(list(expected), {"images": images.numpy(), "image_sizes": sizes.numpy()})
        except Exception as exc:  # ONNX Runtime's errors have no common type
            raise TorchExportError(
                f"torch.export's graph fails at {where} ({_first_line(exc)}); its assumptions {advice}"
            ) from exc
        for name, value in zip(expected, got, strict=True):
            reference = expected[name].detach().cpu().numpy()
            if reference.shape != value.shape:
                raise TorchExportError(
                    f"torch.export's graph gives {name} of shape {list(value.shape)} at {where}, PyTorch "
                    f"{list(reference.shape)}; its assumptions {advice}"
                )
            difference = _differs(reference, value)
            if difference is not None:
                raise TorchExportError(
                    f"torch.export's graph is wrong at {where}: {name} differs from PyTorch {difference}; "
                    f"its assumptions {advice}"
                )
        logger.info("torch.export graph = PyTorch at %s (assumptions broken there: %s)", where, recorded)


def translate(
    program: torch.export.ExportedProgram, output_names: list[str], *, dcn: str, opset: int, model_name: str
) -> onnx.ModelProto:
    """The captured program as ONNX (ONNX Script), deformable convs as ``dcn`` nodes."""
    from dyhead_serve.ops.onnx_translation import deform_conv_translation_table

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            onnx_program = torch.onnx.export(
                program,
                dynamo=True,
                opset_version=opset,
                input_names=["images", "image_sizes"],
                output_names=output_names,
                custom_translation_table=deform_conv_translation_table(dcn, opset),
                optimize=True,
                verbose=False,
            )
        except torch.onnx.errors.OnnxExporterError as exc:
            raise TorchExportError(f"translating {model_name} to ONNX failed: {summary(exc)}") from exc
    if onnx_program is None:  # torch.onnx.export returns None only for the TorchScript exporter
        raise TorchExportError("torch.onnx.export(dynamo=True) returned no ONNX program")
    graph = onnx_program.model_proto
    name_symbolic_dims(graph, {0: "batch", 2: "height_blocks", 3: "width_blocks"})
    return graph


def write_torch_export(
    model: nn.Module, inputs: tuple[Tensor, Tensor], output_names: list[str], path: Any,
    *, fixed_batch: bool, dcn: str, opset: int, size_divisibility: int,
) -> None:  # fmt: skip
    """Capture once, check the DeformConv graph at the sizes the capture assumed away, write
    ``path`` in the ``dcn`` flavour (the plugin flavour translated from the same capture)."""
    name = type(model).__name__
    program = capture(model, inputs, fixed_batch=fixed_batch, size_divisibility=size_divisibility)
    batch = int(inputs[0].shape[0]) if fixed_batch else None
    violations = assumption_violations(program, size_divisibility, batch)
    graph = translate(program, output_names, dcn="onnx", opset=opset, model_name=name)
    points = sizes_to_check(violations, batch)
    check_graph_at_sizes(model, graph, points, size_divisibility, violations, inputs[0].device)
    if dcn != "onnx":
        graph = translate(program, output_names, dcn=dcn, opset=opset, model_name=name)
    onnx.save_model(graph, str(path))


_SYMBOL = re.compile(r"\bs\d+\b")  # torch.export's size symbols: s0, s17, ...


def name_symbolic_dims(graph: onnx.ModelProto, axis_names: dict[int, str]) -> None:
    """Rename torch.export's size symbols after the axes of the first input that hold them.

    The graph's sizes are expressions of symbols (``s34``, ``128*s74``, ``341*s5*s74``); naming
    each after its axis of ``images`` (``batch``, ``128*height_blocks``) makes model.json and the
    graph readable. Symbols of no named axis keep their names.
    """
    first = graph.graph.input[0].type.tensor_type.shape.dim
    names: dict[str, str] = {}
    for axis, name in axis_names.items():
        symbols = set(_SYMBOL.findall(first[axis].dim_param)) if axis < len(first) else set()
        if len(symbols) == 1:
            names[symbols.pop()] = name
    values = [*graph.graph.input, *graph.graph.output, *graph.graph.value_info]
    for value in values:
        for d in value.type.tensor_type.shape.dim:
            if d.dim_param:
                d.dim_param = _SYMBOL.sub(lambda m: names.get(m.group(0), m.group(0)), d.dim_param)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def summary(exc: BaseException) -> str:
    """An exception's first line (terminal colours removed), where torch says it was caused, and
    the first line of its cause, without torch's advice."""
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    caused = [line for line in lines[1:] if line.startswith("Caused by")]
    parts = [_first_line(exc), *caused[:1]]
    cause = exc.__cause__
    if cause is not None and not caused:
        parts.append(f"(cause: {_first_line(cause)})")
    return " ".join(parts)

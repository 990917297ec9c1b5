"""PyTorch -> ONNX: the tensor-in, tensor-out network of a detector, with dynamic batch and
image size, checked with ``onnx.checker`` and shape inference."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import Tensor, nn

from dyhead_serve.ops.onnx_node import DCN_FLAVOURS, MIN_OPSET
from dyhead_serve.runtime.artifact import ModelArtifact
from dyhead_serve.runtime.options import PRECISIONS
from dyhead_serve.runtime.torch_backend import TorchBackend

from .errors import ExportError
from .external_weights import WEIGHTS_FILE, share_weights
from .fp16 import write_float16_onnx
from .torch_export import write_torch_export

__all__ = ["DEFAULT_EXPORTER", "EXPORTERS", "ExportError", "check_onnx", "export_onnx", "input_dims"]

logger = logging.getLogger(__name__)


# "torchscript": torch.onnx.export(dynamo=False), deprecated since PyTorch 2.9; "dynamo": torch.export
# and ONNX Script, torch's default. The default stays TorchScript until the new path is equal on every
# model and flavour (see README, "Export and runtimes").
EXPORTERS = ("torchscript", "dynamo")
DEFAULT_EXPORTER = "torchscript"


def _dummy_inputs(batch: int, size_divisibility: int, *, generic: bool = False) -> tuple[Tensor, Tensor]:
    """Example inputs: 2x3 blocks of the size divisibility for a trace. For torch.export
    (``generic``) at least 256x384, so that a padding-to-32 model's coarsest FPN level (P7, stride
    128) is 2x3 like a padding-to-128 one's: torch.export narrows a size's range on relations that
    hold only for the example (a level of size 1), and ``_check_size_ranges`` refuses that."""
    div = max(size_divisibility, 32)
    if generic:
        height, width = -(-256 // div) * div, -(-384 // div) * div
    else:
        height, width = 2 * div, 3 * div
    images = torch.zeros(batch, 3, height, width)
    image_sizes = torch.tensor([[height, width]] * batch, dtype=torch.int64)
    return images, image_sizes


def check_onnx(path: Path, *, strict_shapes: bool = True) -> onnx.ModelProto:
    """Run ``onnx.checker`` (full check) and shape inference on ``path``; raise ExportError."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path))
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=strict_shapes)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{path}: the exported graph fails ONNX's checks: {exc}") from exc
    return inferred


def _state_static_output_dims(path: Path) -> None:
    """Write into the graph's outputs the extents ONNX shape inference (with data propagation)
    finds to be numbers where the exporter left a name: Faster R-CNN's proposal slots are fixed,
    though the TorchScript exporter's own inference cannot see it through shape arithmetic."""
    model = onnx.load(str(path), load_external_data=False)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except onnx.shape_inference.InferenceError:
        return  # check_onnx reports it
    found = {v.name: v.type.tensor_type.shape for v in inferred.graph.output}
    changed = False
    for output in model.graph.output:
        shape = found.get(output.name)
        dims = output.type.tensor_type.shape.dim
        if shape is None or len(shape.dim) != len(dims):
            continue
        for declared, known in zip(dims, shape.dim, strict=True):
            if declared.dim_param and known.HasField("dim_value"):
                declared.dim_value = known.dim_value  # clears dim_param (a oneof)
                changed = True
    if changed:
        onnx.save(model, str(path))


def _tensor_info(value: onnx.ValueInfoProto) -> dict[str, Any]:
    tensor_type = value.type.tensor_type
    dims: list[int | str] = [d.dim_param if d.dim_param else int(d.dim_value) for d in tensor_type.shape.dim]
    return {
        "name": value.name,
        "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name,
        "shape": dims,
    }


def _write_torchscript(
    model: nn.Module, inputs: tuple[Tensor, Tensor], output_names: list[str], path: Path,
    *, dims: dict[str, list[int | str]], dcn: str, opset: int, keep_batch_norms: bool,
) -> None:  # fmt: skip
    """The TorchScript exporter (deprecated since PyTorch 2.9): a trace, axes named dynamic."""
    from dyhead_serve.ops.onnx_symbolic import deform_conv_onnx_symbolic

    dynamic_axes = {
        name: {i: d for i, d in enumerate(shape) if isinstance(d, str)} for name, shape in dims.items()
    }
    # Outputs: the batch axis is named; the others are whatever the trace's shape inference finds,
    # so that a fixed extent (Faster R-CNN's proposal slots) stays a number in the graph and
    # an extent that follows the image size (a dense detector's anchors) stays symbolic.
    if isinstance(dims["images"][0], str):
        for name in output_names:
            dynamic_axes[name] = {0: "batch"}
    with deform_conv_onnx_symbolic(dcn, opset), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings on shape arithmetic, the deprecation
        torch.onnx.export(
            model,
            inputs,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["images", "image_sizes"],
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
            # EVAL folds batch norms into the convolutions' weights; PRESERVE (the model is in
            # eval mode) keeps them, so each weight of the state dict is an initializer as is.
            training=torch.onnx.TrainingMode.PRESERVE if keep_batch_norms else torch.onnx.TrainingMode.EVAL,
        )


def input_dims(model: nn.Module, batch: int | None) -> dict[str, list[int | str]]:
    """The graph inputs' dimensions as the export writes them: an int where fixed, a name where
    dynamic. A model whose forward loops over images in Python (``traces_dynamic_batch = False``,
    Faster R-CNN) gets a fixed batch of 1 when none is asked: a trace records one image, so a
    dynamic batch would silently mishandle the others (runtimes split batches instead).

    Args:
        model: the detector.
        batch: a fixed batch size, or None for a dynamic one where the model allows it.

    Returns:
        ``{"images": [N, 3, "height", "width"], "image_sizes": [N, 2]}``, N an int or ``"batch"``
        (the TorchScript exporter's names; the torch.export one names height and width
        ``{divisibility}*height_blocks`` and ``{divisibility}*width_blocks``).
    """
    if batch is None and not getattr(model, "traces_dynamic_batch", True):
        batch = 1
    n: int | str = batch if batch is not None else "batch"
    return {"images": [n, 3, "height", "width"], "image_sizes": [n, 2]}


def export_onnx(
    backend: TorchBackend,
    out_dir: str | Path,
    *,
    opset: int = MIN_OPSET,
    batch: int | None = None,
    dcn: str = "onnx",
    exporter: str = DEFAULT_EXPORTER,
    provenance: dict[str, Any] | None = None,
    on_step: Callable[[str], None] | None = None,
    external_weights: bool = False,
    precision: str = "fp32",
) -> Path:
    """Write ``out_dir/model.onnx`` and ``out_dir/model.json`` for a torch backend's detector.

    Args:
        backend: the detector, its preprocessing, decoder and class names.
        opset: ONNX opset (>= 19, the first with ``DeformConv``).
        batch: a fixed batch size, or None for a dynamic one. Height and width are always dynamic
            (multiples of the input spec's size divisibility).
        dcn: ``"onnx"`` (opset ``DeformConv``) or ``"plugin"`` (nodes of our TensorRT plugin).
        exporter: ``"torchscript"`` (torch's TorchScript-based exporter, ``dynamo=False``) or
            ``"dynamo"`` (``torch.export`` and ONNX Script, torch's default).
        provenance: recorded in model.json (config, weights checksum, ...).
        on_step: called with a short description as each stage starts (progress reporting).
        external_weights: also write the state dict as ``model.safetensors`` and have the graph
            read its weights from that file (see :mod:`.external_weights`): one copy of the
            weights for ONNX Runtime and PyTorch. Batch norms are then kept as graph nodes
            (ONNX Runtime fuses them when it loads the graph) so that the weights stay as
            trained.
        precision: ``"fp32"``, or ``"fp16"`` for a mixed-precision graph (float16 weights and
            compute, float32 where float16 loses accuracy; inputs and outputs stay float32; see
            :mod:`.fp16`). Recorded in model.json as ``provenance.precision``.

    Returns:
        the path of model.onnx.
    """
    if dcn not in DCN_FLAVOURS:
        raise ExportError(f"--dcn must be one of {DCN_FLAVOURS}, got {dcn!r}")
    if exporter not in EXPORTERS:
        raise ExportError(f"--exporter must be one of {EXPORTERS}, got {exporter!r}")
    if opset < MIN_OPSET:
        raise ExportError(f"--opset must be at least {MIN_OPSET} (DeformConv), got {opset}")
    if batch is not None and batch < 1:
        raise ExportError(f"--batch must be a positive integer or 'dynamic', got {batch}")
    if precision not in PRECISIONS:
        raise ExportError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
    if external_weights and exporter == "dynamo":
        raise ExportError(
            "--external-weights needs --exporter torchscript: the dynamo exporter's optimiser folds "
            "batch norms into the convolutions' weights, so the graph's weights are no longer the "
            "checkpoint's tensors and could not be shared with model.safetensors"
        )
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".export-partial-", dir=out))
    except OSError as exc:
        raise ExportError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    # Everything is written into a folder of its own inside `out`, then moved into place file by
    # file: a failure (a full disk, say) leaves no truncated model.onnx, and an earlier export in
    # `out` stays whole.
    try:
        _export_into(
            backend, staging, opset=opset, batch=batch, dcn=dcn, exporter=exporter,
            provenance=provenance, on_step=on_step, external_weights=external_weights,
            precision=precision,
        )  # fmt: skip
        for name in (WEIGHTS_FILE, "model.onnx", "model.json"):
            if (staging / name).exists():
                os.replace(staging / name, out / name)
    except OSError as exc:
        raise ExportError(
            f"cannot write the export to {out} ({exc.strerror or exc}); nothing was written"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("wrote %s and model.json", out / "model.onnx")
    return out / "model.onnx"


def _export_into(
    backend: TorchBackend,
    out: Path,
    *,
    opset: int,
    batch: int | None,
    dcn: str,
    exporter: str,
    provenance: dict[str, Any] | None,
    on_step: Callable[[str], None] | None,
    external_weights: bool,
    precision: str,
) -> None:
    """:func:`export_onnx`'s work, writing model.onnx, model.json (and model.safetensors) into
    the folder ``out``."""
    step = on_step or (lambda _: None)
    onnx_path = out / "model.onnx"
    model: nn.Module = backend.model.eval()
    dims = input_dims(model, batch)
    if batch is None and isinstance(dims["images"][0], int):
        logger.warning("%s traces with a fixed batch: exporting with batch 1", type(model).__name__)
    fixed_batch = dims["images"][0] if isinstance(dims["images"][0], int) else None
    size_divisibility = max(backend.input_spec.size_divisibility, 32)
    # torch.export specialises a batch of 1 to a constant: trace a dynamic batch with 2 images.
    example_batch = fixed_batch or (2 if exporter == "dynamo" else 1)
    images, image_sizes = _dummy_inputs(example_batch, size_divisibility, generic=exporter == "dynamo")
    images, image_sizes = images.to(backend.device), image_sizes.to(backend.device)
    with torch.no_grad():
        output_names = list(model(images, image_sizes).keys())
    if exporter == "dynamo":
        step("capturing with torch.export and writing model.onnx")
        write_torch_export(
            model, (images, image_sizes), output_names, onnx_path,
            fixed_batch=fixed_batch is not None, dcn=dcn, opset=opset, size_divisibility=size_divisibility,
        )  # fmt: skip
    else:
        step("tracing and writing model.onnx")
        _write_torchscript(
            model, (images, image_sizes), output_names, onnx_path,
            dims=dims, dcn=dcn, opset=opset, keep_batch_norms=external_weights,
        )  # fmt: skip
    record_weights: dict[str, Any] = {}
    if external_weights:
        step("storing the weights once, in model.safetensors")
        shared = share_weights(onnx_path, model.state_dict())
        logger.info("%s", shared.describe())
        record_weights = {"weights_file": WEIGHTS_FILE}
    _state_static_output_dims(onnx_path)
    float16: dict[str, Any] = {}
    if precision == "fp16":
        step("converting to mixed precision (float16)")
        converted = write_float16_onnx(onnx_path)
        logger.info("float16 graph %s:\n%s", onnx_path, converted.format())
        float16 = {"float16": converted.to_dict()}
    step("checking the graph (onnx.checker, shape inference)")
    graph = check_onnx(onnx_path, strict_shapes=(dcn == "onnx"))
    record = {
        "exporter": "dyhead-serve",
        "onnx_exporter": exporter,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "opset": opset,
        "dcn": dcn,
        "precision": precision,
        **float16,
        "batch": fixed_batch if fixed_batch is not None else "dynamic",
        **record_weights,
        **(provenance or {}),
    }
    artifact = ModelArtifact(
        name=backend.model_name,
        input_spec=backend.input_spec,
        class_names=list(backend.class_names),
        decoder=backend.decoder.to_dict(),
        inputs=[_tensor_info(v) for v in graph.graph.input],
        outputs=[_tensor_info(v) for v in graph.graph.output],
        provenance=record,
    )
    artifact.save(out / "model.json")
    logger.debug("%s: %d nodes", onnx_path, len(graph.graph.node))

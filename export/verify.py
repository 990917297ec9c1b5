"""Export verification: run the exported network and PyTorch on the same real image and compare
raw outputs and final detections."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from dyhead_serve.pipeline.postprocess import Detections
from dyhead_serve.pipeline.preprocess import preprocess
from dyhead_serve.runtime.base import Backend, make_predictor
from dyhead_serve.runtime.torch_backend import TorchBackend

__all__ = [
    "FP16_TOLERANCES",
    "Tolerances",
    "VerifyReport",
    "compare_backends",
    "compare_detections",
    "tolerances_for",
]


@dataclass(frozen=True)
class Tolerances:
    """Largest differences an export may show against PyTorch.

    ``raw``: max |a - b| of raw outputs, relative to max(1, max |reference|).
    ``box_px`` and ``score``: per matched detection (default 0.01 px and 1e-4).
    """

    raw: float = 1e-3
    box_px: float = 0.01
    score: float = 1e-4


# Float16 graphs and engines: raw outputs within 5% of their scale, boxes within 2 px, scores
# within 0.01 (float16 keeps 11 significant bits: 0.05% per value, compounded over the network).
FP16_TOLERANCES = Tolerances(raw=5e-2, box_px=2.0, score=1e-2)


def tolerances_for(precision: str) -> Tolerances:
    """The verification tolerances of an export in ``precision`` (``"fp32"`` or ``"fp16"``)."""
    if precision == "fp16":
        return FP16_TOLERANCES
    if precision == "fp32":
        return Tolerances()
    raise ValueError(f"precision must be fp32 or fp16, got {precision!r}")


@dataclass
class VerifyReport:
    """Measured differences between a candidate backend and the reference.

    ``noise_floor`` holds, when measured, the same differences between PyTorch float32 and
    PyTorch float64: float32 rounding through a deep network is the floor no export can beat.
    """

    raw_max_abs: dict[str, float] = field(default_factory=dict)
    raw_scale: dict[str, float] = field(default_factory=dict)
    num_reference: int = 0
    num_candidate: int = 0
    num_compared: int = 0
    box_max_px: float = 0.0
    score_max: float = 0.0
    class_mismatches: int = 0
    lost: int = 0  # reference detections the candidate does not find (of class_mismatches)
    gained: int = 0  # candidate detections the reference does not have
    failures: list[str] = field(default_factory=list)
    noise_floor: VerifyReport | None = None
    candidate_vs_fp64: VerifyReport | None = None

    @property
    def ok(self) -> bool:
        return not self.failures

    def format(self) -> str:
        lines = [
            f"  {name:12s} max |diff| {diff:.3g} (outputs up to {self.raw_scale[name]:.3g})"
            for name, diff in self.raw_max_abs.items()
        ]
        lines.append(
            f"  detections   reference {self.num_reference}, candidate {self.num_candidate}; "
            f"max box diff {self.box_max_px:.3g} px, max score diff {self.score_max:.3g}, "
            f"found by one side only {self.class_mismatches} (lost {self.lost}, gained {self.gained})"
        )
        if self.noise_floor is not None and self.candidate_vs_fp64 is not None:
            lines.append("  against PyTorch float64 (the float32 noise floor):")
            lines.append("    pytorch fp32: " + self.noise_floor.summary())
            lines.append("    export:       " + self.candidate_vs_fp64.summary())
        lines += [f"  FAIL: {f}" for f in self.failures]
        return "\n".join(lines)

    def summary(self) -> str:
        raw = ", ".join(f"{k} {v:.3g}" for k, v in self.raw_max_abs.items())
        return f"{raw}; box {self.box_max_px:.3g} px, score {self.score_max:.3g}"


def _tied(scores: torch.Tensor, index: int, tol: float) -> bool:
    others = torch.cat([scores[:index], scores[index + 1 :]])
    return bool(((others - scores[index]).abs() <= tol).any())


# Boxes further apart than this (or than twice the box tolerance, when larger: float16) are
# different detections, not a rounding difference.
_PAIR_PX = 1.0


def _match(reference: Detections, candidate: Detections, pair_px: float = _PAIR_PX) -> list[int]:
    """For each reference detection, the candidate of the same class with the closest box, if that
    box is within ``pair_px`` pixels (-1: none)."""
    matches = []
    for i in range(len(reference)):
        diffs = (candidate.boxes - reference.boxes[i]).abs().amax(dim=1)
        diffs[candidate.classes != reference.classes[i]] = float("inf")
        j = int(diffs.argmin()) if len(diffs) else -1
        matches.append(j if j >= 0 and float(diffs[j]) <= pair_px else -1)
    return matches


def compare_detections(
    reference: Detections, candidate: Detections, tolerances: Tolerances, report: VerifyReport
) -> None:
    """Compare two detection lists.

    Each reference detection is paired with the candidate of the same class whose box is closest.
    A detection may lack a partner only when its score ties (within the score tolerance) with
    another detection of its list or with the lowest kept score: such ties are cut by the
    top-k / max-detections limits in an order no implementation defines (they arise, e.g., from
    the constant padding area).
    """
    report.num_reference, report.num_candidate = len(reference), len(candidate)
    pair_px = max(_PAIR_PX, 2 * tolerances.box_px) if math.isfinite(tolerances.box_px) else _PAIR_PX
    forward, backward = _match(reference, candidate, pair_px), _match(candidate, reference, pair_px)
    pairs = [(i, j) for i, j in enumerate(forward) if j >= 0 and backward[j] == i]
    report.num_compared = len(pairs)
    tol = max(tolerances.score, 1e-6)
    for side, (dets, other, paired) in enumerate(
        (
            (reference, candidate, {i for i, _ in pairs}),
            (candidate, reference, {j for _, j in pairs}),
        )
    ):
        floor = float(other.scores.min()) if len(other) else float("inf")
        unexplained = [
            i
            for i in range(len(dets))
            if i not in paired and not _tied(dets.scores, i, tol) and float(dets.scores[i]) > floor + tol
        ]
        report.class_mismatches += len(unexplained)
        if side == 0:
            report.lost += len(unexplained)
        else:
            report.gained += len(unexplained)
    if pairs:
        ref_idx = torch.tensor([i for i, _ in pairs])
        cand_idx = torch.tensor([j for _, j in pairs])
        report.box_max_px = float((reference.boxes[ref_idx] - candidate.boxes[cand_idx]).abs().max())
        report.score_max = float((reference.scores[ref_idx] - candidate.scores[cand_idx]).abs().max())
    if report.box_max_px > tolerances.box_px:
        report.failures.append(f"box difference {report.box_max_px:.3g} px > {tolerances.box_px}")
    if report.score_max > tolerances.score:
        report.failures.append(f"score difference {report.score_max:.3g} > {tolerances.score}")
    if report.class_mismatches:
        report.failures.append(f"{report.class_mismatches} detections found by one side only")


def _compare(reference: Backend, candidate: Backend, image: np.ndarray, tol: Tolerances) -> VerifyReport:
    report = VerifyReport()
    batch = preprocess([image], reference.input_spec, "cpu")
    sizes = batch.image_sizes_tensor()
    ref_raw = reference.infer(batch.images.to(reference.device), sizes.to(reference.device))
    cand_raw = candidate.infer(batch.images.to(candidate.device), sizes.to(candidate.device))
    for name, ref_value in ref_raw.items():
        if name not in cand_raw:
            report.failures.append(f"output {name!r} is missing from the export")
            continue
        a, b = ref_value.detach().float().cpu(), cand_raw[name].detach().float().cpu()
        if a.shape != b.shape:
            report.failures.append(f"output {name!r}: shape {tuple(b.shape)} instead of {tuple(a.shape)}")
            continue
        report.raw_max_abs[name] = float((a - b).abs().max()) if a.numel() else 0.0
        report.raw_scale[name] = float(a.abs().max()) if a.numel() else 0.0
        if report.raw_max_abs[name] > tol.raw * max(1.0, report.raw_scale[name]):
            report.failures.append(f"output {name!r} differs by {report.raw_max_abs[name]:.3g}")
    compare_detections(make_predictor(reference)(image), make_predictor(candidate)(image), tol, report)
    return report


def _float64_twin(backend: TorchBackend) -> TorchBackend:
    model = copy.deepcopy(backend.model).double()
    return TorchBackend(
        _Float64Input(model),
        backend.decoder,
        backend.input_spec,
        backend.class_names,
        backend.model_name,
        "cpu",
    )


class _Float64Input(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, image_sizes: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs: dict[str, torch.Tensor] = self.model(images.double(), image_sizes)
        return {k: v.float() if v.is_floating_point() else v for k, v in outputs.items()}


def compare_backends(
    reference: Backend, candidate: Backend, image: np.ndarray, tolerances: Tolerances | None = None
) -> VerifyReport:
    """Run both backends on ``image`` (RGB uint8) through the shared pre/post-processing.

    When the differences exceed ``tolerances`` and the reference is a PyTorch model, both are
    also compared with the model in float64: the export passes if it is no further from float64
    than PyTorch float32 itself is (times two, plus the tolerances), i.e. if what remains is
    float32 rounding and not an export error.
    """
    tol = tolerances or Tolerances()
    report = _compare(reference, candidate, image, tol)
    if report.ok or not isinstance(reference, TorchBackend):
        return report
    exact = _float64_twin(reference)
    floor = _compare(
        exact, reference, image, Tolerances(raw=float("inf"), box_px=float("inf"), score=float("inf"))
    )
    cand = _compare(
        exact, candidate, image, Tolerances(raw=float("inf"), box_px=float("inf"), score=float("inf"))
    )
    report.noise_floor, report.candidate_vs_fp64 = floor, cand
    within = cand.class_mismatches <= floor.class_mismatches
    within &= cand.box_max_px <= 2 * floor.box_max_px + tol.box_px
    within &= cand.score_max <= 2 * floor.score_max + tol.score
    for name, diff in cand.raw_max_abs.items():
        within &= diff <= 2 * floor.raw_max_abs.get(name, 0.0) + tol.raw * max(1.0, cand.raw_scale[name])
    if within:
        report.failures.clear()
    else:
        report.failures.append("the export is further from float64 than PyTorch float32 is")
    return report

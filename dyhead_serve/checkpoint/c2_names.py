"""Tensor names of Detectron2's ImageNet backbone ``.pkl`` files, mapped to model names.

Detectron2's configs start training from ImageNet-pretrained backbones such as
``detectron2://ImageNetPretrained/MSRA/R-50.pkl``: Caffe2 pickles with names like
``res2_0_branch2a_w`` or ``res_conv1_bn_s``. :func:`convert_c2_names` renames them as
Detectron2's ``convert_basic_c2_names`` does (``res2.0.conv1.weight``,
``stem.conv1.norm.weight``), and :func:`align_to_model` then pairs each model tensor with the
checkpoint name that is the longest dot-separated suffix of it, as Detectron2's
``align_and_update_state_dicts`` does (``res2.0.conv1.weight`` ->
``backbone.backbone.bottom_up.res2.0.conv1.weight``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping

import torch

__all__ = ["align_to_model", "convert_c2_names", "is_c2_checkpoint"]

logger = logging.getLogger(__name__)

# (pattern, replacement) applied in order, after "_" -> "."; Detectron2's basic rules for
# backbones (its DensePose-only rules are left out).
_RULES: tuple[tuple[str, str], ...] = (
    (r"\.b$", ".bias"),
    (r"\.w$", ".weight"),
    (r"bn\.s$", "norm.weight"),
    (r"bn\.bias$", "norm.bias"),
    (r"bn\.rm", "norm.running_mean"),
    (r"bn\.running\.mean$", "norm.running_mean"),
    (r"bn\.riv$", "norm.running_var"),
    (r"bn\.running\.var$", "norm.running_var"),
    (r"bn\.gamma$", "norm.weight"),
    (r"bn\.beta$", "norm.bias"),
    (r"gn\.s$", "norm.weight"),
    (r"gn\.bias$", "norm.bias"),
    (r"^res\.conv1\.norm\.", "conv1.norm."),
    (r"^conv1\.", "stem.conv1."),
    (r"\.branch1\.", ".shortcut."),
    (r"\.branch2a\.", ".conv1."),
    (r"\.branch2b\.", ".conv2."),
    (r"\.branch2c\.", ".conv3."),
)


def is_c2_checkpoint(names: Iterable[str]) -> bool:
    """True for Caffe2-style names (``res2_0_branch2a_w``: no dots), which need renaming."""
    return all("." not in name for name in names)


def _convert_one(name: str) -> str:
    name = {"pred_b": "linear_b", "pred_w": "linear_w"}.get(name, name)
    name = name.replace("_", ".")
    for pattern, replacement in _RULES:
        name = re.sub(pattern, replacement, name)
    return name


def convert_c2_names(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Caffe2 backbone's tensors to Detectron2 names; ``*_momentum`` entries (optimizer
    state) are dropped.

    Raises:
        ValueError: two names map to the same new name.
    """
    renamed: dict[str, torch.Tensor] = {}
    for name in sorted(state):
        if name.endswith("_momentum"):
            continue
        new = _convert_one(name)
        if new in renamed:
            raise ValueError(f"Caffe2 names collide after conversion: {name!r} -> {new!r}")
        renamed[new] = state[name]
    return renamed


def align_to_model(
    model_state: Mapping[str, torch.Tensor], checkpoint: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Re-key ``checkpoint`` to the model's names by suffix matching.

    Each model key takes the longest checkpoint key ``k`` with ``model_key == k`` or
    ``model_key.endswith("." + k)``; a match whose shape differs is logged and skipped.
    Checkpoint keys that match nothing are kept under their own name (so that a load report
    lists them as unexpected).

    Raises:
        ValueError: one checkpoint key matches several model keys.
    """
    ckpt_keys = sorted(checkpoint, key=len, reverse=True)
    aligned: dict[str, torch.Tensor] = {}
    used_by: dict[str, str] = {}
    for model_key in sorted(model_state):
        match = next((k for k in ckpt_keys if model_key == k or model_key.endswith("." + k)), None)
        if match is None:
            continue
        if tuple(checkpoint[match].shape) != tuple(model_state[model_key].shape):
            logger.warning(
                "%s has shape %s in the checkpoint but %s in the model (as %s): not loaded",
                match, tuple(checkpoint[match].shape), tuple(model_state[model_key].shape), model_key,
            )  # fmt: skip
            continue
        if match in used_by:
            raise ValueError(
                f"checkpoint tensor {match!r} matches two model tensors, {used_by[match]!r} and {model_key!r}"
            )
        used_by[match] = model_key
        aligned[model_key] = checkpoint[match]
    for key in checkpoint:
        if key not in used_by:
            aligned.setdefault(key, checkpoint[key])
    logger.info(
        "matched %d of %d checkpoint tensors to model tensors by name suffix", len(used_by), len(checkpoint)
    )
    return aligned

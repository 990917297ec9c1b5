"""MODEL.WEIGHTS: Caffe2 ImageNet names, suffix alignment, partial loads and URLs."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dyhead_serve.checkpoint import CheckpointError
from dyhead_serve.checkpoint.c2_names import align_to_model, convert_c2_names, is_c2_checkpoint
from dyhead_serve.checkpoint.model_weights import WeightsError, initialize_from_weights, resolve_weights
from dyhead_serve.modeling.build import build_model
from tests.training.tiny_training import tiny_config


def test_caffe2_names_convert_as_detectron2():
    names = {
        "conv1_w": "stem.conv1.weight",
        "res_conv1_bn_s": "stem.conv1.norm.weight",
        "res_conv1_bn_b": "stem.conv1.norm.bias",
        "res2_0_branch1_w": "res2.0.shortcut.weight",
        "res2_0_branch1_bn_s": "res2.0.shortcut.norm.weight",
        "res2_0_branch2a_w": "res2.0.conv1.weight",
        "res3_1_branch2b_bn_b": "res3.1.conv2.norm.bias",
        "res5_2_branch2c_bn_s": "res5.2.conv3.norm.weight",
        "fc1000_w": "fc1000.weight",
    }
    state = {name: torch.zeros(1) for name in names} | {"res2_0_branch2a_w_momentum": torch.zeros(1)}
    assert is_c2_checkpoint(state) and not is_c2_checkpoint(["stem.conv1.weight"])
    assert sorted(convert_c2_names(state)) == sorted(names.values())


def test_align_picks_the_longest_suffix_and_keeps_unmatched():
    model = {
        "backbone.bottom_up.stem.conv1.weight": torch.zeros(2),
        "backbone.bottom_up.res2.0.conv1.weight": torch.zeros(3),
        "head.conv1.weight": torch.zeros(4),
    }
    ckpt = {
        "stem.conv1.weight": torch.ones(2),
        "res2.0.conv1.weight": torch.ones(3),
        "fc1000.weight": torch.ones(5),
    }
    aligned = align_to_model(model, ckpt)
    assert set(aligned) == {
        "backbone.bottom_up.stem.conv1.weight",
        "backbone.bottom_up.res2.0.conv1.weight",
        "fc1000.weight",
    }
    # "conv1.weight" alone would have matched the head too; only full dotted suffixes count.
    with pytest.raises(ValueError, match="matches two"):
        align_to_model(model | {"other.conv1.weight": torch.zeros(4)}, {"conv1.weight": torch.ones(4)})


def _resnet18_c2_pickle(path: Path) -> dict[str, np.ndarray]:
    """An ImageNet-style R-18 .pkl: Caffe2 names, numpy arrays, BN as scale and bias only."""
    rng = np.random.default_rng(0)
    blobs = {
        "conv1_w": rng.normal(size=(64, 3, 7, 7)),
        "res_conv1_bn_s": rng.normal(size=64),
        "res_conv1_bn_b": rng.normal(size=64),
    }
    channels = {2: 64, 3: 128, 4: 256, 5: 512}
    for stage, out in channels.items():
        cin = 64 if stage == 2 else channels[stage - 1]
        for block in range(2):
            first_in = cin if block == 0 else out
            blobs[f"res{stage}_{block}_branch2a_w"] = rng.normal(size=(out, first_in, 3, 3))
            blobs[f"res{stage}_{block}_branch2b_w"] = rng.normal(size=(out, out, 3, 3))
            for conv in ("branch2a", "branch2b"):
                blobs[f"res{stage}_{block}_{conv}_bn_s"] = rng.normal(size=out)
                blobs[f"res{stage}_{block}_{conv}_bn_b"] = rng.normal(size=out)
            if block == 0 and first_in != out:
                blobs[f"res{stage}_{block}_branch1_w"] = rng.normal(size=(out, first_in, 1, 1))
                blobs[f"res{stage}_{block}_branch1_bn_s"] = rng.normal(size=out)
                blobs[f"res{stage}_{block}_branch1_bn_b"] = rng.normal(size=out)
    blobs["fc1000_w"] = rng.normal(size=(1000, 512))
    blobs["res2_0_branch2a_w_momentum"] = np.zeros((64, 64, 3, 3))
    blobs = {k: v.astype(np.float32) for k, v in blobs.items()}
    path.write_bytes(pickle.dumps(blobs, protocol=2))
    return blobs


def test_imagenet_caffe2_pkl_initialises_the_backbone(tmp_path):
    blobs = _resnet18_c2_pickle(tmp_path / "R-18.pkl")
    model = build_model(tiny_config(tmp_path))
    head_before = model.state_dict()["head.cls_logits.weight"].clone()
    report = initialize_from_weights(model, str(tmp_path / "R-18.pkl"))
    state = model.state_dict()
    prefix = "backbone.backbone.bottom_up."
    np.testing.assert_array_equal(state[prefix + "stem.conv1.weight"].numpy(), blobs["conv1_w"])
    np.testing.assert_array_equal(
        state[prefix + "res3.0.shortcut.norm.bias"].numpy(), blobs["res3_0_branch1_bn_b"]
    )
    np.testing.assert_array_equal(state[prefix + "res5.1.conv2.weight"].numpy(), blobs["res5_1_branch2b_w"])
    assert torch.equal(state["head.cls_logits.weight"], head_before)  # not in the file: unchanged
    assert "fc1000.weight" in report.unexpected_keys
    assert "head.cls_logits.weight" in report.missing_keys
    assert prefix + "stem.conv1.norm.running_var" in report.missing_keys  # C2 BN has scale/bias only
    assert not any(k.startswith(prefix) and "running" not in k for k in report.missing_keys)


def test_full_pth_loads_strictly_and_partial_pth_loads_what_matches(tmp_path):
    source = build_model(tiny_config(tmp_path))
    torch.save({"model": source.state_dict()}, tmp_path / "full.pth")
    target = build_model(tiny_config(tmp_path))
    assert initialize_from_weights(target, str(tmp_path / "full.pth")).ok
    assert torch.equal(
        target.state_dict()["head.bbox_pred.weight"], source.state_dict()["head.bbox_pred.weight"]
    )
    backbone_only = {
        k: v for k, v in source.state_dict().items() if k.startswith("backbone.backbone.bottom_up.")
    }
    torch.save(backbone_only, tmp_path / "backbone.pth")
    report = initialize_from_weights(build_model(tiny_config(tmp_path)), str(tmp_path / "backbone.pth"))
    assert not report.ok and "head.cls_logits.weight" in report.missing_keys and not report.unexpected_keys


def test_url_without_network_says_to_download_by_hand(tmp_path, monkeypatch):
    from dyhead_serve.checkpoint import DownloadError, model_weights

    def no_network(url: str, target: Path, *args: object, **kwargs: object) -> Path:
        raise DownloadError(f"cannot download {target.name} (Name or service not known); download it by hand")

    monkeypatch.setenv("DYHEAD_SERVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(model_weights, "download_file", no_network)
    with pytest.raises(WeightsError) as info:
        resolve_weights("detectron2://ImageNetPretrained/MSRA/R-50.pkl")
    message = str(info.value)
    assert "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl" in message
    assert "MODEL.WEIGHTS /path/to/R-50.pkl" in message and "Name or service not known" in message
    cached = tmp_path / "cache" / "weights" / "R-50.pkl"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert resolve_weights("detectron2://ImageNetPretrained/MSRA/R-50.pkl") == cached
    with pytest.raises(WeightsError, match="no such file"):
        resolve_weights(str(tmp_path / "missing.pth"))


def test_plain_pickle_named_pth_is_aligned_like_a_pkl(tmp_path):
    """Detectron2's conversion scripts pickle third-party backbones (the official Swin-T config's
    swin_tiny_patch4_window7_224_d2.pth) with backbone-relative names."""
    source = build_model(tiny_config(tmp_path)).state_dict()
    prefix = "backbone.backbone.bottom_up."
    backbone = {k[len(prefix) :]: v.clone() + 1 for k, v in source.items() if k.startswith(prefix)}
    content = {"model": backbone, "__author__": "third_party", "matching_heuristics": True}
    (tmp_path / "converted_d2.pth").write_bytes(pickle.dumps(content))
    model = build_model(tiny_config(tmp_path))
    report = initialize_from_weights(model, str(tmp_path / "converted_d2.pth"))
    assert torch.equal(model.state_dict()[prefix + "res4.1.conv2.weight"], backbone["res4.1.conv2.weight"])
    assert not report.unexpected_keys and all(not k.startswith(prefix) for k in report.missing_keys)
    (tmp_path / "garbage.pth").write_bytes(b"\x80not a pickle")
    with pytest.raises(CheckpointError):
        initialize_from_weights(model, str(tmp_path / "garbage.pth"))

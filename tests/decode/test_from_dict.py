"""Decoders to and from model.json: each decoder's to_dict/from_dict round trip, the one dispatch
(``decoder_from_dict``), and the model.json files written before the decoders were split (one
``DenseDecoderSpec`` with every field and a ``rules`` switch) still read as before."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from dyhead_serve.artifact_rules import ArtifactError
from dyhead_serve.decode.detectron2_dense import Detectron2DenseDecoder, Detectron2DenseSpec
from dyhead_serve.decode.from_dict import decoder_from_dict
from dyhead_serve.decode.mmdet_atss import MMDetATSSDecoder, MMDetATSSSpec
from dyhead_serve.decode.rcnn import RCNNDecoder, RCNNDecoderSpec

SHIPPED = Path(__file__).resolve().parents[2] / "dyhead_serve" / "zoo_files" / "default" / "model.json"

ANCHORS_AND_TEST = dict(
    strides=[8], anchor_sizes=[[32.0]], anchor_aspect_ratios=[[1.0]], anchor_offset=0.5,
    score_threshold=0.05, topk_candidates=1000, nms_threshold=0.6, max_detections=100, num_classes=3,
)  # fmt: skip
# What the single DenseDecoderSpec wrote (dataclasses.asdict) for mmdetection's ATSS models.
OLD_MMDET_ENTRY = {
    "type": "dense",
    "spec": dict(
        ANCHORS_AND_TEST,
        kind="atss",
        box_weights=[1.0, 1.0, 1.0, 1.0],
        rules="mmdet",
        box_means=[0.0, 0.0, 0.0, 0.0],
        box_stds=[0.1, 0.1, 0.2, 0.2],
        min_box_size=0.0,
    ),
}


def test_decoders_round_trip_through_model_json():
    dense = Detectron2DenseDecoder(
        Detectron2DenseSpec(kind="atss", box_weights=[10.0, 10.0, 5.0, 5.0], **ANCHORS_AND_TEST)
    )
    mmdet = MMDetATSSDecoder(
        MMDetATSSSpec(box_stds=[0.1, 0.1, 0.2, 0.2], min_box_size=0.0, **ANCHORS_AND_TEST)
    )
    rcnn = RCNNDecoder(RCNNDecoderSpec([10.0, 10.0, 5.0, 5.0], 0.05, 0.5, 100, 80))
    for decoder in (dense, mmdet, rcnn):
        data = json.loads(json.dumps(decoder.to_dict()))
        rebuilt = decoder_from_dict(data)
        assert type(rebuilt) is type(decoder) and rebuilt.spec == decoder.spec
        assert type(decoder).from_dict(data).spec == decoder.spec
    with pytest.raises(ValueError, match="unknown decoder"):
        decoder_from_dict({"type": "yolo"})


def test_the_shipped_model_json_reads_as_detectron2_and_writes_back_unchanged():
    entry = json.loads(SHIPPED.read_text())["decoder"]
    decoder = decoder_from_dict(entry)
    assert type(decoder) is Detectron2DenseDecoder
    assert decoder.to_dict() == entry  # the format Detectron2's decoder writes is the shipped one


def test_old_files_with_every_dense_field_read_as_before():
    """Written by the single DenseDecoderSpec: Detectron2's entries carried mmdetection's fields
    (and ``rules``), mmdetection's carried ``box_weights``; each is checked, then ignored."""
    old_detectron2 = copy.deepcopy(OLD_MMDET_ENTRY)
    old_detectron2["spec"].update(rules="detectron2", min_box_size=4.0)
    decoder = decoder_from_dict(old_detectron2)
    assert type(decoder) is Detectron2DenseDecoder
    assert decoder.spec == Detectron2DenseSpec(
        kind="atss", box_weights=[1.0, 1.0, 1.0, 1.0], **ANCHORS_AND_TEST
    )
    mmdet = decoder_from_dict(OLD_MMDET_ENTRY)
    assert type(mmdet) is MMDetATSSDecoder
    assert mmdet.spec == MMDetATSSSpec(box_stds=[0.1, 0.1, 0.2, 0.2], min_box_size=0.0, **ANCHORS_AND_TEST)
    # without the mmdetection fields (files written before mmdetection support): Detectron2's
    oldest = {
        "type": "dense",
        "spec": {
            k: v
            for k, v in old_detectron2["spec"].items()
            if k not in ("rules", "box_means", "box_stds", "min_box_size")
        },
    }
    assert decoder_from_dict(oldest).spec == decoder.spec


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"rules": "yolo"}, r"decoder.spec.rules: expected one of 'detectron2', 'mmdet'"),
        ({"kind": "retinanet"}, "decoder.spec.rules: the mmdet rules decode ATSS heads only"),
        ({"box_stds": [0.1, 0.1, 0.2]}, "decoder.spec.box_stds: expected a list of 4"),
        ({"anchor_sizes": [[32.0], [64.0]]}, "decoder.spec.anchor_sizes: 2 levels"),
        ({"box_weights": [1.0, 0.0, 1.0, 1.0]}, r"decoder.spec.box_weights\[1\]"),
        ({"stride_list": [8]}, "decoder.spec: unknown field 'stride_list'"),
    ],
    ids=[
        "unknown-rules",
        "mmdet-retinanet",
        "three-stds",
        "anchor-levels",
        "ignored-field-still-checked",
        "unknown-field",
    ],
)
def test_dense_entries_are_checked_naming_the_field(edit, message):
    entry = copy.deepcopy(OLD_MMDET_ENTRY)
    entry["spec"].update(edit)
    with pytest.raises(ArtifactError, match=message):
        decoder_from_dict(entry)


def test_a_decoder_refuses_another_decoders_entry():
    with pytest.raises(ArtifactError, match=r"decoder\.spec\.rules: 'mmdet', but this decoder implements"):
        Detectron2DenseDecoder.from_dict(OLD_MMDET_ENTRY)
    with pytest.raises(ArtifactError, match=r"decoder\.type: expected one of 'rcnn'"):
        RCNNDecoder.from_dict(OLD_MMDET_ENTRY)


def test_one_anchor_entry_serves_every_level():
    """model.json may give one anchor size / ratio list for all levels (the check allows it); the
    decoders read it so too (they failed when built before, after the file had been accepted)."""
    shared = copy.deepcopy(OLD_MMDET_ENTRY)
    shared["spec"].update(strides=[8, 16], anchor_sizes=[[32.0]], anchor_aspect_ratios=[[0.5, 1.0]])
    per_level = copy.deepcopy(shared)
    per_level["spec"].update(anchor_sizes=[[32.0], [32.0]], anchor_aspect_ratios=[[0.5, 1.0], [0.5, 1.0]])
    for rules in ("mmdet", "detectron2"):
        shared["spec"]["rules"] = per_level["spec"]["rules"] = rules
        one, every = decoder_from_dict(shared), decoder_from_dict(per_level)
        assert len(one.anchor_generator.cell_anchors) == 2
        for a, b in zip(one.anchor_generator.cell_anchors, every.anchor_generator.cell_anchors, strict=True):
            assert torch.equal(a, b)

"""COCO evaluation through pycocotools: ground truth scores AP 100, shifted boxes score less, and
class indices are mapped back to the dataset's category ids."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from dyhead_serve.cli.main import build_parser
from dyhead_serve.cli.run import run_command
from dyhead_serve.data.catalog import DatasetCatalog
from dyhead_serve.data.coco_json import DatasetError
from dyhead_serve.data.synthetic import SHAPE_CLASSES, generate_synthetic_dataset
from dyhead_serve.pipeline.image_io import read_image
from dyhead_serve.pipeline.postprocess import Detections
from dyhead_serve.training.evaluation import (
    COCO_METRICS,
    detections_to_coco_results,
    evaluate_on_dataset,
    format_metrics_table,
)


class GroundTruthPredictor:
    """Returns each image's ground truth (optionally shifted right), found by the image's pixels."""

    def __init__(self, catalog: DatasetCatalog, name: str, shift: float = 0.0, class_offset: int = 0) -> None:
        dicts, _ = catalog.load(name)
        self.truth = {}
        for d in dicts:
            key = hashlib.sha1(read_image(d["file_name"]).tobytes()).hexdigest()
            boxes = torch.tensor([a["bbox"] for a in d["annotations"]], dtype=torch.float32).reshape(-1, 4)
            boxes[:, 0::2] += shift * (boxes[:, 2:3] - boxes[:, 0:1])
            classes = torch.tensor(
                [a["category_id"] + class_offset for a in d["annotations"]], dtype=torch.int64
            )
            self.truth[key] = Detections(
                boxes,
                torch.linspace(0.9, 0.5, len(classes)),
                classes,
                [""] * len(classes),
                d["width"],
                d["height"],
            )

    def __call__(self, image: np.ndarray) -> Detections:
        return self.truth[hashlib.sha1(image.tobytes()).hexdigest()]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> DatasetCatalog:
    paths = generate_synthetic_dataset(tmp_path_factory.mktemp("shapes"), 0, 8, image_size=128, seed=2)
    catalog = DatasetCatalog()
    catalog.register_coco("shapes_val", paths.json_file("val"), paths.image_root("val"))
    return catalog


def test_ground_truth_scores_ap_100_and_files_use_dataset_ids(
    catalog: DatasetCatalog, tmp_path: Path
) -> None:
    result = evaluate_on_dataset(
        GroundTruthPredictor(catalog, "shapes_val"), "shapes_val", catalog, tmp_path, progress=False
    )
    assert result.metrics["AP"] == pytest.approx(100.0)
    assert result.metrics["AP50"] == pytest.approx(100.0) and result.metrics["AP75"] == pytest.approx(100.0)
    for name in SHAPE_CLASSES:
        assert result.metrics[f"AP-{name}"] == pytest.approx(100.0)
    assert len(result.table.splitlines()) == 12 and "Average Precision" in result.table
    saved = json.loads((tmp_path / "coco_eval.json").read_text())
    assert set(COCO_METRICS) <= set(saved) and saved["AP"] == pytest.approx(100.0)
    detections = json.loads((tmp_path / "coco_instances_results.json").read_text())
    assert len(detections) == result.num_detections > 0
    assert {d["category_id"] for d in detections} <= set(range(1, 7))  # json ids, not indices 0..5


def test_shifted_boxes_score_lower(catalog: DatasetCatalog, tmp_path: Path) -> None:
    # each box moved right by 30% of its width: IoU 0.7/1.3 = 0.54, a hit at 0.5 only
    result = evaluate_on_dataset(
        GroundTruthPredictor(catalog, "shapes_val", shift=0.3),
        "shapes_val",
        catalog,
        tmp_path,
        progress=False,
    )
    assert result.metrics["AP50"] == pytest.approx(100.0)
    assert result.metrics["AP75"] == pytest.approx(0.0)
    assert 0 < result.metrics["AP"] < 20


def test_unmapped_class_indices_would_score_low(catalog: DatasetCatalog, tmp_path: Path) -> None:
    # predicting index + 1 (as if the json id were used as an index) is a different class
    shifted = GroundTruthPredictor(catalog, "shapes_val", class_offset=1)
    for detections in shifted.truth.values():
        detections.classes %= len(SHAPE_CLASSES)
    result = evaluate_on_dataset(shifted, "shapes_val", catalog, tmp_path, progress=False)
    assert result.metrics["AP"] < 1.0


def test_class_indices_map_to_json_ids_with_gaps() -> None:
    detections = Detections(
        torch.tensor([[10.0, 20.0, 40.0, 60.0], [0.0, 0.0, 5.0, 5.0]]),
        torch.tensor([0.9, 0.3]),
        torch.tensor([2, 0]),
        ["c", "a"],
        100,
        100,
    )
    results = detections_to_coco_results(detections, image_id=42, dataset_ids=[3, 7, 12])
    assert results == [
        {"image_id": 42, "category_id": 12, "bbox": [10.0, 20.0, 30.0, 40.0], "score": pytest.approx(0.9)},
        {"image_id": 42, "category_id": 3, "bbox": [0.0, 0.0, 5.0, 5.0], "score": pytest.approx(0.3)},
    ]
    with pytest.raises(DatasetError, match="predicted class 2"):
        detections_to_coco_results(detections, 42, dataset_ids=[3, 7])


def test_format_metrics_table() -> None:
    lines = format_metrics_table(
        {"AP": 50.0, "AP50": 75.5, "AP75": 1.0, "APs": 0, "APm": 2, "APl": float("nan")}
    )
    assert lines.splitlines()[0].split("|")[1].strip() == "AP"
    assert "75.500" in lines and "nan" in lines


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(["eval", *argv])


def run_eval(args: argparse.Namespace) -> int:
    """Run parsed ``eval`` arguments as ``dyhead-serve`` does (user errors: exit status 2)."""
    return run_command(args, logging.INFO)


def test_eval_command_evaluates_the_config_test_set(
    catalog: DatasetCatalog,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import dyhead_serve.runtime.base
    import dyhead_serve.runtime.loader

    json_file = catalog.get("shapes_val").json_file
    image_root = catalog.get("shapes_val").image_root
    seen = {}

    def fake_load(options):  # type: ignore[no-untyped-def]
        seen.update(weights=options.weights, device=options.device, config=options.config)
        return "backend"

    monkeypatch.setattr(dyhead_serve.runtime.loader, "load_backend", fake_load)
    monkeypatch.setattr(
        dyhead_serve.runtime.base,
        "make_predictor",
        lambda backend: GroundTruthPredictor(catalog, "shapes_val"),
    )
    args = _parse(
        ["--config", "dyhead_r50_atss_fpn_1x", "--weights", "w.pth", "--device", "cpu", "--no-progress",
         "--register-coco", "mine", str(json_file), str(image_root),
         "DATASETS.TEST", "('mine',)", "OUTPUT_DIR", str(tmp_path / "out"), "DATALOADER.NUM_WORKERS", "0"]
    )  # fmt: skip
    assert run_eval(args) == 0
    assert seen == {"weights": "w.pth", "device": "cpu", "config": "dyhead_r50_atss_fpn_1x"}
    out = capsys.readouterr().out
    assert "== mine" in out and "Average Precision  (AP) @[ IoU=0.50:0.95" in out and "100.000" in out
    assert json.loads((tmp_path / "out" / "coco_eval.json").read_text())["AP50"] == pytest.approx(100.0)


def test_eval_command_reports_an_unknown_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(
        [
            "--config",
            "dyhead_r50_atss_fpn_1x",
            "--weights",
            "w.pth",
            "--device",
            "cpu",
            "DATASETS.TEST",
            "('nope',)",
        ]
    )
    assert run_eval(args) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'nope'" in err and "--register-coco" in err


DEFAULT_DIR = Path(__file__).resolve().parents[2] / "dyhead_serve" / "zoo_files" / "default"


def test_an_exported_folder_is_evaluated_in_fp32_and_fp16(tmp_path: Path) -> None:
    """`dyhead-serve eval --model DIR`'s library half: the embedded model's exported folder and its
    float16 twin, each a predictor for the evaluation, on a small generated split."""
    from dyhead_serve.config import load_config
    from dyhead_serve.export.fp16 import convert_folder_to_float16
    from dyhead_serve.runtime.base import make_predictor
    from dyhead_serve.runtime.loader import exported_config, load_backend
    from dyhead_serve.runtime.options import ModelOptions
    from dyhead_serve.training.evaluation import evaluate_test_datasets

    convert_folder_to_float16(DEFAULT_DIR, tmp_path / "fp16")
    paths = generate_synthetic_dataset(tmp_path / "data", 0, 6, image_size=320, seed=5)
    catalog = DatasetCatalog()
    catalog.register_coco("tiny_val", paths.json_file("val"), paths.image_root("val"))
    config, overrides = exported_config(DEFAULT_DIR)
    assert list(load_config(config, overrides=overrides).DATASETS.TEST) == ["synthetic_shapes_val"]
    ap50 = {}
    for precision, folder in (("fp32", DEFAULT_DIR), ("fp16", tmp_path / "fp16")):
        predictor = make_predictor(
            load_backend(ModelOptions(str(folder), backend="onnxruntime", device="cpu"))
        )
        results = evaluate_test_datasets(
            predictor, ["tiny_val"], catalog, tmp_path / precision, progress=False
        )
        ap50[precision] = results["tiny_val"].metrics["AP50"]
        assert (tmp_path / precision / "coco_eval.json").is_file()
    assert ap50["fp32"] > 50
    assert abs(ap50["fp16"] - ap50["fp32"]) <= 2.0, ap50


def test_eval_command_takes_an_exported_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``dyhead-serve eval --model DIR``: the folder's recorded config names the datasets; the
    network runs in the runtime that serves it (here ONNX Runtime)."""
    paths = generate_synthetic_dataset(tmp_path / "data", 0, 4, image_size=320, seed=6)
    args = _parse(
        ["--model", str(DEFAULT_DIR), "--backend", "onnxruntime", "--device", "cpu", "--no-progress",
         "--register-coco", "tiny_val", str(paths.json_file("val")), str(paths.image_root("val")),
         "DATASETS.TEST", "('tiny_val',)", "OUTPUT_DIR", str(tmp_path / "out"), "DATALOADER.NUM_WORKERS", "0"]
    )  # fmt: skip
    assert run_eval(args) == 0, capsys.readouterr().err
    assert "== tiny_val" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "coco_eval.json").read_text())["AP50"] > 50


def test_eval_of_an_exported_folder_refuses_model_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(["--model", str(DEFAULT_DIR), "--set", "MODEL.ATSS.INFERENCE_TH", "0.01"])
    assert run_eval(args) == 2
    assert "MODEL.ATSS.INFERENCE_TH cannot change it" in capsys.readouterr().err

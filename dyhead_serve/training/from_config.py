"""The training command's setup: the one place that reads a Detectron2-style config for the
Trainer, its optimizer, schedule and gradient clipping, the training loader and mapper, and the
evaluation during training. Each of those takes plain values (settings dataclasses), so it can
be built and tested without a config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from dyhead_serve.data.catalog import DatasetCatalog
from dyhead_serve.data.loader import TrainLoaderSettings, build_train_loader
from dyhead_serve.data.mapper import DatasetMapper, TrainingSample
from dyhead_serve.data.transforms import build_train_augmentations
from dyhead_serve.modeling.detector_protocol import Detector
from dyhead_serve.training.grad_clip import GradientClipper
from dyhead_serve.training.lr_schedule import WarmupSchedule
from dyhead_serve.training.optimizer import OptimizerSettings
from dyhead_serve.training.train import EvaluateFn, Trainer, TrainerSettings

__all__ = [
    "build_trainer",
    "coco_evaluator",
    "dataset_mapper",
    "gradient_clipper",
    "lr_schedule",
    "optimizer_settings",
    "train_loader",
    "train_loader_settings",
    "trainer_settings",
]

Cfg = Any  # dyhead_serve.config.CfgNode


def optimizer_settings(cfg: Cfg) -> OptimizerSettings:
    """``SOLVER.OPTIMIZER`` and its parameters."""
    s = cfg.SOLVER
    return OptimizerSettings(
        name=str(s.OPTIMIZER),
        base_lr=float(s.BASE_LR),
        weight_decay=float(s.WEIGHT_DECAY),
        weight_decay_norm=float(s.WEIGHT_DECAY_NORM),
        bias_lr_factor=float(s.BIAS_LR_FACTOR),
        weight_decay_bias=None if s.WEIGHT_DECAY_BIAS is None else float(s.WEIGHT_DECAY_BIAS),
        momentum=float(s.MOMENTUM),
        nesterov=bool(s.NESTEROV),
    )


def lr_schedule(cfg: Cfg) -> WarmupSchedule:
    """The learning-rate schedule of ``SOLVER`` (Detectron2's ``build_lr_scheduler``)."""
    s = cfg.SOLVER
    return WarmupSchedule(
        s.LR_SCHEDULER_NAME,
        int(s.MAX_ITER),
        steps=list(s.STEPS),
        gamma=float(s.GAMMA),
        warmup_factor=float(s.WARMUP_FACTOR),
        warmup_iters=int(s.WARMUP_ITERS),
        warmup_method=s.WARMUP_METHOD,
        end_factor=float(s.BASE_LR_END) / float(s.BASE_LR) if s.BASE_LR else 0.0,
        num_decays=int(s.NUM_DECAYS),
        rescale_interval=bool(s.RESCALE_INTERVAL),
    )


def gradient_clipper(cfg: Cfg) -> GradientClipper | None:
    """The clipper of ``SOLVER.CLIP_GRADIENTS``, or None when it is disabled."""
    c = cfg.SOLVER.CLIP_GRADIENTS
    if not c.ENABLED:
        return None
    return GradientClipper(str(c.CLIP_TYPE), float(c.CLIP_VALUE), float(c.NORM_TYPE))


def trainer_settings(cfg: Cfg) -> TrainerSettings:
    """``SOLVER``, ``TEST.EVAL_PERIOD``, ``MODEL.PIXEL_*``, ``MODEL.WEIGHTS`` and ``OUTPUT_DIR``."""
    return TrainerSettings(
        output_dir=str(cfg.OUTPUT_DIR),
        optimizer=optimizer_settings(cfg),
        schedule=lr_schedule(cfg),
        pixel_mean=tuple(float(v) for v in cfg.MODEL.PIXEL_MEAN),
        pixel_std=tuple(float(v) for v in cfg.MODEL.PIXEL_STD),
        clipper=gradient_clipper(cfg),
        amp=bool(cfg.SOLVER.AMP.ENABLED),
        checkpoint_period=int(cfg.SOLVER.CHECKPOINT_PERIOD),
        eval_period=int(cfg.TEST.EVAL_PERIOD),
        weights=str(cfg.MODEL.WEIGHTS),
    )


def dataset_mapper(cfg: Cfg) -> DatasetMapper:
    """The training mapper of ``INPUT.*`` (Detectron2's ``DatasetMapper(cfg, is_train=True)``).

    Raises:
        ValueError: ``INPUT.CROP.ENABLED`` (random crops are not implemented), or an invalid
            ``INPUT`` value.
    """
    if cfg.INPUT.CROP.ENABLED:
        raise ValueError("INPUT.CROP.ENABLED is not supported; set it to False")
    augmentations = build_train_augmentations(
        cfg.INPUT.MIN_SIZE_TRAIN,
        cfg.INPUT.MAX_SIZE_TRAIN,
        cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING,
        cfg.INPUT.RANDOM_FLIP,
    )
    return DatasetMapper(augmentations, cfg.INPUT.FORMAT)


def train_loader_settings(cfg: Cfg) -> TrainLoaderSettings:
    """``DATASETS.TRAIN``, ``SOLVER.IMS_PER_BATCH``, ``SEED`` and ``DATALOADER.*``."""
    d = cfg.DATALOADER
    return TrainLoaderSettings(
        datasets=tuple(cfg.DATASETS.TRAIN),
        images_per_batch=int(cfg.SOLVER.IMS_PER_BATCH),
        seed=int(cfg.SEED),
        filter_empty=bool(d.FILTER_EMPTY_ANNOTATIONS),
        aspect_ratio_grouping=bool(d.ASPECT_RATIO_GROUPING),
        num_workers=int(d.NUM_WORKERS),
        sampler=str(d.SAMPLER_TRAIN),
    )


def train_loader(cfg: Cfg, catalog: DatasetCatalog | None = None) -> DataLoader[TrainingSample]:
    """The endless training loader of ``cfg`` (see :func:`build_train_loader`)."""
    return build_train_loader(train_loader_settings(cfg), dataset_mapper(cfg), catalog)


def coco_evaluator(cfg: Cfg, catalog: DatasetCatalog) -> EvaluateFn:
    """Evaluation of the training model on ``DATASETS.TEST``, through the same predictor
    ``dyhead-serve eval`` uses (the config's test-time preprocessing); metrics flattened as
    Detectron2 logs them (``bbox/AP``, or ``<dataset>/bbox/AP`` with several test sets), files
    under ``OUTPUT_DIR/inference``."""
    from dyhead_serve.runtime.base import make_predictor
    from dyhead_serve.runtime.torch_backend import detector_backend
    from dyhead_serve.training.evaluation import evaluate_test_datasets

    datasets = tuple(cfg.DATASETS.TEST)
    output_dir = Path(cfg.OUTPUT_DIR) / "inference"
    num_workers = int(cfg.DATALOADER.NUM_WORKERS)

    def evaluate(model: Detector) -> dict[str, float]:
        backend = detector_backend(cfg, model, "training")
        results = evaluate_test_datasets(
            make_predictor(backend), datasets, catalog, output_dir, num_workers=num_workers, progress=False
        )
        prefix = (lambda name: "") if len(results) == 1 else (lambda name: f"{name}/")
        return {
            f"{prefix(name)}bbox/{metric}": value
            for name, result in results.items()
            for metric, value in result.metrics.items()
        }

    return evaluate


def build_trainer(cfg: Cfg, model: Detector, catalog: DatasetCatalog | None = None) -> Trainer:
    """The Trainer of ``cfg`` for ``model``: batches from the config's :func:`train_loader`,
    evaluation on ``DATASETS.TEST`` when it names datasets (:func:`coco_evaluator`).

    Raises:
        DatasetError: unknown or unusable datasets.
        ValueError: an unsupported config value.
    """
    evaluate = coco_evaluator(cfg, catalog or DatasetCatalog()) if cfg.DATASETS.TEST else None
    return Trainer(model, train_loader(cfg, catalog), trainer_settings(cfg), evaluate=evaluate)

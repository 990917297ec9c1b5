"""The training loop: Detectron2's ``SimpleTrainer`` / ``AMPTrainer`` with its default hooks
(LR schedule, periodic checkpoints, evaluation, metrics), in one process or one of several
started by ``torchrun``.

Each iteration: take a batch, compute its losses with the detector's ``forward_train`` (the
network under autocast with ``SOLVER.AMP.ENABLED`` on CUDA), average them over processes for the
record, stop with :class:`FloatingPointError` if one is not finite (or if the network raised it,
e.g. on non-finite deformable-convolution offsets), else back-propagate, clip
(``SOLVER.CLIP_GRADIENTS``), step the optimizer, then the scheduler.
Iteration ``i`` uses the learning rate of iteration ``i`` and is logged under ``iteration: i``.

The Trainer takes the values it needs (:class:`TrainerSettings`), not a config: the training
command's setup (:mod:`dyhead_serve.training.from_config`) reads them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dyhead_serve.checkpoint.model_weights import initialize_from_weights
from dyhead_serve.data.mapper import TrainingSample
from dyhead_serve.distributed import all_reduce_mean, get_world_size, is_main_process
from dyhead_serve.modeling.detector_protocol import Detector
from dyhead_serve.training.checkpointing import TrainingCheckpointer, checkpoint_name
from dyhead_serve.training.collate import collate_training_batch
from dyhead_serve.training.grad_clip import GradientClipper
from dyhead_serve.training.lr_schedule import LRMultiplier, WarmupSchedule
from dyhead_serve.training.metrics import MetricsWriter, ProgressLogger
from dyhead_serve.training.optimizer import OptimizerSettings, build_optimizer

__all__ = ["EvaluateFn", "Trainer", "TrainerSettings"]

logger = logging.getLogger(__name__)

# Evaluates the (unwrapped) model and returns flat metrics, e.g. {"bbox/AP": 41.2}.
EvaluateFn = Callable[[Detector], dict[str, float]]


@dataclass(frozen=True)
class TrainerSettings:
    """What a training run needs besides the model and its data.

    Attributes:
        output_dir: where checkpoints and ``metrics.jsonl`` go (``OUTPUT_DIR``).
        optimizer: the optimizer and its parameter groups (``SOLVER.*``).
        schedule: the learning-rate multiplier of each iteration; its ``max_iter`` is the
            length of the run (``SOLVER.MAX_ITER``).
        pixel_mean, pixel_std: input normalisation (``MODEL.PIXEL_MEAN`` / ``PIXEL_STD``).
        clipper: gradient clipping (``SOLVER.CLIP_GRADIENTS``), None for none.
        amp: mixed precision on CUDA (``SOLVER.AMP.ENABLED``).
        checkpoint_period: iterations between checkpoints (``SOLVER.CHECKPOINT_PERIOD``; 0: the
            last one only).
        eval_period: iterations between evaluations (``TEST.EVAL_PERIOD``; 0: after the last
            one only).
        weights: the initial weights of a new run (``MODEL.WEIGHTS``; empty: random).
    """

    output_dir: str
    optimizer: OptimizerSettings
    schedule: WarmupSchedule
    pixel_mean: tuple[float, ...]
    pixel_std: tuple[float, ...]
    clipper: GradientClipper | None = None
    amp: bool = False
    checkpoint_period: int = 0
    eval_period: int = 0
    weights: str = ""


def _busiest_group(optimizer: torch.optim.Optimizer) -> int:
    """Index of the parameter group with the most tensors: its learning rate is the one logged
    (Detectron2's choice)."""
    sizes = [len(group["params"]) for group in optimizer.param_groups]
    return sizes.index(max(sizes))


class _ForwardTrain(nn.Module):
    """Makes ``model.forward_train`` a module's ``forward``, so that DistributedDataParallel, which
    prepares its gradient reduction in ``forward``, wraps the call that builds the graph."""

    def __init__(self, model: Detector) -> None:
        super().__init__()
        self.model = model  # registered as a submodule: the Trainer checked it is an nn.Module

    def forward(
        self,
        images: torch.Tensor,
        image_sizes: torch.Tensor,
        gt_boxes: list[torch.Tensor],
        gt_classes: list[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        return self.model.forward_train(images, image_sizes, gt_boxes, gt_classes)


class Trainer:
    """Trains ``model`` for ``settings.schedule.max_iter`` iterations on batches from ``data_loader``.

    Args:
        model: the detector on its device (unwrapped; it is wrapped in DistributedDataParallel
            here when several processes train); its ``forward_train`` gives the losses.
        data_loader: yields lists of :class:`TrainingSample` forever (this process's share).
        settings: the optimizer, schedule, periods and the rest (see :class:`TrainerSettings`).
        evaluate: called every ``settings.eval_period`` iterations and after the last one, on
            the main process only, with the unwrapped model; its metrics go to ``metrics.jsonl``.
        log_period: iterations between progress lines.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
    """

    def __init__(
        self,
        model: Detector,
        data_loader: Iterable[Sequence[TrainingSample]],
        settings: TrainerSettings,
        *,
        evaluate: EvaluateFn | None = None,
        log_period: int = 20,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"a detector must be an nn.Module, got {type(model).__name__}")
        self.settings = settings
        self.model = model  # typed as a Detector that is an nn.Module (the isinstance above)
        self.device = next(model.parameters()).device
        self.data_loader = data_loader
        self.evaluate = evaluate
        self.max_iter = settings.schedule.max_iter
        self.checkpoint_period = settings.checkpoint_period
        self.eval_period = settings.eval_period
        self.log_period = log_period
        self.start_iter = 0

        self.optimizer = build_optimizer(model, settings.optimizer)
        self.scheduler = LRMultiplier(self.optimizer, settings.schedule)
        self.clipper = settings.clipper
        self.amp = settings.amp and self.device.type == "cuda"
        if settings.amp and not self.amp:
            logger.warning("SOLVER.AMP.ENABLED needs a CUDA device; training in float32 on %s", self.device)
        self.grad_scaler = torch.amp.GradScaler("cuda") if self.amp else None
        self.checkpointer = TrainingCheckpointer(settings.output_dir, save_to_disk=is_main_process())
        self.network: nn.Module = _ForwardTrain(model)
        if get_world_size() > 1:
            # find_unused_parameters as the official train_net.py sets it.
            self.network = DistributedDataParallel(
                self.network,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False,
                find_unused_parameters=True,
            )

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self, iteration: int) -> dict[str, Any]:
        """Everything a resumed run needs, after ``iteration`` completed."""
        state: dict[str, Any] = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "iteration": iteration,
        }
        if self.grad_scaler is not None:
            state["grad_scaler"] = self.grad_scaler.state_dict()
        loss_state = self.model.loss_state_dict()
        if loss_state is not None:
            state["loss_state"] = loss_state
        return state

    def resume_or_load(self, resume: bool) -> None:
        """With ``resume`` and a checkpoint in ``settings.output_dir``, continue from it (weights,
        optimizer, schedule, iteration); otherwise start at iteration 0 from
        ``settings.weights`` (random initialisation when empty), as Detectron2's
        ``resume_or_load``.

        Raises:
            CheckpointError, WeightsError: the checkpoint or the weights cannot be loaded.
        """
        state = self.checkpointer.load_last() if resume else None
        if state is None:
            if resume:
                logger.info("no checkpoint in %s: starting a new run", self.settings.output_dir)
            weights = self.settings.weights
            if weights:
                initialize_from_weights(self.model, weights)
            else:
                logger.warning("MODEL.WEIGHTS is empty: training from a random initialisation")
            self.start_iter = 0
            return
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.grad_scaler is not None and "grad_scaler" in state:
            self.grad_scaler.load_state_dict(state["grad_scaler"])
        if "loss_state" in state:
            self.model.load_loss_state_dict(state["loss_state"])
        self.start_iter = int(state["iteration"]) + 1

    # -- the loop ------------------------------------------------------------------------------
    def train(self) -> None:
        """Run iterations ``start_iter`` .. ``max_iter - 1``.

        Raises:
            FloatingPointError: a loss became NaN or infinite, or the network's forward raised
                FloatingPointError (non-finite offsets); the iteration's update is not applied
                and the checkpoints already written are kept.
        """
        if self.start_iter >= self.max_iter:
            logger.info("training already finished (iteration %d of %d)", self.start_iter, self.max_iter)
            return
        metrics = MetricsWriter(self.settings.output_dir, self.start_iter, enabled=is_main_process())
        progress = ProgressLogger(self.max_iter, self.log_period, enabled=is_main_process())
        logger.info("starting training from iteration %d of %d", self.start_iter, self.max_iter)
        self.network.train()
        batches: Iterator[Sequence[TrainingSample]] = iter(self.data_loader)
        lr_group = _busiest_group(self.optimizer)
        for iteration in range(self.start_iter, self.max_iter):
            start = time.perf_counter()
            samples = next(batches)
            data_time = time.perf_counter() - start
            losses = self._step(iteration, samples)
            lr = float(self.optimizer.param_groups[lr_group]["lr"])
            self.scheduler.step()
            iter_time = time.perf_counter() - start
            metrics.write(
                {"iteration": iteration, **losses, "lr": lr, "time": iter_time, "data_time": data_time}
            )
            progress.update(iteration, losses, lr, iter_time, data_time)
            self._after_step(iteration, metrics)

    def _step(self, iteration: int, samples: Sequence[TrainingSample]) -> dict[str, float]:
        """One update; returns the losses averaged over processes, ``total_loss`` last."""
        batch = collate_training_batch(
            samples,
            self.settings.pixel_mean,
            self.settings.pixel_std,
            self.model.size_divisibility,
            self.device,
        )
        image_sizes = torch.tensor(batch.image_sizes, dtype=torch.int64, device=self.device)  # [N, 2]
        try:
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
                loss_dict: dict[str, torch.Tensor] = self.network(
                    batch.images, image_sizes, batch.gt_boxes, batch.gt_classes
                )
        except FloatingPointError as exc:  # raised inside forward, e.g. by check_finite_offsets
            self._stop_on_non_finite(f"iteration {iteration} failed: {exc}", cause=exc)
        total = sum(loss_dict.values())
        if not isinstance(total, torch.Tensor):
            raise ValueError("the model returned no losses")
        values = {name: float(value.detach()) for name, value in loss_dict.items()}
        values["total_loss"] = float(total.detach())
        values = all_reduce_mean(values, self.device)
        values = {**{k: values[k] for k in loss_dict}, "total_loss": values["total_loss"]}
        if not all(math.isfinite(v) for v in values.values()):
            losses = ", ".join(f"{k}={v}" for k, v in values.items())
            self._stop_on_non_finite(f"loss became NaN or infinite at iteration {iteration} ({losses})")

        self.optimizer.zero_grad(set_to_none=True)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        if self.grad_scaler is not None:
            self.grad_scaler.scale(total).backward()
            if self.clipper is not None:
                self.grad_scaler.unscale_(self.optimizer)
                self.clipper(params)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            total.backward()
            if self.clipper is not None:
                self.clipper(params)
            self.optimizer.step()
        return values

    def _stop_on_non_finite(self, what: str, cause: BaseException | None = None) -> NoReturn:
        """Raise FloatingPointError: ``what`` went wrong, and which checkpoint to resume from."""
        last = self.checkpointer.last_checkpoint()
        kept = (
            f"the last good checkpoint, {last}, is kept: continue from it with --resume "
            "(perhaps with a lower SOLVER.BASE_LR or SOLVER.CLIP_GRADIENTS enabled)"
            if last is not None and last.is_file()
            else "no checkpoint had been written yet"
        )
        raise FloatingPointError(
            f"{what}; training stopped before applying this iteration's update; {kept}"
        ) from cause

    def _after_step(self, iteration: int, metrics: MetricsWriter) -> None:
        next_iter = iteration + 1
        is_last = next_iter >= self.max_iter
        if is_last or (self.checkpoint_period > 0 and next_iter % self.checkpoint_period == 0):
            self.checkpointer.save(checkpoint_name(iteration, self.max_iter), self.state_dict(iteration))
        if self.evaluate is not None and (
            is_last or (self.eval_period > 0 and next_iter % self.eval_period == 0)
        ):
            self._run_evaluation(iteration, metrics)

    def _run_evaluation(self, iteration: int, metrics: MetricsWriter) -> None:
        assert self.evaluate is not None
        if is_main_process():
            logger.info("evaluating after iteration %d", iteration)
            self.model.eval()
            try:
                results = self.evaluate(self.model)
            finally:
                self.network.train()
            metrics.write({"iteration": iteration, **results})
        if get_world_size() > 1:
            torch.distributed.barrier()

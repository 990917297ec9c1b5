"""``dyhead-serve train``: train a detector from a Detectron2 DyHead config.

Several GPUs (or machines) train through ``torchrun``, which starts one process per GPU and
sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; ``--num-gpus N`` outside ``torchrun`` prints
the command to use.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shlex
from datetime import timedelta
from pathlib import Path

from dyhead_serve.cli.dataset_args import add_register_coco_argument
from dyhead_serve.cli.model_options import add_device_argument, add_override_arguments, overrides_from_args
from dyhead_serve.config import ConfigError
from dyhead_serve.errors import UserError

__all__ = ["add_train_arguments", "add_train_parser", "run_train", "torchrun_command"]

logger = logging.getLogger(__name__)

# Generous, because the other processes wait at a barrier while the main one evaluates.
_PROCESS_GROUP_TIMEOUT = timedelta(hours=2)


def add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    p = subparsers.add_parser(
        "train",
        help="train a detector from a Detectron2 DyHead config (one process, or torchrun for DDP)",
        description="Train the detector a config describes on DATASETS.TRAIN: Detectron2's optimizer "
        "groups and warmup multi-step schedule, checkpoints in OUTPUT_DIR (--resume continues), one "
        "JSON line per iteration in OUTPUT_DIR/metrics.jsonl, evaluation every TEST.EVAL_PERIOD. "
        "Several GPUs: torchrun --standalone --nproc_per_node=N -m dyhead_serve.cli train ... --num-gpus N",
    )
    add_train_arguments(p)
    p.set_defaults(func=run_train)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config``, ``--num-gpus``, ``--resume``, ``--device`` (sets MODEL.DEVICE),
    ``--register-coco`` and the config overrides (``--set KEY VALUE`` and trailing ``KEY VALUE``)
    to ``parser``."""
    parser.add_argument(
        "--config",
        required=True,
        help="a Detectron2 DyHead YAML file or a shipped official config name; DATASETS.TRAIN names the "
        "training data, DATASETS.TEST the evaluation data (every TEST.EVAL_PERIOD iterations and at the "
        "end); mmdetection models are trained in mmdetection",
    )
    parser.add_argument(
        "--num-gpus",
        type=int,
        default=1,
        help="GPUs on this machine; more than 1 needs torchrun (the command is printed if you forget)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUTPUT_DIR/last_checkpoint (weights, optimizer, schedule, iteration) when "
        "it exists; otherwise start from MODEL.WEIGHTS",
    )
    add_device_argument(parser)
    add_register_coco_argument(parser)
    add_override_arguments(parser, trailing=True)


def torchrun_command(args: argparse.Namespace) -> str:
    """The ``torchrun`` command line that runs this training on ``args.num_gpus`` GPUs."""
    argv = [
        "torchrun",
        "--standalone",
        f"--nproc_per_node={args.num_gpus}",
        "-m",
        "dyhead_serve.cli",
        "train",
    ]
    argv += ["--config", str(args.config)]
    if args.resume:
        argv.append("--resume")
    if args.device != "auto":
        argv += ["--device", str(args.device)]
    for name, json_file, image_root in args.register_coco or []:
        argv += ["--register-coco", name, json_file, image_root]
    argv += overrides_from_args(args)
    return shlex.join(argv)


def _setup_process_group(device: str) -> str:
    """Join the ``torchrun`` process group (NCCL on CUDA, Gloo on the CPU); returns this
    process's device."""
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    dist.init_process_group(
        backend="nccl" if device.startswith("cuda") else "gloo", timeout=_PROCESS_GROUP_TIMEOUT
    )
    return device


def _seed_everything(seed: int, rank: int) -> None:
    """Seed Python, NumPy and torch with ``seed + rank`` (a fresh seed when ``seed < 0``), as
    Detectron2's ``default_setup``."""
    import numpy as np
    import torch

    if seed < 0:
        seed = int.from_bytes(os.urandom(3), "big")
        logger.info("SEED is negative: using seed %d", seed)
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed + rank)


def run_train(args: argparse.Namespace) -> int:
    """Train as the config says; return the exit status.

    0 when training finished; 1 when a loss became NaN or infinite (the message names the
    last good checkpoint).

    Raises:
        UserError: a bad config, dataset, weights file or device, or ``--num-gpus`` > 1 outside
            ``torchrun`` (the message gives the command to use); a config value the training
            components refuse (they check plain values with ``ValueError``) as a ConfigError.
    """
    from dyhead_serve.runtime.loader import resolve_torch_device

    in_torchrun = "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if args.num_gpus < 1:
        raise UserError(f"--num-gpus must be at least 1, got {args.num_gpus}")
    if args.num_gpus > 1 and not in_torchrun:
        raise UserError(
            f"--num-gpus {args.num_gpus} trains with one process per GPU, started by "
            "torchrun; run:\n\n"
            f"  {torchrun_command(args)}\n\n"
            "(on several machines, replace --standalone by --nnodes=M --node_rank=R "
            "--rdzv_backend=c10d --rdzv_endpoint=HOST:PORT, the same on every machine but --node_rank)"
        )

    import torch.distributed as dist

    try:
        device = resolve_torch_device(args.device)
        if in_torchrun:
            device = _setup_process_group(device)
            if args.num_gpus > 1 and args.num_gpus != int(os.environ.get("LOCAL_WORLD_SIZE", args.num_gpus)):
                logger.warning(
                    "--num-gpus %d differs from torchrun's --nproc_per_node: using torchrun's", args.num_gpus
                )
        return _train(args, device)
    except FloatingPointError as exc:
        logger.error("%s", exc)
        return 1
    except UserError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc).strip()) from exc
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _train(args: argparse.Namespace, device: str) -> int:
    from dyhead_serve.cli.dataset_args import catalog_from_args
    from dyhead_serve.config import load_config
    from dyhead_serve.data.coco_json import DatasetError
    from dyhead_serve.distributed import get_rank, get_world_size, is_main_process
    from dyhead_serve.modeling.build import build_model
    from dyhead_serve.training.auto_scale import auto_scale_workers
    from dyhead_serve.training.from_config import build_trainer

    catalog = catalog_from_args(args)
    cfg = auto_scale_workers(
        load_config(args.config, overrides=[*overrides_from_args(args), "MODEL.DEVICE", device]),
        get_world_size(),
    )
    if cfg.MODEL.LAYOUT == "mmdet":
        # Our losses, assigner and schedule are the official DyHead code's, not mmdetection's:
        # such a run would reproduce neither.
        raise ConfigError(
            f"{args.config} is an mmdetection model: train it in mmdetection, then run, export or "
            "serve its checkpoint here (--config with --weights)"
        )
    for name in cfg.DATASETS.TRAIN:
        catalog.get(name)  # an unknown name fails before anything is built
    for name in cfg.DATASETS.TEST:
        # The evaluation runs after training: a missing test set must fail now, not then.
        entry = catalog.get(name)
        if entry.prepare is None and not entry.json_file.is_file():
            raise DatasetError(
                f"test dataset {name!r}: {entry.json_file} does not exist; provide it, or train without "
                'evaluation with DATASETS.TEST "()"'
            )
    if is_main_process():
        out = Path(cfg.OUTPUT_DIR)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(cfg.dump(), encoding="utf-8")
        logger.info(
            "training with %d process(es) on %s; config saved to %s",
            get_world_size(),
            device,
            out / "config.yaml",
        )
    _seed_everything(int(cfg.SEED), get_rank())
    if device.startswith("cuda"):
        import torch

        torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK)
    trainer = build_trainer(cfg, build_model(cfg), catalog)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    return 0

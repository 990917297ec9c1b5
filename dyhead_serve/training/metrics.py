"""What a training run reports: one JSON line per iteration in ``OUTPUT_DIR/metrics.jsonl``,
and a progress line with the estimated time left."""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import statistics
from collections import deque
from pathlib import Path
from typing import Any

__all__ = ["METRICS_FILE", "MetricsWriter", "ProgressLogger"]

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


class MetricsWriter:
    """Appends one JSON object per line to ``output_dir/metrics.jsonl``.

    Training lines hold ``iteration``, every loss, ``total_loss``, ``lr``, ``time`` (seconds of
    the whole iteration) and ``data_time`` (seconds waiting for the batch); evaluation lines
    hold ``iteration`` and the metrics (``bbox/AP``, ...).

    Args:
        output_dir: ``OUTPUT_DIR``.
        start_iter: the first iteration of this run; lines of earlier runs for this or later
            iterations (left by an interrupted run that is now resumed) are dropped, so that
            the file reads as one history.
        enabled: False on processes other than the main one.
    """

    def __init__(self, output_dir: str | os.PathLike[str], start_iter: int = 0, enabled: bool = True) -> None:
        self.path = Path(output_dir) / METRICS_FILE
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._drop_from(start_iter)

    def _drop_from(self, start_iter: int) -> None:
        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if isinstance(record, dict) and int(record.get("iteration", -1)) < start_iter:
                kept.append(line)
        self.path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` (JSON-serialisable; non-finite floats are written as null)."""
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(clean) + "\n")


class ProgressLogger:
    """Logs ``eta  iter  losses  lr  time`` every ``period`` iterations and at the last one.

    The time per iteration is the median of the last ``period`` iterations; the ETA is that
    times the iterations left.

    Args:
        max_iter: ``SOLVER.MAX_ITER``.
        period: iterations between lines.
        enabled: False on processes other than the main one.
    """

    def __init__(self, max_iter: int, period: int = 20, enabled: bool = True) -> None:
        self.max_iter = max_iter
        self.period = max(period, 1)
        self.enabled = enabled
        self._times: deque[float] = deque(maxlen=self.period)

    def update(
        self, iteration: int, losses: dict[str, float], lr: float, time: float, data_time: float
    ) -> None:
        """Record iteration ``iteration`` (0-based) and log when a line is due."""
        self._times.append(time)
        if not self.enabled:
            return
        if (iteration + 1) % self.period and iteration + 1 < self.max_iter:
            return
        seconds_per_iter = statistics.median(self._times)
        eta = datetime.timedelta(seconds=round(seconds_per_iter * (self.max_iter - iteration - 1)))
        loss_text = "  ".join(f"{name}: {value:.4g}" for name, value in losses.items())
        logger.info(
            "eta: %s  iter: %d/%d  %s  lr: %.6g  time: %.3f s/it  data_time: %.3f s",
            eta, iteration + 1, self.max_iter, loss_text, lr, seconds_per_iter, data_time,
        )  # fmt: skip

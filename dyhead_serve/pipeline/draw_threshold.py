"""The lowest score a drawn image shows, by default: one value for ``predict --out-dir`` (its
``--draw-threshold``), ``POST /v1/detect/annotated`` (its ``draw_threshold``) and the demo page's
slider. Its own module, free of torch, so that building the command line stays cheap."""

from __future__ import annotations

__all__ = ["DRAW_THRESHOLD"]

DRAW_THRESHOLD = 0.3

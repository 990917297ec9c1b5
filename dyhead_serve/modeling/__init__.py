"""Detector modules: backbones, FPN, the DyHead tower, dense heads and their post-processing.

:class:`DyHead` is the DyHead tower as a neck for any feature pyramid (see its docstring and the
README's "DyHead as a module").
"""

from dyhead_serve.modeling.dyhead import DyHead, DyHeadBlock

__all__ = ["DyHead", "DyHeadBlock"]

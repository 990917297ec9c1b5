"""Detection heads that turn pyramid features into per-anchor predictions."""

from dyhead_serve.modeling.heads.atss import ATSSHead
from dyhead_serve.modeling.heads.retinanet import RetinaNetHead

__all__ = ["ATSSHead", "RetinaNetHead"]

"""Loss functions for the ``loss`` config key (a registered name or a dotted path)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fwdbwd_lib.registry import register_loss


@register_loss("cross_entropy")
def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits ``(batch, classes)`` against class indices ``(batch,)``."""
    return F.cross_entropy(outputs, targets)

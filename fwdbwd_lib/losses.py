"""Loss functions for the ``loss`` config key (a registered name or a dotted path)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fwdbwd_lib.registry import register_loss


@register_loss("cross_entropy")
def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits ``(batch, classes)`` against class indices ``(batch,)``."""
    return F.cross_entropy(outputs, targets)


@register_loss("frame_cross_entropy")
def frame_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled frames of logits ``(batch, time, classes)``.

    ``targets`` is ``(batch, time)`` with -100 on padding and unlabelled frames, which are left
    out of the mean. Other leading shapes work too: ``(..., classes)`` against ``(...)``.
    """
    return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1),
                           ignore_index=-100)

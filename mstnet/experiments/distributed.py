"""Distributed (DDP) training under torchrun: which process writes, and a wrapped model that keeps the
project's output type."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mstnet.models.output import ModelOutput


def in_process_group() -> bool:
    """Whether this process is one rank of a DDP run (launched by torchrun, the group joined)."""
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    """Whether this process writes results: the only one, or rank 0 under torchrun."""
    return not in_process_group() or dist.get_rank() == 0


class _TupleOutputs(nn.Module):
    """Returns (seg_logits, cls_logits) so DistributedDataParallel can find the output tensors."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        output = self.model(*args, **kwargs)
        return output.seg_logits, output.cls_logits


class DistributedModel(nn.Module):
    """A model under DistributedDataParallel that still returns :class:`ModelOutput`.

    Parameters a stage does not use (the classifier while segmentation trains, the frozen
    segmentation network afterwards) are allowed: ``find_unused_parameters=True``.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.parallel = nn.parallel.DistributedDataParallel(_TupleOutputs(model), find_unused_parameters=True)

    @property
    def core(self) -> nn.Module:
        return self.parallel.module.model

    def forward(self, *args: Any, **kwargs: Any) -> ModelOutput:
        seg_logits, cls_logits = self.parallel(*args, **kwargs)
        return ModelOutput(seg_logits=seg_logits, cls_logits=cls_logits)


def unwrap(model: nn.Module) -> nn.Module:
    """The model itself, inside a :class:`DistributedModel` or not."""
    return model.core if isinstance(model, DistributedModel) else model

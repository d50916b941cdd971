"""Clinical (textual) encoder of MST-Net (Fig. 1a, "Textual Transformation")."""

from __future__ import annotations

import torch
from torch import Tensor, nn

RESERVED_TOKENS = 2
"""Codes 0 and 1 of the shared table are reserved special tokens, as in the release
(TabTransformer-style); column j's codes start at 2 + sum of the earlier cardinalities."""


class ClinicalEncoder(nn.Module):
    """Clinical record -> one vector per patient.

    Categorical columns share one embedding table, each column offset into it
    (TabTransformer-style, 2 reserved special tokens); every column's embedding
    (``embedding_size``, 512) passes a linear map to ``output_size`` (256). Numeric features,
    if any, form one more token through a linear map. The vector is the mean over the tokens.

    (B, n_categorical) long codes, (B, n_numeric) floats -> (B, output_size).

    Args:
        cardinalities: codes per categorical column, code 0 = unknown (codes 0..card-1).
        num_numeric: numeric features (0 = none).
        embedding_size: shared embedding width (512).
        output_size: output width (256).
    """

    def __init__(self, cardinalities: tuple[int, ...], num_numeric: int = 0, embedding_size: int = 512,
                 output_size: int = 256) -> None:
        super().__init__()
        if not cardinalities and num_numeric == 0:
            raise ValueError("ClinicalEncoder needs at least one categorical or numeric column")
        self.cardinalities = tuple(cardinalities)
        self.num_numeric = num_numeric
        offsets = torch.tensor([RESERVED_TOKENS + sum(self.cardinalities[:j]) for j in range(len(self.cardinalities))],
                               dtype=torch.long)
        self.register_buffer("offsets", offsets, persistent=False)
        self.register_buffer("limits", torch.tensor(self.cardinalities, dtype=torch.long), persistent=False)
        self.embedding = nn.Embedding(RESERVED_TOKENS + sum(self.cardinalities), embedding_size) if cardinalities else None
        self.categorical_projection = nn.Linear(embedding_size, output_size) if cardinalities else None
        self.numeric_projection = nn.Linear(num_numeric, output_size) if num_numeric else None

    def forward(self, categorical: Tensor | None, numeric: Tensor | None) -> Tensor:
        tokens = []
        if self.embedding is not None:
            self._check_categorical(categorical)
            tokens.append(self.categorical_projection(self.embedding(categorical.long() + self.offsets)))
        if self.numeric_projection is not None:
            self._check_numeric(numeric)
            tokens.append(self.numeric_projection(numeric.to(self.numeric_projection.weight.dtype)).unsqueeze(1))
        return torch.cat(tokens, dim=1).mean(dim=1)

    def _check_categorical(self, categorical: Tensor | None) -> None:
        if categorical is None:
            raise ValueError(f"clinical_categorical is None but the model was built with {len(self.cardinalities)} "
                             "categorical clinical columns (use_clinical=True); pass it or build with use_clinical=False")
        if categorical.dim() != 2 or categorical.shape[1] != len(self.cardinalities):
            raise ValueError(f"clinical_categorical must be [B, {len(self.cardinalities)}]; got {tuple(categorical.shape)}")
        if categorical.is_floating_point():
            raise ValueError(f"clinical_categorical must hold integer codes, got dtype {categorical.dtype}")
        if categorical.device.type == "meta":
            return
        bad = (categorical < 0) | (categorical >= self.limits)
        if bool(bad.any()):
            row, column = (int(i) for i in bad.nonzero()[0])
            raise ValueError(f"clinical_categorical column {column} of batch row {row} has code {int(categorical[row, column])}; "
                             f"that column takes codes 0..{self.cardinalities[column] - 1} (0 = unknown)")

    def _check_numeric(self, numeric: Tensor | None) -> None:
        if numeric is None:
            raise ValueError(f"clinical_numeric is None but the model was built with {self.num_numeric} numeric clinical "
                             "features (use_clinical=True); pass it or build with use_clinical=False")
        if numeric.dim() != 2 or numeric.shape[1] != self.num_numeric:
            raise ValueError(f"clinical_numeric must be [B, {self.num_numeric}]; got {tuple(numeric.shape)}")
        if numeric.device.type != "meta" and not bool(torch.isfinite(numeric).all()):
            column = int((~torch.isfinite(numeric)).nonzero()[0, 1])
            raise ValueError(f"clinical_numeric column {column} holds NaN or inf; impute missing values before the model")

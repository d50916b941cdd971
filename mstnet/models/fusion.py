"""Fusion modules of MST-Net (Fig. 1e): temporal fusion (CMSTF, generalised to T >= 1) and CMAF."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

DAYS_PER_YEAR = 365.25


class TimeIntervalEncoding(nn.Module):
    """Days between two scans -> a learned vector (not in the paper; the time-aware ablation).

    Sine/cosine features of the interval in years at periods 4, 2, 1, 1/2, ... years (one per
    frequency), then a linear map. The linear map starts at zero, so a fresh model with the
    encoding on behaves exactly like one without it.

    (B, P) intervals in days -> (B, P, output_size).

    Args:
        output_size: width of the encoding.
        frequencies: sine/cosine pairs (8: periods from 4 years down to about 11 days).
    """

    def __init__(self, output_size: int, frequencies: int = 8) -> None:
        super().__init__()
        angular = 2 * math.pi / 4.0 * 2.0 ** torch.arange(frequencies, dtype=torch.float32)
        self.register_buffer("angular_frequencies", angular, persistent=False)
        self.projection = nn.Linear(2 * frequencies, output_size)
        nn.init.zeros_(self.projection.weight)
        nn.init.zeros_(self.projection.bias)

    def forward(self, interval_days: Tensor) -> Tensor:
        phase = (interval_days.float() / DAYS_PER_YEAR).unsqueeze(-1) * self.angular_frequencies
        features = torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1)
        return self.projection(features.to(self.projection.weight.dtype))


class TemporalFusion(nn.Module):
    """Per-time-point image vectors -> one vector per patient.

    ``kind``:

    - ``"cmstf"`` (paper, first half of CMSTF): for each consecutive pair (f_{t-1}, f_t),
      u = LayerNorm([f_{t-1}, f_t, f_t - f_{t-1}] (+ interval encoding)), then
      MLP(u) (3d -> d/2 -> d, ReLU) + (f_{t-1} + f_t) / 2; averaged over the T - 1 pairs. For
      T = 2 this is exactly the paper's module. T = 1 is treated as a pair (f_0, f_0) with a
      zero interval (no change), so the same weights serve a single-scan model.
    - ``"cmstf_nodiff"``: the same without the difference term ([f_{t-1}, f_t], 2d wide).
    - ``"concat"``: LayerNorm -> linear (T d -> d) -> ReLU over all T vectors (fixed T).
    - ``"mean"``: the mean over time points; ``"last"``: the latest time point (no parameters).

    (B, T, d) features, optional (B, T) days since the first scan -> (B, d).

    Args:
        feature_size: d (1536 in the paper: z12 768 + global branch 768).
        kind: see above.
        num_timepoints: T (only ``"concat"`` depends on it).
        time_encoding: add an encoding of the days between the two scans of each pair
            to the LayerNorm input (cmstf kinds only).
        time_encoding_frequencies: sine/cosine pairs of that encoding.
        dropout: dropout inside the MLP (0.0).
    """

    def __init__(
        self,
        feature_size: int,
        kind: Literal["cmstf", "cmstf_nodiff", "concat", "mean", "last"] = "cmstf",
        num_timepoints: int = 2,
        time_encoding: bool = False,
        time_encoding_frequencies: int = 8,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.num_timepoints = num_timepoints
        self.time_encoding = None
        if kind in ("cmstf", "cmstf_nodiff"):
            width = (3 if kind == "cmstf" else 2) * feature_size
            self.norm = nn.LayerNorm(width)
            self.mlp = nn.Sequential(nn.Linear(width, feature_size // 2), nn.ReLU(), nn.Dropout(dropout),
                                     nn.Linear(feature_size // 2, feature_size))
            if time_encoding:
                self.time_encoding = TimeIntervalEncoding(width, time_encoding_frequencies)
        elif kind == "concat":
            self.norm = nn.LayerNorm(num_timepoints * feature_size)
            self.mlp = nn.Sequential(nn.Linear(num_timepoints * feature_size, feature_size), nn.ReLU())
        elif kind not in ("mean", "last"):
            raise ValueError(f"unknown temporal fusion {kind!r}")
        elif time_encoding:
            raise ValueError(f"time_encoding needs temporal fusion 'cmstf' or 'cmstf_nodiff', not {kind!r}")

    def forward(self, features: Tensor, days: Tensor | None = None) -> Tensor:
        batch, timepoints, _ = features.shape
        if self.kind == "mean":
            return features.mean(dim=1)
        if self.kind == "last":
            return features[:, -1]
        if self.kind == "concat":
            if timepoints != self.num_timepoints:
                raise ValueError(f"concat temporal fusion was built for {self.num_timepoints} time points; got {timepoints}")
            return self.mlp(self.norm(features.reshape(batch, -1)))
        previous, current = (features, features) if timepoints == 1 else (features[:, :-1], features[:, 1:])
        parts = [previous, current] + ([current - previous] if self.kind == "cmstf" else [])
        pairs = torch.cat(parts, dim=-1)
        if self.time_encoding is not None:
            if days is None:
                raise ValueError("time_encoding=True needs days [B, T] (days since the first scan); got None")
            if tuple(days.shape) != (batch, timepoints):
                raise ValueError(f"days must be [B, T] = [{batch}, {timepoints}]; got {tuple(days.shape)}")
            intervals = torch.zeros_like(days[:, :1]) if timepoints == 1 else days[:, 1:] - days[:, :-1]
            pairs = pairs + self.time_encoding(intervals).to(pairs.dtype)
        fused = self.mlp(self.norm(pairs)) + (previous + current) / 2
        return fused.mean(dim=1)


class CrossModalAttentionFusion(nn.Module):
    """CMAF (MST-Net, Fig. 1e, second half): image vector and clinical vector -> one vector.

    Each modality passes a linear + ReLU; from each, three linear + ReLU maps give a query,
    a key and a value. The image branch attends with the clinical query, the clinical branch
    with the image query (multi-head attention, 4 heads, dropout 0.2); each branch adds its
    input back (residual) and ends in a linear map; the two are concatenated.

    Deviation from the release: there each branch attends over the single token of one
    modality, where the softmax is identically 1 (the query and key maps then never
    receive a gradient). Here the keys and values of both modalities form a two-token
    context, so the attention weights are learned; the parameters are the same.

    (B, d) image, (B, d) clinical -> (B, 2 d).

    Args:
        size: d (256).
        num_heads: attention heads (4).
        dropout: attention dropout (0.2).
    """

    def __init__(self, size: int = 256, num_heads: int = 4, dropout: float = 0.2) -> None:
        super().__init__()

        def linear_relu() -> nn.Sequential:
            return nn.Sequential(nn.Linear(size, size), nn.ReLU())

        self.image_input, self.clinical_input = linear_relu(), linear_relu()
        self.image_query, self.image_key, self.image_value = linear_relu(), linear_relu(), linear_relu()
        self.clinical_query, self.clinical_key, self.clinical_value = linear_relu(), linear_relu(), linear_relu()
        self.image_attention = nn.MultiheadAttention(size, num_heads, dropout=dropout, batch_first=True)
        self.clinical_attention = nn.MultiheadAttention(size, num_heads, dropout=dropout, batch_first=True)
        self.image_output = nn.Linear(size, size)
        self.clinical_output = nn.Linear(size, size)

    def forward(self, image: Tensor, clinical: Tensor) -> Tensor:
        image = self.image_input(image)
        clinical = self.clinical_input(clinical)
        keys = torch.stack([self.image_key(image), self.clinical_key(clinical)], dim=1)
        values = torch.stack([self.image_value(image), self.clinical_value(clinical)], dim=1)
        image_attended, _ = self.image_attention(self.clinical_query(clinical).unsqueeze(1), keys, values, need_weights=False)
        clinical_attended, _ = self.clinical_attention(self.image_query(image).unsqueeze(1), keys, values, need_weights=False)
        image = self.image_output(image_attended.squeeze(1) + image)
        clinical = self.clinical_output(clinical_attended.squeeze(1) + clinical)
        return torch.cat([image, clinical], dim=-1)

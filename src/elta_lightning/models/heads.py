"""Prediction heads: a vote distribution over rating levels, or one score in the data's range."""

from __future__ import annotations

import torch
from torch import nn


class DistributionHead(nn.Module):
    """Linear - ReLU - Linear over K rating levels (the authors' EMD-mode head); returns logits."""

    def __init__(self, in_dim: int, num_levels: int, hidden_dim: int = 64) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, num_levels)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class ScoreHead(nn.Module):
    """Dropout - Linear - Sigmoid (the authors' MSE-mode head); returns the score on [0, 1],
    i.e. the data set's range normalised, so one learning rate suits every data set."""

    def __init__(self, in_dim: int, dropout: float = 0.75) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, 1), nn.Sigmoid())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features).squeeze(-1)

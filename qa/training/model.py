"""The reader network: a MiniLM encoder with a relevance head on [CLS] and a start/end span head."""

from __future__ import annotations

import torch
from torch import nn


class ReaderNet(nn.Module):
    """Question and sentence in one sequence -> (answer logit, start logits, end logits)."""

    def __init__(self, encoder: nn.Module, hidden: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.relevance = nn.Linear(hidden, 1)
        self.span = nn.Linear(hidden, 2)

    @classmethod
    def from_encoder(cls, path: str) -> "ReaderNet":
        from transformers import AutoModel

        encoder = AutoModel.from_pretrained(path, add_pooling_layer=False)
        return cls(encoder, encoder.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state
        logit = self.relevance(self.dropout(hidden[:, 0])).squeeze(-1)
        start, end = self.span(self.dropout(hidden)).unbind(-1)
        return logit, start, end

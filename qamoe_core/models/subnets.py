"""The unimodal subnetworks TFN and LMF share (Zadeh et al. 2017, §3.1; Liu et al. 2018, §4).

Text: an LSTM over the word vectors; its last hidden state, through dropout and a linear
layer, is the text embedding. Audio and vision: the features averaged over time, then three
ReLU layers (the papers' "3-layer DNN"; MMSA averages the same way, `need_normalized`).

Adapted: inputs are standardised with the file's TRAIN statistics (MMSA's SubNet starts
with a BatchNorm, which learns the same scale from batches); the LSTM and the average read
only the usable steps (padding, and with ``mask_zero_steps`` all-zero steps, left out), which
the papers' fixed-length, fully observed inputs never needed.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from qamoe_core.models.base import MultimodalModel
from qamoe_core.models.layers import compact_steps, masked_mean, usable_steps


class SubNet(nn.Module):
    """(B, D) -> (B, hidden): dropout, then three Linear + ReLU layers."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(dim, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TextSubNet(nn.Module):
    """(B, T, D), keep (B, T) -> (B, out): an LSTM over the kept steps, in order; its final
    hidden state -> dropout -> Linear."""

    def __init__(self, dim: int, hidden: int, out: int, dropout: float) -> None:
        super().__init__()
        self.rnn = nn.LSTM(dim, hidden, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, out)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        x, lengths = compact_steps(x, keep)
        # A sample with no kept step reads one zero step (the TRAIN mean after standardising).
        packed = pack_padded_sequence(
            x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
        )
        _, (h, _) = self.rnn(packed)  # h (1, B, hidden), in the batch's original order
        return self.out(self.drop(h[-1]))


def build_subnets(
    dims: Mapping[str, int], hidden: Mapping[str, int], text_out: int, dropout: Mapping[str, float]
) -> nn.ModuleDict:
    """One subnetwork per modality: TextSubNet for text, SubNet for the others."""
    return nn.ModuleDict(
        {m: TextSubNet(d, hidden[m], text_out, dropout[m]) if m == "text"
         else SubNet(d, hidden[m], dropout[m]) for m, d in dims.items()}
    )  # fmt: skip


def out_dim(modality: str, hidden: Mapping[str, int], text_out: int) -> int:
    return text_out if modality == "text" else hidden[modality]


def embed(model: MultimodalModel, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """{m: (B, d_m)} unimodal embeddings of a TFN/LMF-style model (``model.subnets``)."""
    out: dict[str, Tensor] = {}
    subnets = model.subnets
    assert isinstance(subnets, nn.ModuleDict)
    for m in model.modalities:
        x, lengths = batch[m], batch[f"{m}_len"]
        keep = usable_steps(x, lengths, model.cfg.mask_zero_steps)  # (B, T)
        xs = model.standardise(m, x) * keep[:, :, None].to(x.dtype)
        net = subnets[m]
        out[m] = net(xs, keep) if isinstance(net, TextSubNet) else net(masked_mean(xs, keep))
    return out


def with_one(h: Tensor) -> Tensor:
    """(B, n) -> (B, n + 1): [h; 1], so products keep every lower-order term."""
    return torch.cat([h, h.new_ones(h.shape[0], 1)], dim=-1)

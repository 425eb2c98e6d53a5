"""nn.Embedding: rows hit twice in one sample add up: ‖∇E_i‖² = Σ_{s,t: idx_s=idx_t} ⟨g_s, g_t⟩."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detectors.probe.registry import ProbeError, register_rule


@register_rule(nn.Embedding)
def embedding_norms(
    module: nn.Module, inputs: tuple[Tensor, ...], grad_output: Tensor
) -> dict[str, Tensor]:
    """inputs[0]: integer indices [B, ...]; grad_output: [B, ..., D]."""
    if module.scale_grad_by_freq:
        raise ProbeError(
            "Embedding(scale_grad_by_freq=True) scales by batch frequencies; no per-sample gradient"
        )
    idx, g = inputs[0], grad_output
    b, dim = idx.shape[0], g.shape[-1]
    idx = idx.reshape(b, -1)  # [B, T]
    g = g.reshape(b, -1, dim)  # [B, T, D]
    if module.padding_idx is not None:  # the padding row never receives gradient
        g = g * (idx != module.padding_idx).unsqueeze(-1).to(g.dtype)
    t, rows = idx.shape[1], module.num_embeddings
    # Whichever holds fewer numbers per sample: the ghost form's T×T Gram matrix, or the
    # per-sample weight gradient V×D (a few rows hit by long sequences). A BERT-size table
    # (V=30k, D=768) at T=512 takes the Gram form: 0.26M vs 23M numbers per sample.
    if t * t <= rows * dim:  # ghost form over the sequence
        same = (idx.unsqueeze(2) == idx.unsqueeze(1)).to(g.dtype)  # [B, T, T]
        return {"weight": (same * torch.bmm(g, g.transpose(1, 2))).sum(dim=(1, 2))}
    per_sample = g.new_zeros(b, rows, dim)
    per_sample.scatter_add_(1, idx.unsqueeze(-1).expand(-1, -1, dim), g)  # [B, V, D]
    return {"weight": per_sample.pow(2).sum(dim=(1, 2))}

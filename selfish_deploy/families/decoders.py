"""The ``softmax`` decoder: one linear layer to the vocabulary, then log-softmax.

``decoder.weight`` (V, out) is tied to the embedding with ``tie_weights`` (then stored once, as
``encoder.weight``); ``decoder.bias`` (V,) stays dense. Log-softmax followed by ``nll_loss`` is exactly what
``cross_entropy`` computes, so training is unchanged by the model returning log-probabilities.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ..errors import UserError
from . import Decoder, get_family, register_decoder


def trunk_width(config) -> int:
    """The trunk's output width: the decoder's input."""
    return get_family(config.arch).output_size(config)


class SoftmaxDecoder(nn.Linear):
    """``log_softmax(x W^T + b)`` over the last axis."""

    def init_weights(self, tied: bool) -> None:
        # word_language_model's init: zero bias, U(-0.1, 0.1) weights unless they are the embedding's
        nn.init.zeros_(self.bias)
        if not tied:
            nn.init.uniform_(self.weight, -0.1, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(super().forward(x), dim=-1)


def _shapes(config) -> dict[str, tuple[int, ...]]:
    shapes = {} if config.tie_weights else {"decoder.weight": (config.vocab_size, trunk_width(config))}
    shapes["decoder.bias"] = (config.vocab_size,)
    return shapes


def _validate(config) -> None:
    if config.experts:
        raise UserError(f"--experts {config.experts} is for the mixture of softmaxes (--decoder mos); "
                        "the softmax decoder has none")
    if config.tie_weights and trunk_width(config) != config.emb:
        raise UserError(f"tied weights need the trunk's output width ({trunk_width(config)}) to equal --emb "
                        f"({config.emb})")


class SoftmaxHead:
    """Sparse runtime: the fused decoder + log-softmax kernel on the stored (possibly tied) matrix."""

    def __init__(self, exported, matrix, vector, kernels):
        cfg = exported.model_config
        self.weight = matrix("encoder.weight" if cfg.tie_weights else "decoder.weight")
        self.bias = vector("decoder.bias")
        self.kernels = kernels

    def __call__(self, x: torch.Tensor, targets: torch.Tensor | None = None, full: bool = False,
                 top1: bool = False) -> dict[str, torch.Tensor]:
        return self.kernels.decoder(self.weight, self.bias, x, targets, full=full, top1=top1)


def fused_decoder(head) -> tuple:
    """What a trunk's one-call step (``fused_step``) runs of ``head``: a softmax head's matrix and bias; for
    another head (MoS), (None, None): the call runs the trunk only and the backend runs the head after it."""
    return (head.weight, head.bias) if isinstance(head, SoftmaxHead) else (None, None)


def _onnx_head(graph, exported, x: str) -> str:
    """``Gemm(x, W, b, transB=1) -> LogSoftmax``: (N, out) -> (N, V)."""
    cfg = exported.model_config
    dec = graph.weight_of("encoder.weight" if cfg.tie_weights else "decoder.weight")
    bias = graph.const("decoder.bias", exported.dense["decoder.bias"].float().numpy().astype(np.float32))
    logits = graph.node("Gemm", [x, dec, bias], "logits_flat", transB=1)  # (N, V)
    return graph.node("LogSoftmax", [logits], "logprobs_flat", axis=1)


register_decoder(Decoder(
    name="softmax", title="softmax",
    module=lambda config: SoftmaxDecoder(trunk_width(config), config.vocab_size),
    parameter_shapes=_shapes, sparse_head=SoftmaxHead, onnx_head=_onnx_head, validate=_validate,
))

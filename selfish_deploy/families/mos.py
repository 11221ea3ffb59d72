"""The mixture-of-softmaxes decoder (Yang et al. 2018, "Breaking the softmax bottleneck") of AWD-LSTM-MoS.

As ``zihangdai/mos`` ``model.py`` ``RNNModel`` (``__init__`` and ``forward``): for each position, with the
trunk's (dropped) output ``h`` (width ``n_in``, their ``nhidlast``) and K experts of width E (their ``ninp``,
the embedding width)::

    latent   = tanh(W_l h + b_l)            (K*E,)   nn.Linear(nhidlast, n_experts*ninp) + Tanh
    latent   = locked dropout (dropoutl)             one mask per sequence, training only
    prior    = softmax(W_p h)               (K,)     nn.Linear(nhidlast, n_experts, bias=False)
    logit_k  = W latent_k + b               (V,)     nn.Linear(ninp, ntoken), W tied to the embedding
    p(w)     = sum_k prior_k softmax(logit_k)(w)

``mixture`` says how the K softmaxes are mixed:

- ``floor`` (default, theirs): ``log(sum_k prior_k softmax(logit_k) + 1e-8)``, the mixture summed in
  probability space and floored, as their ``forward`` (``torch.log(prob.add_(1e-8))``) and so their reported
  perplexities. The probabilities sum to 1 + V * 1e-8 (1.0003 on WikiText-2); the floor changes a
  log-probability by more than 0.01 only where p < 1e-6. Training keeps one (T, B, K, V) tensor alive for
  backward, which is why it is also the faster one on CPU (``benchmarks/mos_mixture.py``).
- ``exact`` (ours): ``log p`` without the floor, as ``logsumexp_k(log prior_k + log_softmax(logit_k))``: the
  probabilities sum to 1, and stay finite where every expert's fp32 probability underflows.

The runtime and the ONNX graph compute both in log space (a log-sum-exp over the experts, then
``logaddexp(., log 1e-8)`` for ``floor``), so a served score is the training model's evaluation number.

Parameter names: ``decoder.weight`` (V, E) and ``decoder.bias`` (V,) as the softmax decoder's (so tying is the
same ``decoder.weight = encoder.weight``), ``decoder.latent.weight`` (K*E, n_in), ``decoder.latent.bias``
(K*E,), ``decoder.prior.weight`` (K, n_in) (theirs: ``latent.0.*``, ``prior.weight``, ``decoder.*``).

Sparse tensors as Selfish-RNN's ``sparse_rnn_core.Masking.add_module``, which masks every parameter whose
name has no "bias" in it: the latent and prior weights and the vocabulary projection (the embedding itself
when tied); ``decoder.latent.bias`` and ``decoder.bias`` stay dense.

Column layout of the runtime head (feature-major, N positions, K experts)::

    x (n_in, N) --spmm--> tanh --> (K*E, N)  rows k*E + e
                 reorder  -------> (E, K*N)  column k*N + n: expert k of position n
                 kernels.decoder   (K*N, V)  log_softmax per column, or only the targets' entries
                 + log prior (K, N), logsumexp over k --> (N, V)
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from ..errors import UserError
from ..kernels.reference import decoder_outputs
from . import Decoder, Option, register_decoder
from .decoders import trunk_width

DEFAULT_EXPERTS = 15  # zihangdai/mos README, both PTB and WikiText-2 (their main.py's default is 10)
PREFIX = "decoder."
# Positions per chunk of the full mixture: K * chunk * V fp32 values at a time (about 64 MiB).
_FULL_CHUNK_VALUES = 16 * 2**20
FLOOR = 1e-8  # zihangdai/mos model.py: torch.log(prob.add_(1e-8))
MIXTURES = ("floor", "exact")


def n_experts(config) -> int:
    """``ModelConfig.experts``, 0 meaning the default of 15."""
    return config.experts or DEFAULT_EXPERTS


def locked_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """zihangdai/mos ``locked_dropout.LockedDropout``: one Bernoulli mask per (batch, feature) of a (T, B, F)
    tensor, shared by every time step, scaled by 1/(1-p)."""
    if not training or not p:
        return x
    mask = x.new_empty(1, x.size(1), x.size(2)).bernoulli_(1 - p).div_(1 - p)
    return x * mask


def mixture_logprobs(logits: torch.Tensor, prior_logits: torch.Tensor, mixture: str = "floor") -> torch.Tensor:
    """The mixture's log-probabilities: logits (..., K, V), prior logits (..., K) -> (..., V). ``floor``:
    ``log(sum_k softmax(prior)_k softmax(logits_k) + 1e-8)`` in probability space, as zihangdai/mos;
    ``exact``: ``log sum_k ...`` without leaving log space (stable for any logit size)."""
    if mixture == "floor":
        prior = torch.softmax(prior_logits, dim=-1).unsqueeze(-2)  # (..., 1, K)
        prob = (prior @ torch.softmax(logits, dim=-1)).squeeze(-2)  # (..., V): one (..., K, V) tensor saved
        return torch.log(prob + FLOOR)
    if mixture != "exact":
        raise ValueError(f"mixture must be one of {', '.join(MIXTURES)}, got {mixture!r}")
    log_prior = torch.log_softmax(prior_logits, dim=-1).unsqueeze(-1)  # (..., K, 1)
    return torch.logsumexp(torch.log_softmax(logits, dim=-1) + log_prior, dim=-2)


def floored(log_p: torch.Tensor, mixture: str) -> torch.Tensor:
    """``log(exp(log_p) + 1e-8)`` for ``floor`` (the runtime's log-space form of theirs), ``log_p`` for
    ``exact``."""
    return torch.logaddexp(log_p, log_p.new_tensor(math.log(FLOOR))) if mixture == "floor" else log_p


class MoSDecoder(nn.Module):
    """Mixture of K softmaxes over a tanh latent projection; ``forward`` (T, B, n_in) -> log-probs (T, B, V)."""

    def __init__(self, n_in: int, emb: int, vocab_size: int, experts: int = DEFAULT_EXPERTS,
                 dropoutl: float = 0.0, mixture: str = "floor"):
        super().__init__()
        if experts < 1:
            raise ValueError(f"experts must be positive, got {experts}")
        if mixture not in MIXTURES:
            raise ValueError(f"mixture must be one of {', '.join(MIXTURES)}, got {mixture!r}")
        self.n_in, self.emb, self.vocab_size, self.experts, self.dropoutl = n_in, emb, vocab_size, experts, dropoutl
        self.mixture = mixture
        self.latent = nn.Linear(n_in, experts * emb)  # PyTorch's default init, as theirs
        self.prior = nn.Linear(n_in, experts, bias=False)
        # the vocabulary projection as direct parameters, so that the full names are decoder.weight/bias
        self.weight = nn.Parameter(torch.empty(vocab_size, emb))
        self.bias = nn.Parameter(torch.empty(vocab_size))
        self.init_weights(tied=False)

    def init_weights(self, tied: bool) -> None:
        """Their ``init_weights``: decoder.weight U(-0.1, 0.1) (when tied, the embedding's own init, which is
        the same distribution), decoder.bias 0; latent and prior keep PyTorch's nn.Linear init."""
        nn.init.zeros_(self.bias)
        if not tied:
            nn.init.uniform_(self.weight, -0.1, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, _ = x.shape
        K, E = self.experts, self.emb
        latent = torch.tanh(self.latent(x))  # (T, B, K*E)
        latent = locked_dropout(latent, self.dropoutl, self.training)
        logits = nn.functional.linear(latent.view(T, B, K, E), self.weight, self.bias)  # (T, B, K, V)
        return mixture_logprobs(logits, self.prior(x), self.mixture)  # (T, B, V)


def parameter_shapes(n_in: int, emb: int, vocab_size: int, experts: int, tie_weights: bool) -> dict:
    """Full name -> shape of every parameter of the decoder in ``named_parameters`` order (tied: no
    ``decoder.weight``)."""
    shapes = {} if tie_weights else {PREFIX + "weight": (vocab_size, emb)}
    shapes.update({PREFIX + "bias": (vocab_size,), PREFIX + "latent.weight": (experts * emb, n_in),
                   PREFIX + "latent.bias": (experts * emb,), PREFIX + "prior.weight": (experts, n_in)})
    return shapes


def sparse_names(tie_weights: bool) -> list[str]:
    """The decoder's masked tensors: every weight, no bias (Selfish-RNN's ``Masking.add_module``); when tied
    the vocabulary projection is ``encoder.weight``, which the embedding already lists."""
    names = [PREFIX + "latent.weight", PREFIX + "prior.weight"]
    return names if tie_weights else [*names, PREFIX + "weight"]


class SparseMoSHead:
    """The runtime's MoS decoder on the export's matrices: ``(x (n_in, N), targets=None, full=False,
    top1=False) -> dict`` like ``kernels.decoder`` (``target_lp`` (N,), ``argmax``/``max_lp`` (N,),
    ``logprobs`` (N, V)). Every product is a kernel call: the latent and the prior through ``spmm``, the
    vocabulary projection of all K*N expert columns in one fused ``kernels.decoder`` call (W X + b with the
    log-softmax per column), so scoring never materialises (K*N, V)."""

    def __init__(self, exported, matrix, vector, kernels):
        cfg = exported.model_config
        experts, emb = n_experts(cfg), cfg.emb
        self.kernels, self.experts, self.emb = kernels, experts, emb
        self.mixture = cfg.option("mixture")
        self.latent = matrix(PREFIX + "latent.weight")
        self.latent_bias = vector(PREFIX + "latent.bias")
        self.prior = matrix(PREFIX + "prior.weight")
        self.out = matrix("encoder.weight") if cfg.tie_weights else matrix(PREFIX + "weight")
        self.out_bias = vector(PREFIX + "bias")
        if self.latent.rows != experts * emb or self.prior.rows != experts or self.out.cols != emb:
            raise ValueError(f"MoS shapes do not fit {experts} experts of width {emb}: latent "
                             f"{self.latent.shape}, prior {self.prior.shape}, decoder {self.out.shape}")

    def _experts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The latent as (E, K*N), column k*N + n, and the log prior (K, N)."""
        K, E, N = self.experts, self.emb, x.shape[1]
        latent = torch.tanh(self.kernels.spmm(self.latent, x, self.latent_bias))  # (K*E, N)
        latent = latent.view(K, E, N).transpose(0, 1).reshape(E, K * N)
        log_prior = torch.log_softmax(self.kernels.spmm(self.prior, x), dim=0)  # (K, N)
        return latent.contiguous(), log_prior

    def __call__(self, x: torch.Tensor, targets: torch.Tensor | None = None, full: bool = False,
                 top1: bool = False) -> dict[str, torch.Tensor]:
        K, N, V = self.experts, x.shape[1], self.out.rows
        x = x.contiguous()
        if targets is not None and not (full or top1):
            latent, log_prior = self._experts(x)
            per_expert = self.kernels.decoder(self.out, self.out_bias, latent, targets.repeat(K).contiguous())
            lse = torch.logsumexp(per_expert["target_lp"].view(K, N) + log_prior, dim=0)
            return {"target_lp": floored(lse, self.mixture)}
        chunk = max(1, _FULL_CHUNK_VALUES // max(1, K * V))
        parts = []
        for s in range(0, N, chunk):
            latent, log_prior = self._experts(x[:, s:s + chunk])
            n = log_prior.shape[1]
            logp = self.kernels.decoder(self.out, self.out_bias, latent, full=True)["logprobs"]  # (K*n, V)
            lse = torch.logsumexp(logp.view(K, n, V) + log_prior.unsqueeze(2), dim=0)  # (n, V)
            parts.append(floored(lse, self.mixture))
        logp = torch.cat(parts) if parts else x.new_zeros(0, V)
        return decoder_outputs(logp, targets, full, top1)


def onnx_head(g, x: str, latent_w: str, latent_b: str, prior_w: str, dec_w: str, dec_b: str,
              experts: int, emb: int, vocab_size: int, mixture: str = "floor") -> str:
    """Append the MoS decoder to an ONNX graph ``g`` (``node(op, inputs, output, **attrs)`` and
    ``const(name, array)``, as ``export/onnx_graph.OnnxGraph``): ``x`` (N, n_in) -> log-probabilities (N, V).
    Weights are float value names in PyTorch's (out, in) layout. Standard operators only (opset 17): Gemm,
    Tanh, Reshape, LogSoftmax, Unsqueeze, Add and a max-shifted log-sum-exp over the experts (ReduceMax,
    Sub, Exp, ReduceSum, Log), which stays finite where every expert's probability underflows fp32; for
    ``floor``, then ``Log(Exp(.) + 1e-8)``."""
    latent = g.node("Gemm", [x, latent_w, latent_b], "mos.latent_lin", transB=1)  # (N, K*E)
    latent = g.node("Tanh", [latent], "mos.latent")
    latent = g.node("Reshape", [latent, g.const("mos.shape_e", np.array([-1, emb], np.int64))],
                    "mos.latent_rows")  # (N*K, E): row n*K + k
    logits = g.node("Gemm", [latent, dec_w, dec_b], "mos.logits", transB=1)  # (N*K, V)
    logp = g.node("LogSoftmax", [logits], "mos.expert_logp", axis=1)
    logp = g.node("Reshape", [logp, g.const("mos.shape_nkv", np.array([-1, experts, vocab_size], np.int64))],
                  "mos.expert_logp_nkv")  # (N, K, V)
    prior = g.node("Gemm", [x, prior_w], "mos.prior_logits", transB=1)  # (N, K)
    prior = g.node("LogSoftmax", [prior], "mos.log_prior", axis=1)
    prior = g.node("Unsqueeze", [prior, g.const("mos.axis2", np.array([2], np.int64))], "mos.log_prior_nk1")
    joint = g.node("Add", [logp, prior], "mos.joint")  # (N, K, V)
    top = g.node("ReduceMax", [joint], "mos.max", axes=[1], keepdims=1)  # (N, 1, V)
    shifted = g.node("Exp", [g.node("Sub", [joint, top], "mos.shifted")], "mos.exp")
    total = g.node("ReduceSum", [shifted, g.const("mos.axis1", np.array([1], np.int64))], "mos.sum",
                   keepdims=1)
    lse = g.node("Add", [g.node("Log", [total], "mos.log_sum"), top], "mos.lse")  # (N, 1, V)
    if mixture == "floor":  # exp(lse) <= 1: no overflow; where it underflows, log(1e-8) as theirs
        p = g.node("Add", [g.node("Exp", [lse], "mos.p"), g.const("mos.floor", np.array(FLOOR, np.float32))],
                   "mos.p_floor")
        lse = g.node("Log", [p], "mos.log_p_floor")
    return g.node("Squeeze", [lse, g.const("mos.axis1_sq", np.array([1], np.int64))], "mos.logprobs")


# --- the registry entry --------------------------------------------------------------------------------

DROPOUTL = Option("dropoutl", 0.29, "mos: locked dropout on the latent (training only); zihangdai/mos's "
                  "PTB and WikiText-2 commands both pass 0.29 (their main.py's own default is dropouth)")
MIXTURE = Option("mixture", "floor", "mos: 'floor' (theirs: log(p + 1e-8), the experts' probabilities summed) "
                 "or 'exact' (ours: log p in log space, probabilities summing to 1)")


def _shapes(config) -> dict[str, tuple[int, ...]]:
    return parameter_shapes(trunk_width(config), config.emb, config.vocab_size, n_experts(config),
                            config.tie_weights)


def _validate(config) -> None:
    if config.experts == 0:  # resolved like the options, so that config.json and the card say how many
        object.__setattr__(config, "experts", DEFAULT_EXPERTS)
    if not 0.0 <= config.option("dropoutl") < 1.0:
        raise UserError(f"dropoutl must be in [0, 1), got {config.option('dropoutl')}")
    if config.option("mixture") not in MIXTURES:
        raise UserError(f"mixture must be one of {', '.join(MIXTURES)}, got {config.option('mixture')!r}")


def _module(config) -> MoSDecoder:
    return MoSDecoder(trunk_width(config), config.emb, config.vocab_size, n_experts(config),
                      config.option("dropoutl"), config.option("mixture"))


def _onnx(graph, exported, x: str) -> str:
    """``onnx_head`` on the export's tensors (export/onnx_graph.py's ``OnnxGraph``)."""
    cfg = exported.model_config

    def bias(name):
        return graph.const(name, exported.dense[name].float().numpy().astype(np.float32))

    dec = graph.weight_of("encoder.weight" if cfg.tie_weights else PREFIX + "weight")
    return onnx_head(graph, x, graph.weight_of(PREFIX + "latent.weight"), bias(PREFIX + "latent.bias"),
                     graph.weight_of(PREFIX + "prior.weight"), dec, bias(PREFIX + "bias"), n_experts(cfg),
                     cfg.emb, cfg.vocab_size, cfg.option("mixture"))


register_decoder(Decoder(
    name="mos", title="mixture of softmaxes", module=_module, parameter_shapes=_shapes,
    sparse_names=lambda config: sparse_names(config.tie_weights), sparse_head=SparseMoSHead, onnx_head=_onnx,
    options=(DROPOUTL, MIXTURE), validate=_validate,
))

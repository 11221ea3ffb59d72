"""Plain PyTorch versions of every kernel: the reference the compiled kernels are tested against, the
fallback when they are missing, and the path on CUDA (sparse CSR products run on cuSPARSE there).

Activations are feature-major: ``X`` is (features, N) with column ``n = t * B + b`` (see ops.py).
"""

from __future__ import annotations

import torch

from ..cells import STEPS
from .matrix import Matrix

DECODER_BLOCK_BYTES = 64 << 20  # a block of columns' logits (columns x V fp32): bounds the temporaries


def spmm(w: Matrix, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``W X + bias[:, None]``: (rows, N)."""
    weight = w.torch_weight
    if weight.layout != torch.sparse_csr:  # the bias in the GEMM: no second pass over the output
        return weight @ x if bias is None else torch.addmm(bias[:, None], weight, x)
    y = torch.sparse.mm(weight, x)
    return y if bias is None else y + bias[:, None]


def embed(w: Matrix, ids: torch.Tensor) -> torch.Tensor:
    """Rows ``ids`` of the (V, E) weight as columns: (E, N), without densifying the rest."""
    if not w.is_sparse:
        return w.dense[ids].t().contiguous()
    crow, col, val = w.crow.to(ids.device).long(), w.col.to(ids.device).long(), w.values.to(ids.device).float()
    start, counts = crow[ids], crow[ids + 1] - crow[ids]
    out = torch.zeros(w.cols, ids.numel(), dtype=torch.float32, device=ids.device)
    total = int(counts.sum())
    if total:
        which = torch.repeat_interleave(torch.arange(ids.numel(), device=ids.device), counts)
        pos = torch.arange(total, device=ids.device) - (torch.cumsum(counts, 0) - counts)[which] + start[which]
        out[col[pos], which] = val[pos]
    return out


def recurrent(cell: str, w_hh: Matrix, b_hh: torch.Tensor | None, g: torch.Tensor, T: int, B: int,
              h: torch.Tensor, c: torch.Tensor | None, g_rows: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """T steps of ``cell`` over B columns: ``g`` (G*H, T*B) input projections (with b_hh folded in except for
    GRU, whose ``b_hh`` is passed; ``g_rows``: given as (T*B, G*H)), ``h``/``c`` (H, B). Returns outputs
    (H, T*B), h and c."""
    if g_rows:
        g = g.t().contiguous()  # PyTorch's element-wise ops round differently on strided views
    step = STEPS[cell]
    weight = w_hh.torch_weight
    h_b, c_b = h.t(), (c.t() if c is not None else None)  # (B, H) for the cell equations
    outs = []
    for t in range(T):
        gh = (torch.sparse.mm(weight, h_b.t()) if weight.layout == torch.sparse_csr else weight @ h_b.t()).t()
        if b_hh is not None:
            gh = gh + b_hh
        gi = g[:, t * B:(t + 1) * B].t()
        if cell == "lstm":
            h_b, (_, c_b) = step(gi, gh, (h_b, c_b))
        else:
            h_b, _ = step(gi, gh, h_b)
        outs.append(h_b.t())
    out = torch.cat(outs, dim=1) if outs else h.new_zeros(h.shape[0], 0)
    return out, h_b.t().contiguous(), (c_b.t().contiguous() if c is not None else None)


def rhn_recurrent(rs: list[Matrix], biases: list[torch.Tensor | None], g: torch.Tensor, T: int, B: int,
                  s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """T steps of a coupled recurrent highway layer (families/rhn.py) over B columns: ``rs`` its L matrices
    R_l (2H, H), rows [h | t]; ``biases[l]`` (2H,) for l >= 1 (``biases[0]`` is not read: b_R0 is in ``g``);
    ``g`` (2H, T*B) = W x + b_W + b_R0; ``s`` (H, B). Returns outputs (H, T*B) and the last s."""
    H = rs[0].cols
    out = torch.empty(H, T * B, device=g.device)
    for t in range(T):
        for l, r in enumerate(rs):
            a = spmm(r, s, None if l == 0 else biases[l])  # (2H, B)
            if l == 0:
                a = g[:, t * B:(t + 1) * B] + a
            h, tg = torch.tanh(a[:H]), torch.sigmoid(a[H:])
            s = (h * tg + s * (1 - tg)).contiguous()
        out[:, t * B:(t + 1) * B] = s
    return out, s


def onlstm_recurrent(w_hh: Matrix, scale: float, g: torch.Tensor, T: int, B: int, h: torch.Tensor, c: torch.Tensor,
                     chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """T steps of an ON-LSTM layer (families/on_lstm.py) over B columns: ``g`` (G, T*B) = W_ih x + b_ih + b_hh,
    the gates ``g + scale * W_hh h`` (``scale``: the eval DropConnect weight 1 - wdrop), then the cell of
    ``onlstm_cell`` with chunks of ``chunk`` units; ``h``, ``c`` (H, B). Returns outputs (H, T*B), h and c."""
    from ..families.on_lstm import onlstm_cell

    outs = []
    for t in range(T):
        gates = torch.add(g[:, t * B:(t + 1) * B], spmm(w_hh, h), alpha=scale)
        h_b, c_b = onlstm_cell(gates.t().contiguous(), c.t().contiguous(), chunk)
        h, c = h_b.t().contiguous(), c_b.t().contiguous()
        outs.append(h)
    out = torch.cat(outs, dim=1) if outs else h.new_zeros(h.shape[0], 0)
    return out, h, c


def decoder(w: Matrix, bias: torch.Tensor | None, x: torch.Tensor, targets: torch.Tensor | None = None,
            full: bool = False, top1: bool = False, logsumexp=None) -> dict[str, torch.Tensor]:
    """Log-softmax of ``W X + bias`` per column; returns what was asked among ``target_lp`` (N,),
    ``argmax`` and ``max_lp`` (N,), ``logprobs`` (N, V).

    Columns go in equal blocks of at most ``DECODER_BLOCK_BYTES`` of logits, each block's (columns, V)
    contiguous so that the log-sum-exp runs along memory; the outputs are the logits less it.
    (Smaller blocks, to stay in cache, made the GEMM slower than they saved: 262 against 214 ms at 256
    columns for the reference model's 2,048.) ``logsumexp``: a function of (columns, V) logits, for the
    compiled kernels' faster one; default ``torch.logsumexp`` along V."""
    N, V = x.shape[1], w.rows
    weight = w.torch_weight
    parts: dict[str, list[torch.Tensor]] = {}
    blocks = max(1, -(-N * V * 4 // DECODER_BLOCK_BYTES))
    cols = max(1, -(-N // blocks))
    for n0 in range(0, max(N, 1), cols):  # once when N == 0: empty outputs of the right shapes
        xb = x[:, n0:n0 + cols]
        if weight.layout != torch.sparse_csr:
            logits = torch.addmm(bias, xb.t(), weight.t()) if bias is not None else xb.t() @ weight.t()
        else:
            logits = spmm(w, xb, bias).t().contiguous()
        tg = targets[n0:n0 + cols] if targets is not None else None
        lse = logsumexp(logits) if logsumexp is not None else torch.logsumexp(logits, dim=-1)
        got = decoder_outputs(logits, tg, full, top1, lse=lse)
        for k, v in got.items():
            parts.setdefault(k, []).append(v)
    return {k: v[0] if len(v) == 1 else torch.cat(v) for k, v in parts.items()}


def decoder_outputs(logp: torch.Tensor, targets: torch.Tensor | None, full: bool, top1: bool,
                    lse: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """What a decoder call asked for, from all log-probabilities ``logp`` (N, V), or from logits and their
    log-sum-exp ``lse`` (N,): then each output is less ``lse`` (only what is asked is subtracted)."""
    out = {}
    if targets is not None:
        out["target_lp"] = logp.gather(1, targets.view(-1, 1)).view(-1)
    if top1:
        out["max_lp"], out["argmax"] = logp.max(dim=1)
    if full:
        out["logprobs"] = logp
    if lse is not None:
        for k in ("target_lp", "max_lp"):
            if k in out:
                out[k] = out[k] - lse
        if full:
            out["logprobs"] = logp - lse[:, None]
    return out

"""Sparse kernels of the runtime: compiled CPU kernels (csrc/cpu/) with the PyTorch reference as fallback.

Six ops, one signature each (reference.py documents the layouts): ``spmm`` (W X + b), ``embed`` (rows as
columns), ``recurrent`` (T steps of a fused cell), ``rhn_recurrent`` (T steps of a recurrent highway layer's L
micro-steps), ``onlstm_recurrent`` (T steps of an ON-LSTM layer), ``decoder`` (W X + b, then log-softmax:
target log-probabilities, top-1, or all of them); and, compiled only, ``StackStep``, ``RhnStep`` and
``OnlstmStep``: a whole batch-1 generation step in one call (the same numbers as the ops, fewer threads'
wake-ups and Python calls). ``kernels_for(device)`` picks the implementation; ``report()`` (or
``python -m selfish_deploy.kernels``) says what was built and which CPU features the kernels use.
"""

from __future__ import annotations

import torch

from . import reference
from .loader import load
from .matrix import Matrix

__all__ = ["Matrix", "Reference", "kernels_for", "compiled_available", "report"]


class Reference:
    """The PyTorch reference ops (any device): the fallback and the correctness baseline."""

    name = "reference"
    threads = None
    spmm = staticmethod(reference.spmm)
    embed = staticmethod(reference.embed)
    recurrent = staticmethod(reference.recurrent)
    rhn_recurrent = staticmethod(reference.rhn_recurrent)
    onlstm_recurrent = staticmethod(reference.onlstm_recurrent)
    decoder = staticmethod(reference.decoder)


def compiled_available() -> bool:
    return load()[0] is not None


def kernels_for(device: str | torch.device = "cpu", threads: int | None = None):
    """Compiled kernels on the CPU when built (a new object per engine: it holds the thread count), else the
    reference."""
    lib, _ = load()
    if torch.device(device).type != "cpu" or lib is None:
        return Reference()
    from .compiled import CompiledKernels

    k = CompiledKernels(lib)
    k.threads = threads or torch.get_num_threads()
    return k


def report() -> dict:
    """What is available: the library, its build, the instruction set chosen, the CPU's features."""
    lib, how = load()
    ops = ["spmm", "embed", "recurrent", "rhn_recurrent", "onlstm_recurrent", "decoder", "stack_step", "rhn_step",
           "onlstm_step"]
    info = {"compiled_cpu": lib is not None, "status": how, "ops": ops,
            "reference": "PyTorch (torch.sparse CSR; cuSPARSE on CUDA)", "cuda": torch.cuda.is_available()}
    if lib is not None:
        from .compiled import CompiledKernels, has_avx512

        k = CompiledKernels(lib)
        info.update(isa=k.isa, build=k.build, cpu_features=k.cpu_features(), max_threads=lib.sd_max_threads(),
                    avx512_block_permute=has_avx512())
    return info

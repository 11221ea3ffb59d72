"""The inference engine: ``SparseLM`` on a backend (sparse kernels, dense PyTorch or ONNX Runtime), batched
scoring, continuous-batching generation and batched sampling.

    engine.py      SparseLM: load, forward, score_ids / score_texts / score, generate / generate_batch / stream
    backends.py    sparse | dense | onnx, one forward and one scoring path each
    generation.py  BatchGenerator: sequences join and leave between steps
    sampling.py    SamplingParams and the batched sampler
    state.py       State: per-layer tensors that select and concatenate rows
"""

from .backends import BACKENDS
from .engine import Score, SparseLM, TokenScores
from .generation import BatchGenerator, Completion, TokenEvent, detokenize
from .sampling import SamplingParams, sample
from .state import State

__all__ = ["BACKENDS", "BatchGenerator", "Completion", "SamplingParams", "Score", "SparseLM", "State", "TokenEvent",
           "TokenScores", "detokenize", "sample"]

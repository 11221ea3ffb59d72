"""The model-family registry: every recurrent trunk (``--arch``) and every decoder (``--decoder``) in one place.

A ``Family`` declares what the rest of the package needs to know about a trunk (the recurrent layers between
the embedding and the decoder): its module, parameter names and shapes, which tensors are sparse, the row
blocks (gates) stacked in each tensor, the per-layer state, its sparse-runtime step and its ONNX builder. A
``Decoder`` does the same for the head after the trunk (``softmax``, and the mixture of softmaxes). Nothing
outside this package asks "which arch is this?": masks, exports, cards, plots, ONNX and the runtime read the
entry (issue 15, section 2).

    from selfish_deploy.families import FAMILIES, get_family, get_decoder
    family = get_family(config.arch)          # a UserError naming the choices if unknown
    family.parameter_shapes(config)           # {"rnns.0.weight_ih_l0": (4H, E), ...}: the trunk's, full names

Register a family by adding a module to ``MODULES`` below that calls ``register(Family(...))`` at import
(see ``stacked.py``); a decoder likewise with ``register_decoder(Decoder(...))`` (see ``decoders.py``).
/work/notes/registry-ready.md documents the interface with an example.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..errors import UserError

if TYPE_CHECKING:  # only for annotations: model.py imports this package
    import torch
    import torch.nn as nn

    from ..model import ModelConfig

# Modules that register families and decoders, imported in this order when this package is (at its end).
MODULES = ("stacked", "decoders", "awd_lstm", "on_lstm", "rhn", "mos")

ALL = ("all",)  # the one block of a tensor that stacks nothing


@dataclass(frozen=True)
class Option:
    """A family's (or decoder's) own knob: ``ModelConfig.options[name]``, flag ``--name-in-kebab-case``, recipe
    key ``name``. The type is the default's (int, float, bool or str); a family's default applies when unset."""

    name: str
    default: Any
    help: str

    @property
    def type(self) -> type:
        return type(self.default)


def _no_check(config: "ModelConfig") -> None:
    return None


@dataclass(frozen=True)
class Family:
    """A recurrent trunk: everything the package needs to build, mask, export, run and document it.

    Required: ``name`` (the ``--arch`` value), ``title`` (for cards), ``trunk(config) -> nn.Module``
    registered on the model as ``module_name`` (forward ``(x (T, B, E), state) -> (out (T, B, out_size),
    state)``; dropouts in training mode only), ``parameter_shapes(config) -> {full name: shape}`` of the
    trunk's parameters (names as ``model.named_parameters()`` gives them, so starting ``module_name + "."``),
    ``state_layout(config) -> [((part, width), ...) per layer]`` (e.g. ``(("h", H), ("c", H))``: a layer's
    state is a tuple of (B, width) tensors in that order, a single tensor when it has one part).
    """

    name: str
    title: str
    trunk: Callable[["ModelConfig"], "nn.Module"]
    parameter_shapes: Callable[["ModelConfig"], dict[str, tuple[int, ...]]]
    state_layout: Callable[["ModelConfig"], list[tuple[tuple[str, int], ...]]]
    # Row blocks stacked in every 2-D trunk tensor, in row order (PyTorch's [i|f|g|o] for LSTM); ALL when
    # nothing is stacked. ``gate_blocks`` overrides this per tensor (a family whose tensors differ).
    gates: tuple[str, ...] = ALL
    gate_blocks: Callable[[str, "ModelConfig"], tuple[str, ...]] | None = None
    # Rows of each block of ``blocks(name, config)`` when they differ (ON-LSTM: its master gates have one row
    # per chunk); None: the rows split evenly among the blocks.
    gate_rows: Callable[[str, "ModelConfig"], tuple[int, ...]] | None = None
    gate_labels: dict[str, str] = field(default_factory=dict)  # block -> words for cards ("f": "forget gate f")
    # Tensors that are masked (sparse): None = every 2-D trunk tensor (the authors' choice: every weight matrix).
    sparse_names: Callable[["ModelConfig"], list[str]] | None = None
    out_size: Callable[["ModelConfig"], int] | None = None  # trunk output width; None: config.out_size
    module_name: str = "rnns"  # attribute of the trunk on the model: parameter names start with it
    # Sparse runtime: ``sparse_trunk(exported, matrix, vector, kernels)`` -> callable
    # ``(tokens (T, B) int64, State) -> (x (out_size, T*B) fp32 feature-major, State)``; a class, or a function
    # that imports its module lazily. None: the family has no sparse runtime yet.
    sparse_trunk: Callable[..., Callable] | None = None
    # ONNX: ``onnx_trunk(graph, exported, x, states_in, states_out) -> name of (T, B, out_size)``, see
    # export/onnx_graph.py. ``onnx_one_step``: the builder handles one time step only (T = 1, a cell with no
    # ONNX operator); the graph then takes ``tokens [batch, 1]`` and ``OnnxLM`` loops over the sequence.
    onnx_trunk: Callable[..., str] | None = None
    onnx_one_step: bool = False
    options: tuple[Option, ...] = ()
    validate: Callable[["ModelConfig"], None] = _no_check  # raise UserError for configs it cannot build
    death_rate: float = 0.5  # selfish's initial death rate when --death-rate is unset (paper: 0.8 for LSTM)
    layout_text: str = ""  # one sentence for the card: how the trunk's tensors are laid out
    tags: tuple[str, ...] = ()  # Hub tags of the card; () = the name, kebab-case ("awd-lstm")

    def blocks(self, name: str, config: "ModelConfig") -> tuple[str, ...]:
        """Row-block names stacked in the trunk tensor ``name`` (``ALL`` for biases and unstacked ones)."""
        if self.gate_blocks is not None:
            return self.gate_blocks(name, config)
        shape = self.parameter_shapes(config).get(name)
        return self.gates if shape is not None and len(shape) == 2 else ALL

    def sparse(self, config: "ModelConfig") -> list[str]:
        if self.sparse_names is not None:
            return list(self.sparse_names(config))
        return [n for n, s in self.parameter_shapes(config).items() if len(s) == 2]

    def output_size(self, config: "ModelConfig") -> int:
        return self.out_size(config) if self.out_size is not None else config.out_size

    def init_state(self, config: "ModelConfig", batch_size: int, device="cpu") -> list:
        """Zero state: per layer a (B, width) tensor, or a tuple of them (``state_layout``'s parts)."""
        import torch

        state = []
        for parts in self.state_layout(config):
            zeros = tuple(torch.zeros(batch_size, w, device=device) for _, w in parts)
            state.append(zeros if len(zeros) > 1 else zeros[0])
        return state


def _tie_weight(module: "nn.Module", weight: "nn.Parameter") -> None:
    module.weight = weight


@dataclass(frozen=True)
class Decoder:
    """The head after the trunk: (T, B, out_size) -> log-probabilities (T, B, V).

    ``module(config)`` is registered on the model as ``decoder`` (so parameter names start ``decoder.``);
    ``tie(module, embedding_weight)`` shares the embedding matrix when ``config.tie_weights`` (default: it
    becomes ``module.weight``, which then appears once, as ``encoder.weight``); a module may define
    ``init_weights(tied: bool)``, called after the embedding's initialisation. ``parameter_shapes(config)`` has
    full names without the tied weight. ``sparse_head(exported, matrix, vector, kernels)`` -> callable
    ``(x (out, N), targets=None, full=False, top1=False) -> dict`` as ``kernels.decoder`` (``target_lp``,
    ``argmax``/``max_lp``, ``logprobs`` (N, V)); ``onnx_head(graph, exported, x) -> name`` turns ``x``
    (N, out) into log-probabilities (N, V) (export/onnx_graph.py).
    """

    name: str
    title: str
    module: Callable[["ModelConfig"], "nn.Module"]
    parameter_shapes: Callable[["ModelConfig"], dict[str, tuple[int, ...]]]
    sparse_names: Callable[["ModelConfig"], list[str]] | None = None  # None: every 2-D tensor
    sparse_head: Callable[..., Callable] | None = None
    onnx_head: Callable[..., str] | None = None
    tie: Callable[["nn.Module", "nn.Parameter"], None] = _tie_weight
    options: tuple[Option, ...] = ()
    validate: Callable[["ModelConfig"], None] = _no_check

    def sparse(self, config: "ModelConfig") -> list[str]:
        if self.sparse_names is not None:
            return list(self.sparse_names(config))
        return [n for n, s in self.parameter_shapes(config).items() if len(s) == 2]


FAMILIES: dict[str, Family] = {}
DECODERS: dict[str, Decoder] = {}


def _check_options(new: tuple[Option, ...], where: str) -> None:
    """One option name means one thing everywhere: same type in every family and decoder that declares it."""
    for opt in new:
        for other in all_options():
            if other.name == opt.name and other.type is not opt.type:
                raise ValueError(f"{where}: option {opt.name!r} is {opt.type.__name__}, elsewhere {other.type.__name__}")


def register(family: Family) -> Family:
    if family.name in FAMILIES:
        raise ValueError(f"family {family.name!r} is registered twice")
    _check_options(family.options, f"family {family.name}")
    FAMILIES[family.name] = family
    return family


def register_decoder(decoder: Decoder) -> Decoder:
    if decoder.name in DECODERS:
        raise ValueError(f"decoder {decoder.name!r} is registered twice")
    _check_options(decoder.options, f"decoder {decoder.name}")
    DECODERS[decoder.name] = decoder
    return decoder


def family_names() -> tuple[str, ...]:
    """The ``--arch`` choices, in registration order."""
    return tuple(FAMILIES)


def decoder_names() -> tuple[str, ...]:
    """The ``--decoder`` choices."""
    return tuple(DECODERS)


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise UserError(f"unknown arch {name!r}; choose from {', '.join(FAMILIES)}")
    return FAMILIES[name]


def get_decoder(name: str) -> Decoder:
    if name not in DECODERS:
        raise UserError(f"unknown decoder {name!r}; choose from {', '.join(DECODERS)}")
    return DECODERS[name]


def all_options() -> list[Option]:
    """Every option any family or decoder declares, each name once (its first declaration: the flags' type)."""
    seen: dict[str, Option] = {}
    for entry in [*FAMILIES.values(), *DECODERS.values()]:
        for opt in entry.options:
            seen.setdefault(opt.name, opt)
    return list(seen.values())


# --- whole-model helpers: embedding + trunk + decoder ------------------------------------------------------

EMBEDDING = "encoder.weight"


def parameter_shapes(config: "ModelConfig") -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter of ``build_model(config)``, in ``named_parameters`` order."""
    shapes = {EMBEDDING: (config.vocab_size, config.emb)}
    shapes.update(get_family(config.arch).parameter_shapes(config))
    shapes.update(get_decoder(config.decoder).parameter_shapes(config))
    return shapes


def sparse_names(config: "ModelConfig") -> list[str]:
    """The masked tensors, as the authors': the embedding, every trunk weight matrix, the decoder's."""
    return [EMBEDDING, *get_family(config.arch).sparse(config), *get_decoder(config.decoder).sparse(config)]


def gate_blocks(name: str, config: "ModelConfig") -> tuple[str, ...]:
    """Row-block names stacked in tensor ``name`` of the model (``ALL`` outside the trunk)."""
    family = get_family(config.arch)
    if name.startswith(family.module_name + "."):
        return family.blocks(name, config)
    return ALL


def gate_rows(name: str, config: "ModelConfig") -> tuple[int, ...] | None:
    """Rows of each block of ``gate_blocks(name, config)`` when the family's blocks are unequal, else None."""
    family = get_family(config.arch)
    if family.gate_rows is None or not name.startswith(family.module_name + "."):
        return None
    return family.gate_rows(name, config)


def block_densities(mask: "torch.Tensor", blocks: tuple[str, ...],
                    rows: tuple[int, ...] | None = None) -> list[float]:
    """Density of each row block of a 2-D mask, in order: ``rows`` rows each, or rows split evenly."""
    if rows is not None:
        return [float(b.float().mean()) for b in mask.split(list(rows), dim=0)]
    if mask.shape[0] % len(blocks):
        raise ValueError(f"{mask.shape[0]} rows do not split into {len(blocks)} blocks")
    return [float(b.float().mean()) for b in mask.chunk(len(blocks), dim=0)]


for _module in MODULES:  # last: the entries' modules import the names above
    importlib.import_module(f"{__name__}.{_module}")

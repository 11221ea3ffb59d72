"""The language model: embedding -> the family's trunk -> the decoder, which returns log-probabilities.

What the trunk and the decoder are comes from the registry (``selfish_deploy.families``): ``--arch`` picks
a ``Family`` (``lstm``, ``gru``, ...), ``--decoder`` a ``Decoder`` (``softmax``, ...). Parameter names are
``encoder.weight``, the trunk's (``rnns.{k}.weight_ih_l0``, ... for the stacked cells: see
``families/stacked.py``) and the decoder's (``decoder.weight``, absent from ``named_parameters`` when tied,
``decoder.bias``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from .errors import UserError
from .families import get_decoder, get_family


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "lstm"  # the trunk's family: selfish_deploy.families.FAMILIES
    vocab_size: int = 10000
    emb: int = 200  # embedding width; the last layer's width too when tied
    hidden: int = 200
    layers: int = 2
    dropout: float = 0.5  # the family's main dropout (stacked: embeddings, between layers, before the decoder)
    tie_weights: bool = True  # decoder shares the embedding matrix (and its mask)
    decoder: str = "softmax"  # the head: selfish_deploy.families.DECODERS
    experts: int = 0  # mixture-of-softmaxes experts (0 for the softmax decoder)
    # The family's and the decoder's own knobs (``families.Option``), resolved: unset ones get their defaults.
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        family, decoder = get_family(self.arch), get_decoder(self.decoder)
        for k in ("vocab_size", "emb", "hidden", "layers"):
            if getattr(self, k) < 1:
                raise UserError(f"{k} must be positive, got {getattr(self, k)}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.experts < 0:
            raise UserError(f"experts must not be negative, got {self.experts}")
        if not isinstance(self.options, dict):
            raise UserError(f"options must be a mapping, got {type(self.options).__name__}")
        declared = {o.name: o for o in (*family.options, *decoder.options)}
        unknown = set(self.options) - set(declared)
        if unknown:
            raise UserError(f"options {sorted(unknown)} are not known to --arch {self.arch} / --decoder "
                            f"{self.decoder} (theirs: {sorted(declared) or 'none'})")
        resolved = {}
        for name, opt in declared.items():
            value = self.options.get(name, opt.default)
            if opt.type is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, opt.type) or (opt.type is int and isinstance(value, bool)):
                raise UserError(f"option {name} must be {opt.type.__name__}, got {value!r}")
            resolved[name] = value
        object.__setattr__(self, "options", resolved)
        family.validate(self)
        decoder.validate(self)

    def option(self, name: str):
        """A family or decoder option's value (its default when the config did not set it)."""
        if name not in self.options:
            raise KeyError(f"{name!r} is not an option of --arch {self.arch} / --decoder {self.decoder}")
        return self.options[name]

    def layer_sizes(self) -> list[tuple[int, int]]:
        """(input, output) width of every layer."""
        sizes = []
        for k in range(self.layers):
            n_in = self.emb if k == 0 else self.hidden
            n_out = self.emb if (self.tie_weights and k == self.layers - 1) else self.hidden
            sizes.append((n_in, n_out))
        return sizes

    @property
    def out_size(self) -> int:
        return self.layer_sizes()[-1][1]

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every parameter of ``build_model(self)`` (tied: no ``decoder.weight``), without
        building it."""
        from .families import parameter_shapes

        return parameter_shapes(self)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """From ``config.json``'s ``model`` section; keys added since (``decoder``, ``experts``, ``options``)
        take their defaults, so every older file loads as it was written."""
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise UserError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)


class RNNLM(nn.Module):
    """Embedding -> trunk -> decoder; ``forward(tokens (T, B), state) -> (log-probabilities (T, B, V), state)``.

    The trunk is registered under its family's ``module_name`` (``rnns`` for the stacked cells), the decoder as
    ``decoder``. A trunk may define ``embed(encoder, tokens)`` (training-time embedding dropout); otherwise the
    embedding is looked up plainly and the trunk applies its own input dropout.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.family, self.head = get_family(config.arch), get_decoder(config.decoder)
        self.encoder = nn.Embedding(config.vocab_size, config.emb)
        self.add_module(self.family.module_name, self.family.trunk(config))
        self.decoder = self.head.module(config)
        if config.tie_weights:
            self.head.tie(self.decoder, self.encoder.weight)
        self.init_weights()

    @property
    def trunk(self) -> nn.Module:
        return getattr(self, self.family.module_name)

    def init_weights(self) -> None:
        # word_language_model's init for embedding and decoder; the family's own for the trunk.
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        init = getattr(self.decoder, "init_weights", None)
        if init is not None:
            init(self.config.tie_weights)

    def init_hidden(self, batch_size: int) -> list:
        """Zero state per layer (the family's ``state_layout``): (B, width) tensors, a tuple per layer for
        cells with several (``(h, c)`` for LSTM), on the model's device."""
        return self.family.init_state(self.config, batch_size, self.encoder.weight.device)

    def forward(self, tokens: torch.Tensor, state: list) -> tuple[torch.Tensor, list]:
        trunk = self.trunk
        embed = getattr(trunk, "embed", None)
        x = embed(self.encoder, tokens) if embed is not None else self.encoder(tokens)  # (T, B, E)
        x, new_state = trunk(x, state)  # (T, B, out_size)
        return self.decoder(x), new_state


def build_model(config: ModelConfig) -> RNNLM:
    """The model of ``config``: embedding + its family's trunk + its decoder, initialised."""
    return RNNLM(config)


def repackage(state):
    """Detach the state from the graph of the previous BPTT window."""
    if isinstance(state, torch.Tensor):
        return state.detach()
    return type(state)(repackage(s) for s in state)

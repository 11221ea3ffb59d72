"""Training configuration: defaults, then a TOML recipe, then command-line flags (kebab-case = key).

Where the authors' code (Shiweiliuiiiiiii/Selfish-RNN) and ours differ, the default is theirs and our
variant is a key/flag (issue 15): ``clip_masked_grad``, ``update_every``, ``regrow_exclude_dead``,
``momentum``, ``eval_batch_size``/``test_batch_size``.
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from selfish_deploy.errors import UserError
from selfish_deploy.families import all_options, get_decoder, get_family
from selfish_deploy.model import ModelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    # data
    corpus: str = "ptb"  # ptb | wikitext-2 | ptb-tiny (sub-directory name, or Hub corpus)
    data_dir: str | None = None  # None: $SELFISH_DATA_DIR, else the Hugging Face Hub
    # model
    arch: str = "lstm"  # the trunk's family (selfish_deploy.families)
    layers: int = 2
    hidden: int = 200
    emb: int = 200
    dropout: float = 0.5
    tie_weights: bool = True
    decoder: str = "softmax"  # softmax | mos (mixture of softmaxes)
    experts: int = 0  # mos: number of softmaxes mixed (0 for softmax)
    # The family's and decoder's own knobs (families.Option), by name; a recipe or the command line sets them
    # as top-level keys / flags (``--chunk-size 10``), unset ones take the family's default.
    options: dict = field(default_factory=dict)
    # sparsity
    method: str = "static"  # see training.methods.METHODS
    density: float = 0.33  # fraction of non-zeros over all weight matrices (1.0 for --method dense)
    distribution: str = "uniform"  # uniform | erk: how density is spread over tensors at init
    death_rate: float | None = None  # fraction of nnz a topology update removes; None: the method's own default
    death_rate_final: float = 0.005  # floor of the cosine-annealed death rate (Selfish-RNN, SNFS)
    # Steps between topology updates inside the epoch. 0: once per epoch, after validation, the checkpoint
    # choice and the NT-ASGD trigger (main.py: mask.at_end_of_epoch); None: the method's default
    # (0 for selfish/set/snfs/dsr, 100 for rigl and gmp).
    update_every: int | None = None
    regrow_exclude_dead: bool = False  # selfish: never regrow a weight that died in the same update (ours
    # before issue 15); default: growth draws among all zeros after death, as sparse_rnn_core.random_growth
    stop_fraction: float = 0.75  # rigl: no topology updates past this fraction of the steps (Evci et al.)
    gmp_start: float = 0.1  # gmp: pruning starts at this fraction of the steps (Zhu & Gupta's t0)
    gmp_end: float = 0.75  # gmp: the final density is reached at this fraction of the steps
    # optimisation
    optimizer: str = "snt-asgd"  # snt-asgd | sgd: Selfish-RNN's sparse NT-ASGD or annealed SGD
    lr: float = 20.0
    nonmono: int = 5  # snt-asgd: average once validation is worse than the best before the last 5 epochs
    asgd_after: int | None = None  # snt-asgd: switch after this epoch at the latest (0: average from the start)
    # snt-asgd: when averaging already, start the averages again after these epochs (main_ONLSTM.py's
    # --finetuning 500 and --finetuning2 1000); none by default, as the authors' main.py
    asgd_restarts: list[int] = field(default_factory=list)
    anneal: float = 4.0  # sgd: divide lr by this when validation does not improve (word_language_model)
    clip: float = 0.25
    clip_masked_grad: bool = False  # clip the masked gradient (ours before issue 15); default: the dense one,
    # as main.py train() does (backward, clip_grad_norm_ over every gradient, then mask.step())
    momentum: float = 0.0  # SGD momentum for every method: main.py builds torch.optim.SGD without any
    # (its --momentum is never read) and Sparse_ASGD has none; 0.9 is what snfs was forced to before issue 15
    weight_decay: float = 0.0
    epochs: int = 40
    batch_size: int = 20
    eval_batch_size: int = 20  # validation batch size: main.py --eval_batch_size (RHN and stacked LSTM)
    test_batch_size: int | None = None  # None: eval_batch_size, as main.py (one flag for both splits)
    bptt: int = 35
    # run
    seed: int = 1111
    device: str = "cpu"
    out: str = "runs/default"
    log_interval: int = 200
    stop_after_epoch: int | None = None  # end this invocation after that epoch (resume later)
    checkpoint_minutes: float | None = 10.0  # also checkpoint inside an epoch this often (None: at its end only)
    dry_run: bool = False  # one batch per epoch and split: checks the whole path in seconds
    max_batches: int | None = None  # cap training batches per epoch (benchmarks, smoke runs); None: whole split

    def __post_init__(self):
        family, decoder = get_family(self.arch), get_decoder(self.decoder)  # UserError naming the choices
        declared = {o.name for o in (*family.options, *decoder.options)}
        stray = sorted(set(self.options) - declared)
        if stray:
            raise UserError(f"{', '.join('--' + k.replace('_', '-') for k in stray)}: not an option of "
                            f"--arch {self.arch} / --decoder {self.decoder}")
        if not 0.0 < self.density <= 1.0:
            raise UserError(f"--density must be in (0, 1], got {self.density}")
        if not (0.0 <= (self.death_rate or 0.0) < 1.0 and 0.0 <= self.death_rate_final < 1.0):
            raise UserError("--death-rate and --death-rate-final must be in [0, 1)")
        if (self.update_every or 0) < 0 or not 0.0 < self.stop_fraction <= 1.0:
            raise UserError("--update-every must not be negative and --stop-fraction must be in (0, 1]")
        if not 0.0 <= self.gmp_start < self.gmp_end <= 1.0:
            raise UserError("need 0 <= --gmp-start < --gmp-end <= 1")
        for k in ("epochs", "batch_size", "eval_batch_size", "bptt", "layers", "hidden", "emb"):
            if getattr(self, k) < 1:
                raise UserError(f"--{k.replace('_', '-')} must be at least 1, got {getattr(self, k)}")
        if self.lr <= 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        if self.test_batch_size is not None and self.test_batch_size < 1:
            raise UserError(f"--test-batch-size must be at least 1, got {self.test_batch_size}")
        if not 0.0 <= self.momentum < 1.0:
            raise UserError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.checkpoint_minutes is not None and self.checkpoint_minutes <= 0:
            raise UserError(f"--checkpoint-minutes must be positive, got {self.checkpoint_minutes}")
        if self.max_batches is not None and self.max_batches < 1:
            raise UserError(f"--max-batches must be at least 1, got {self.max_batches}")
        if self.nonmono < 0 or (self.asgd_after is not None and self.asgd_after < 0):
            raise UserError("--nonmono and --asgd-after must not be negative")
        if not isinstance(self.asgd_restarts, (list, tuple)) or any(
                not isinstance(e, int) or isinstance(e, bool) or e < 1 for e in self.asgd_restarts):
            raise UserError(f"--asgd-restarts takes a list of epochs (integers from 1), got {self.asgd_restarts!r}")
        # the family's and decoder's own checks (--experts, widths, option types) before any data is read
        ModelConfig(arch=self.arch, vocab_size=2, emb=self.emb, hidden=self.hidden, layers=self.layers,
                    dropout=self.dropout, tie_weights=self.tie_weights, decoder=self.decoder,
                    experts=self.experts, options=self.options)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """From a flat mapping: config fields, plus family/decoder options as top-level keys or in ``options``
        (a top-level key wins); a ``None`` option is unset."""
        names = {f.name for f in fields(cls)}
        option_names = {o.name for o in all_options()}
        options = dict(d.get("options") or {})
        options.update({k: v for k, v in d.items() if k in option_names and k not in names})
        options = {k: v for k, v in options.items() if v is not None}
        unknown = set(d) - names - option_names
        if unknown:
            raise UserError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return cls(**{k: v for k, v in d.items() if k in names and k != "options"}, options=options)

    def replace(self, **changes) -> "TrainConfig":
        return replace(self, **changes)


def load_recipe(path: str | Path) -> dict:
    """Read a TOML recipe: flat ``key = value`` pairs named like the config fields (or kebab-case)."""
    path = Path(path)
    if not path.is_file():
        bundled = Path(__file__).parent / "recipes" / f"{path.name.removesuffix('.toml')}.toml"
        if not bundled.is_file():
            raise UserError(f"recipe not found: {path}")
        path = bundled
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path} is not valid TOML: {e}") from None
    return {k.replace("-", "_"): v for k, v in raw.items()}


def upgrade_saved(saved: dict) -> dict:
    """A run config saved before issue 15 (no ``clip_masked_grad`` key) resumes with the training order it
    started with where a key can say so: masked-gradient clipping, no regrowth of the just-died, momentum
    0.9 for snfs. Its per-epoch topology updates ran on the epoch's last batch; resumed, they run after
    validation (``--update-every`` would need the run's batches per epoch), so that is only warned about."""
    if "clip_masked_grad" in saved:
        return saved
    log.warning("this run predates issue 15: resuming with its masked-gradient clipping%s; per-epoch topology "
                "updates now run after validation", " and momentum 0.9" if saved.get("method") == "snfs" else "")
    return {"clip_masked_grad": True, "regrow_exclude_dead": True,
            "momentum": 0.9 if saved.get("method") == "snfs" else 0.0, **saved}

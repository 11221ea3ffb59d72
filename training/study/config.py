"""Study configuration: one frozen dataclass per subcommand, defaults = the thesis's protocol (flags override)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from selfish_deploy.errors import UserError
from selfish_deploy.families.stacked import CELLS as ARCHS

from .graphs import GENERATORS, RECURRENT
from .prune import REGIMES


@dataclass(frozen=True)
class StudyConfig:
    # data (thesis ch. 4)
    strings: int = 25000  # thesis: 25,000 strings
    test_fraction: float = 0.25  # thesis: 18,750 train / 6,250 test
    min_len: int = 11  # thesis: lengths 11 to 53
    max_len: int = 53
    # model and optimisation (thesis: Adam 1e-3, clipping 5)
    cells: tuple[str, ...] = ARCHS
    lr: float = 1e-3
    clip: float = 5.0
    batch_size: int = 32
    epochs: int = 10  # training epochs of every model before it is measured
    # run
    seed: int = 0
    device: str = "cpu"
    threads: int = 0  # torch CPU threads; 0 = torch's default
    out: str = "runs/study"
    dry_run: bool = False  # one batch per epoch and evaluation: checks the whole path quickly

    def __post_init__(self):
        if self.threads < 0:
            raise UserError(f"--threads must be >= 0, got {self.threads}")
        for k in ("strings", "min_len", "max_len", "batch_size", "epochs"):
            if getattr(self, k) < 1:
                raise UserError(f"--{k.replace('_', '-')} must be at least 1, got {getattr(self, k)}")
        if not 0.0 < self.test_fraction < 1.0:
            raise UserError(f"--test-fraction must be in (0, 1), got {self.test_fraction}")
        if self.lr <= 0 or self.clip <= 0:
            raise UserError("--lr and --clip must be positive")
        bad = [c for c in self.cells if c not in ARCHS]
        if bad or not self.cells:
            raise UserError(f"unknown cell(s) {bad}; choose from {', '.join(ARCHS)}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class PruneConfig(StudyConfig):
    hidden: int = 50  # thesis: 3 recurrent layers of 50 units
    layers: int = 3
    emb: int = 50  # thesis: embedding width = first layer's width
    regimes: tuple[str, ...] = tuple(REGIMES)
    levels: tuple[int, ...] = tuple(range(10, 101, 10))  # percent of the regime's weights pruned
    retrain_epochs: int = 10  # epochs of retraining (mask frozen) after pruning
    tolerance: float = 0.02  # accuracy "holds" while within this of the unpruned model's
    out: str = "runs/study-prune"

    def __post_init__(self):
        super().__post_init__()
        for k in ("hidden", "layers", "emb"):
            if getattr(self, k) < 1:
                raise UserError(f"--{k} must be at least 1, got {getattr(self, k)}")
        if self.retrain_epochs < 0:
            raise UserError(f"--retrain-epochs must be >= 0, got {self.retrain_epochs}")
        bad = [r for r in self.regimes if r not in REGIMES]
        if bad or not self.regimes:
            raise UserError(f"unknown regime(s) {bad}; choose from {', '.join(REGIMES)}")
        if not self.levels or any(not 0 <= p <= 100 for p in self.levels):
            raise UserError(f"--levels are percentages in [0, 100], got {list(self.levels)}")


@dataclass(frozen=True)
class GraphConfig(StudyConfig):
    generators: tuple[str, ...] = GENERATORS
    graphs: int = 100  # per generator (thesis: 100 per generator and cell)
    min_nodes: int = 10  # thesis: n uniform in [10, 50]
    max_nodes: int = 50
    emb: int = 0  # embedding width; 0 = number of source nodes (thesis)
    recurrent: str = "self"  # hidden-to-hidden weights within a layer: self | dense (thesis) | none
    batch_size: int = 128  # thesis: 128 for the graph study
    epochs: int = 15  # thesis: 15
    folds: int = 5  # k of the cross-validated regression
    alpha: float = -1.0  # ridge penalty on standardised properties; -1: chosen per fold by leave-one-out
    out: str = "runs/study-graphs"

    def __post_init__(self):
        super().__post_init__()
        bad = [g for g in self.generators if g not in GENERATORS]
        if bad or not self.generators:
            raise UserError(f"unknown generator(s) {bad}; choose from {', '.join(GENERATORS)}")
        if self.graphs < 1 or not 4 <= self.min_nodes <= self.max_nodes:
            raise UserError("need --graphs >= 1 and 4 <= --min-nodes <= --max-nodes")
        if self.recurrent not in RECURRENT:
            raise UserError(f"--recurrent must be one of {', '.join(RECURRENT)}")
        if self.emb < 0 or self.folds < 2 or not (self.alpha >= 0 or self.alpha == -1):
            raise UserError("need --emb >= 0, --folds >= 2 and --alpha >= 0 (or -1: automatic)")

"""Word-level corpora in the AWD-LSTM convention: whitespace split plus one ``<eos>`` per line.

A corpus comes from a local directory (``--data-dir`` or ``SELFISH_DATA_DIR``) holding
``ptb.{train,valid,test}.txt`` or ``{train,valid,test}.txt`` (directly or in a sub-directory named
after the corpus), and otherwise from the Hugging Face Hub (parquet files, see ``HUB_SOURCES``).

Batching follows pytorch/examples ``word_language_model``::

    token stream  a b c d e f g h i j k l m n o p q r s t u v w x   (batchify, bsz=4)
    column j is a contiguous slice of the stream; rows are time steps
        ┌ a g m s ┐
        │ b h n t │   <- get_batch(i=0, bptt=2): input rows 0..1, target rows 1..2
        │ c i o u │
        │ d j p v │
        │ e k q w │
        └ f l r x ┘   shape (T, B)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UserError
from .vocab import EOS, UNK, Vocabulary

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
CORPORA = ("ptb", "wikitext-2", "ptb-tiny")

# corpus -> (repo id, revision, {split: file}, text column)
HUB_SOURCES = {
    "ptb": (
        "ptb-text-only/ptb_text_only",
        "refs/convert/parquet",
        {s: f"penn_treebank/{h}/0000.parquet" for s, h in zip(SPLITS, ("train", "validation", "test"))},
        "sentence",
    ),
    "wikitext-2": (
        "Salesforce/wikitext",
        None,
        {s: f"wikitext-2-v1/{h}-00000-of-00001.parquet" for s, h in zip(SPLITS, ("train", "validation", "test"))},
        "text",
    ),
}


@dataclass
class Corpus:
    """Three splits as 1-D int64 token-id tensors over one vocabulary built from all splits."""

    vocab: Vocabulary
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    source: str

    def split(self, name: str) -> torch.Tensor:
        return getattr(self, name)


def tokenize_lines(lines: list[str]) -> list[str]:
    """Whitespace tokens with one ``<eos>`` after every line (empty lines give a lone ``<eos>``)."""
    out: list[str] = []
    for line in lines:
        out.extend(line.split())
        out.append(EOS)
    return out


def build_corpus(split_lines: dict[str, list[str]], source: str) -> Corpus:
    """Vocabulary over all splits (as ``data.py`` does), ``<unk>`` guaranteed for serving."""
    tokens = {s: tokenize_lines(split_lines[s]) for s in SPLITS}
    vocab = Vocabulary()
    for s in SPLITS:
        for w in tokens[s]:
            vocab.add(w)
    vocab.add(UNK)
    ids = {s: torch.tensor([vocab.stoi[w] for w in tokens[s]], dtype=torch.long) for s in SPLITS}
    return Corpus(vocab, ids["train"], ids["valid"], ids["test"], source)


def find_split_files(directory: Path, corpus: str | None) -> dict[str, Path] | None:
    candidates = [directory] + ([directory / corpus] if corpus else [])
    for d in candidates:
        for pattern in ("ptb.{}.txt", "{}.txt"):
            files = {s: d / pattern.format(s) for s in SPLITS}
            if all(p.is_file() for p in files.values()):
                return files
    return None


def read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.read().split("\n")[:-1] if path.stat().st_size else []


def load_corpus(corpus: str = "ptb", data_dir: str | os.PathLike | None = None) -> Corpus:
    """Load ``corpus`` from ``data_dir`` (or ``$SELFISH_DATA_DIR``), else from the Hugging Face Hub."""
    data_dir = data_dir or os.environ.get("SELFISH_DATA_DIR")
    if data_dir:
        directory = Path(data_dir)
        files = find_split_files(directory, corpus)
        if files is None:
            raise UserError(
                f"no corpus files in {directory}: expected ptb.{{train,valid,test}}.txt or "
                f"{{train,valid,test}}.txt there or in {directory / (corpus or '')}"
            )
        log.info("loading corpus from %s", files["train"].parent)
        return build_corpus({s: read_lines(p) for s, p in files.items()}, str(files["train"].parent))
    return load_from_hub(corpus)


def load_from_hub(corpus: str) -> Corpus:
    """Fetch the parquet splits of ``corpus`` from the Hub (cached by ``huggingface_hub``)."""
    if corpus not in HUB_SOURCES:
        raise UserError(f"corpus {corpus!r} has no Hub source; pass --data-dir (Hub corpora: {sorted(HUB_SOURCES)})")
    import pyarrow as pa
    import pyarrow.parquet as pq
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    # HfHubHTTPError (repo/revision/entry not found), LocalEntryNotFoundError (unreachable, offline) and
    # OfflineModeIsEnabled are OSErrors; the HTTP library's own errors (httpx2 in 2.x) are not.
    try:
        from httpx2 import HTTPError as TransportError
    except ImportError:
        TransportError = OSError
    hint = "pass --data-dir (or set SELFISH_DATA_DIR) to a directory with the corpus text files"
    repo, revision, files, column = HUB_SOURCES[corpus]
    lines = {}
    for split, filename in files.items():
        where = f"{constants.ENDPOINT}/datasets/{repo}, file {filename}, revision {revision or 'main'}"
        try:
            path = hf_hub_download(repo, filename, repo_type="dataset", revision=revision)
            table = pq.read_table(path, columns=[column])
        except pa.ArrowException as e:
            raise UserError(f"{where} is not a parquet file with a {column!r} column ({e}); {hint}") from e
        except (OSError, EntryNotFoundError, TransportError) as e:
            detail = " ".join([line.strip() for line in str(e).splitlines() if line.strip()][:2]).rstrip(".")
            raise UserError(f"cannot fetch corpus {corpus!r} from the Hugging Face Hub ({where}): "
                            f"{type(e).__name__}: {detail}; {hint}") from e
        lines[split] = ["" if t is None else str(t) for t in table.column(column).to_pylist()]  # null = empty line
    if corpus == "wikitext-2":
        # Hub rows keep the file's trailing "\n"; the .tokens files are one row per line.
        lines = {s: [t[:-1] if t.endswith("\n") else t for t in ls] for s, ls in lines.items()}
    return build_corpus(lines, f"hf://datasets/{repo}")


def batchify(data: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Trim the stream to a multiple of ``batch_size`` and lay it out as (T, B) columns."""
    n = data.size(0) // batch_size
    if n < 2:
        raise UserError(f"split of {data.size(0)} tokens is too short for batch size {batch_size}")
    return data[: n * batch_size].view(batch_size, n).t().contiguous()


def get_batch(source: torch.Tensor, i: int, bptt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input rows ``i..i+L`` and next-token targets, L = min(bptt, rows left - 1)."""
    seq_len = min(bptt, source.size(0) - 1 - i)
    return source[i : i + seq_len], source[i + 1 : i + 1 + seq_len]

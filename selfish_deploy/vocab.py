"""Word vocabulary shared by training, export and runtime: one token per line of ``vocab.txt``."""

from __future__ import annotations

from pathlib import Path

from .errors import UserError

EOS = "<eos>"
UNK = "<unk>"


class Vocabulary:
    """Maps words to ids and back; unknown words map to ``<unk>`` (added if the corpus lacks it)."""

    def __init__(self, words: list[str] | None = None):
        self.itos: list[str] = []
        self.stoi: dict[str, int] = {}
        for w in words or []:
            self.add(w)

    def add(self, word: str) -> int:
        if word not in self.stoi:
            self.stoi[word] = len(self.itos)
            self.itos.append(word)
        return self.stoi[word]

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    @property
    def unk_id(self) -> int:
        return self.stoi[UNK]

    @property
    def eos_id(self) -> int:
        return self.stoi[EOS]

    def encode(self, text: str, add_eos: bool = False) -> list[int]:
        """Whitespace-split ``text``; each line ends in ``<eos>`` when ``add_eos`` (AWD-LSTM convention)."""
        unk = self.stoi.get(UNK)
        ids: list[int] = []
        lines = text.split("\n") if add_eos else [text]
        for line in lines:
            for w in line.split():
                i = self.stoi.get(w, unk)
                if i is None:
                    raise UserError(f"word {w!r} is not in the vocabulary, which has no {UNK} token")
                ids.append(i)
            if add_eos:
                ids.append(self.eos_id)
        return ids

    def decode(self, ids: list[int]) -> list[str]:
        return [self.itos[i] for i in ids]

    def save(self, path: str | Path) -> None:
        Path(path).write_text("\n".join(self.itos) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"vocabulary file not found: {path}")
        words = path.read_text(encoding="utf-8").split("\n")
        if words and words[-1] == "":
            words.pop()
        vocab = cls(words)
        if len(vocab) != len(words):
            raise UserError(f"vocabulary file {path} has duplicate words")
        return vocab

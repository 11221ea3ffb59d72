"""Documents of the ``ptb_lines`` tasks: one per line of ``ptb_lines.txt`` (PTB style: lower case, ``N`` for
numbers, ``<unk>``), each also split in half into ``context`` and ``continuation``."""

from pathlib import Path


def load(**metadata):
    """lm-eval's ``custom_dataset``: {split: documents} (it passes its metadata, the model arguments, here)."""
    import datasets

    text = (Path(__file__).parent / "ptb_lines.txt").read_text(encoding="utf-8")
    docs = []
    for line in filter(None, map(str.strip, text.splitlines())):
        words = line.split()
        half = len(words) // 2
        docs.append({"text": line, "context": " ".join(words[:half]), "continuation": " ".join(words[half:])})
    return {"test": datasets.Dataset.from_list(docs)}

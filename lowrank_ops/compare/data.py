"""The corpus of the comparison: bytes of text files, tokenized bytewise (vocabulary 256), split into
disjoint training and validation files, sampled as random windows from a seeded generator.

Default corpus (no download): the Python standard library's own sources and documentation, i.e. the
top-level `*.py` files of `sysconfig.get_paths()["stdlib"]` plus `pydoc_data/topics.py` (the text of the
language reference's topics), in sorted order. Every 10th file of that list (indices 9, 19, ...) is the
validation set, the rest the training set, so the split is fixed, disjoint and the same on every run of
one Python install. `--data PATH`: a text file (its last 10% of bytes is the validation set) or a folder
(its files, recursively, split like the default list)."""

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

VAL_EVERY = 10  # every VAL_EVERY-th file is a validation file
VAL_FRACTION = 0.1  # a single file: the last 10% of its bytes is the validation set
SEPARATOR = b"\n\n"


class DataError(ValueError):
    """The corpus cannot be read or is too small; the CLI prints it as one line."""


@dataclass(frozen=True)
class Corpus:
    train: torch.Tensor  # uint8 bytes
    val: torch.Tensor
    source: str
    fingerprint: str  # sha256 prefix of train + val: a resumed run must see the same data

    def describe(self) -> str:
        return f"{self.source}: {len(self.train):,} training bytes, {len(self.val):,} validation bytes"


def default_files() -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"))
    topics = stdlib / "pydoc_data" / "topics.py"
    return files + ([topics] if topics.is_file() else [])


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None


def _split_files(files: list[Path]) -> tuple[bytes, bytes]:
    train = [f for i, f in enumerate(files) if i % VAL_EVERY != VAL_EVERY - 1]
    val = [f for i, f in enumerate(files) if i % VAL_EVERY == VAL_EVERY - 1]
    return SEPARATOR.join(_read(f) for f in train), SEPARATOR.join(_read(f) for f in val)


def load(path: str | None, min_tokens: int) -> Corpus:
    """The default corpus (path None) or the file/folder at `path`; raises DataError when it is unreadable
    or either split is shorter than `min_tokens` + 1 bytes (one training window)."""
    if path is None:
        files = default_files()
        if not files:
            raise DataError(f"no Python sources under {sysconfig.get_paths()['stdlib']}; pass --data PATH")
        train, val = _split_files(files)
        source = f"Python {sysconfig.get_python_version()} standard library ({len(files)} files)"
    else:
        p = Path(path)
        if p.is_file():
            data = _read(p)
            cut = len(data) - int(len(data) * VAL_FRACTION)
            train, val = data[:cut], data[cut:]
            source = str(p)
        elif p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file())
            if len(files) < VAL_EVERY:
                raise DataError(f"--data {path}: a folder needs at least {VAL_EVERY} files, found {len(files)}")
            train, val = _split_files(files)
            source = f"{p} ({len(files)} files)"
        else:
            raise DataError(f"--data {path}: no such file or folder")
    for name, part in (("training", train), ("validation", val)):
        if len(part) < min_tokens + 1:
            raise DataError(
                f"{source}: the {name} split has {len(part)} bytes, fewer than one window of {min_tokens + 1}"
            )
    digest = hashlib.sha256(train + b"\0" + val).hexdigest()[:16]
    return Corpus(
        torch.frombuffer(bytearray(train), dtype=torch.uint8),
        torch.frombuffer(bytearray(val), dtype=torch.uint8),
        source,
        digest,
    )


class Sampler:
    """Random training windows of seq_len + 1 bytes from a seeded generator; its state (the data position)
    is saved in checkpoints, so a resumed run draws the batches an uninterrupted one would."""

    def __init__(self, data: torch.Tensor, batch: int, seq_len: int, seed: int):
        self.data, self.batch, self.seq_len = data, batch, seq_len
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> torch.Tensor:
        starts = torch.randint(len(self.data) - self.seq_len, (self.batch,), generator=self.generator)
        idx = starts[:, None] + torch.arange(self.seq_len + 1)
        return self.data[idx].long()

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def validation_batches(data: torch.Tensor, batch: int, seq_len: int, max_tokens: int) -> list[torch.Tensor]:
    """Consecutive non-overlapping windows from the start of the validation split, at most `max_tokens`
    predicted tokens in all: the same batches for every method and every evaluation."""
    windows = min((len(data) - 1) // seq_len, max(1, max_tokens // seq_len))
    idx = torch.arange(windows)[:, None] * seq_len + torch.arange(seq_len + 1)
    tokens = data[idx].long()
    return list(tokens.split(batch))

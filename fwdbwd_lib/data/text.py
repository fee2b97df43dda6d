"""IMDB movie-review sentiment (Maas et al. 2011), tokenized once and padded per batch.

The 25,000 training and 25,000 test reviews (label 0 = negative, 1 = positive) are read from
the first of these places under the data root that exists:

1. ``<root>/imdb/{train,test}-*.csv.gz``: gzip-compressed CSV parts with a ``text,label`` header;
2. ``<root>/imdb/aclImdb/{train,test}/{neg,pos}/<id>_<rating>.txt``: the official archive,
   extracted;
3. a download of the official archive ``aclImdb_v1.tar.gz`` from Stanford when
   ``download=true``. The original archive is used rather than a Hugging Face ``datasets`` copy
   because it is the authors' release, is checked against a fixed MD5, and needs no extra
   dependency.

Both layouts list reviews in the same order (negative id 0, positive id 0, negative id 1, ...),
so a seed selects the same reviews from either. The validation split is carved from the
training reviews with ``split_seed``; every split is drawn class-balanced.

Tokenizers, an explicit choice stored in every run record:

- ``bpe``: a byte-level BPE tokenizer trained with the ``tokenizers`` library on the run's
  training reviews only, cached on disk under a key of its settings and those reviews;
- any other value is loaded with ``transformers.AutoTokenizer.from_pretrained`` (``roberta-base``
  or a local folder). A tokenizer that cannot be loaded is an error, never a silent switch.

Reviews are truncated to ``max_length`` tokens, ``<s>`` and ``</s>`` included. Each batch is
padded to its longest review and comes with an attention mask (1 on tokens, 0 on padding).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from fwdbwd_lib.data import DATA_ENV_VAR, DataSplits
from fwdbwd_lib.registry import register_dataset

logger = logging.getLogger(__name__)

IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_MD5 = "7c2ac02c03563afcf9b574c7e56c153a"
IMDB_CLASSES = ("negative", "positive")
IMDB_SPLIT_SIZE = 25_000
CACHE_ENV_VAR = "FWDBWD_CACHE"
DEFAULT_CACHE = Path.home() / ".cache" / "fwdbwd"
# RoBERTa's special tokens, at the ids roberta-base uses.
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
_LINE_BREAK_TAG = re.compile(r"<br\s*/?>", flags=re.IGNORECASE)


@dataclass
class ImdbSplit:
    """The raw reviews of one split, in file order."""

    texts: list[str]
    labels: np.ndarray  # (N,) int64, 0 = negative, 1 = positive
    source_files: list[str]


# ---------------------------------------------------------------------------------------------
# Reading the reviews
# ---------------------------------------------------------------------------------------------

def _missing_message(root: Path) -> str:
    return (
        f"IMDB not found under data root {root}. Expected either the CSV parts "
        f"{root}/imdb/{{train,test}}-*.csv.gz (header text,label) or the extracted official "
        f"archive {root}/imdb/aclImdb/{{train,test}}/{{neg,pos}}/<id>_<rating>.txt. Set "
        f"data_root=... or the {DATA_ENV_VAR} environment variable to the folder that contains "
        f"imdb/, or pass dataset.download=true to download {IMDB_URL}."
    )


def read_imdb_csv(folder: Path, split: str) -> ImdbSplit:
    """Read ``<folder>/<split>-*.csv.gz`` parts in name order."""
    parts = sorted(folder.glob(f"{split}-*.csv.gz"))
    texts, labels = [], []
    for part in parts:
        with gzip.open(part, "rt", encoding="utf-8", newline="") as file:
            reader = csv.reader(file)
            header = next(reader)
            if header != ["text", "label"]:
                raise ValueError(f"{part}: expected the header text,label, found {header}")
            for text, label in reader:
                texts.append(text)
                labels.append(int(label))
    names_file = folder / f"{split}_source_files.txt"
    source_files = (names_file.read_text().split() if names_file.is_file()
                    else [f"{split}:{i}" for i in range(len(texts))])
    return ImdbSplit(texts, np.asarray(labels, dtype=np.int64), source_files)


def _review_id(path: Path) -> int:
    return int(path.stem.split("_")[0])


def read_imdb_folder(folder: Path, split: str) -> ImdbSplit:
    """Read ``<folder>/<split>/{neg,pos}/<id>_<rating>.txt``, interleaved neg/pos by id."""
    by_class = [sorted((folder / split / name).glob("*.txt"), key=_review_id)
                for name in ("neg", "pos")]
    if len(by_class[0]) != len(by_class[1]):
        raise ValueError(f"{folder / split}: {len(by_class[0])} negative and "
                         f"{len(by_class[1])} positive reviews; the archive is incomplete")
    texts, labels, source_files = [], [], []
    for pair in zip(*by_class):
        for label, path in enumerate(pair):
            texts.append(path.read_text(encoding="utf-8"))
            labels.append(label)
            source_files.append(str(path.relative_to(folder.parent)))
    return ImdbSplit(texts, np.asarray(labels, dtype=np.int64), source_files)


def read_imdb(root: Path, download: bool = False) -> tuple[dict[str, ImdbSplit], str]:
    """Return the train and test reviews and a description of the copy that was read."""
    folder = root / "imdb"
    if sorted(folder.glob("train-*.csv.gz")) and sorted(folder.glob("test-*.csv.gz")):
        splits = {split: read_imdb_csv(folder, split) for split in ("train", "test")}
        variant = f"IMDB CSV parts at {folder}"
    else:
        if not (folder / "aclImdb" / "train").is_dir():
            if not download:
                raise FileNotFoundError(_missing_message(root))
            from torchvision.datasets.utils import download_and_extract_archive

            download_and_extract_archive(IMDB_URL, str(folder), md5=IMDB_MD5)
        splits = {split: read_imdb_folder(folder / "aclImdb", split) for split in ("train", "test")}
        variant = f"official aclImdb archive at {folder / 'aclImdb'}"
    for split, data in splits.items():
        if len(data.texts) == 0:
            raise FileNotFoundError(_missing_message(root))
        if set(np.unique(data.labels)) - {0, 1}:
            raise ValueError(f"IMDB {split}: labels must be 0 (negative) or 1 (positive)")
    return splits, variant


def balanced_sample(labels: np.ndarray, size: int, generator: np.random.Generator) -> np.ndarray:
    """Draw ``size`` indices, as evenly split between the classes as possible, in sorted order."""
    classes = np.unique(labels)
    per_class = [size // len(classes) + (i < size % len(classes)) for i in range(len(classes))]
    chosen = []
    for label, count in zip(classes, per_class):
        members = np.flatnonzero(labels == label)
        if count > len(members):
            raise ValueError(f"cannot draw {count} reviews of class {label}: only "
                             f"{len(members)} available")
        chosen.append(generator.permutation(members)[:count])
    return np.sort(np.concatenate(chosen))


def drop_duplicates(raw: dict[str, ImdbSplit]) -> tuple[dict[str, ImdbSplit], dict[str, int]]:
    """Keep the first copy of each text per split; drop test texts that occur in training."""
    deduplicated, dropped, seen_in_train = {}, {}, set(raw["train"].texts)
    for split in ("train", "test"):
        data, seen = raw[split], set()
        keep = []
        for index, text in enumerate(data.texts):
            if text in seen or (split == "test" and text in seen_in_train):
                continue
            seen.add(text)
            keep.append(index)
        deduplicated[split] = ImdbSplit([data.texts[i] for i in keep], data.labels[keep],
                                [data.source_files[i] for i in keep])
        dropped[split] = len(data.texts) - len(keep)
    return deduplicated, dropped


# ---------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------

class TextTokenizer:
    """A thin uniform wrapper: ``encode`` gives truncated id lists with ``<s>`` and ``</s>``."""

    def __init__(self, name: str, backend: Any, pad_token_id: int, vocab_size: int,
                 description: str):
        self.name = name
        self.backend = backend
        self.pad_token_id = pad_token_id
        self.vocab_size = vocab_size
        self.description = description

    def encode(self, texts: list[str], max_length: int) -> list[list[int]]:
        if self.name == "bpe":
            self.backend.enable_truncation(max_length)
            return [encoding.ids for encoding in self.backend.encode_batch(texts)]
        return self.backend(texts, truncation=True, max_length=max_length)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(ids, skip_special_tokens=True)


def cache_root() -> Path:
    """Return ``$FWDBWD_CACHE`` if set, else ``~/.cache/fwdbwd``."""
    return Path(os.environ.get(CACHE_ENV_VAR) or DEFAULT_CACHE).expanduser()


def train_bpe_tokenizer(texts: list[str], vocab_size: int, min_frequency: int = 2,
                        cache_dir: Path | None = None) -> TextTokenizer:
    """Train (or load from the cache) a byte-level BPE tokenizer on ``texts``.

    The cache key is a SHA-256 of the settings, the ``tokenizers`` version and every text, so a
    different training split never reuses another split's vocabulary.
    """
    import tokenizers
    from tokenizers import ByteLevelBPETokenizer, Tokenizer
    from tokenizers.processors import RobertaProcessing

    digest = hashlib.sha256(
        json.dumps([vocab_size, min_frequency, tokenizers.__version__]).encode()
    )
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    key = digest.hexdigest()[:16]
    cache_dir = Path(cache_dir) if cache_dir is not None else cache_root() / "tokenizers"
    path = cache_dir / f"imdb-bpe-{vocab_size}-{key}.json"
    if path.is_file():
        backend = Tokenizer.from_file(str(path))
        logger.info("BPE tokenizer loaded from %s", path)
    else:
        trainer = ByteLevelBPETokenizer()
        trainer.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=min_frequency,
                                    special_tokens=list(SPECIAL_TOKENS), show_progress=False)
        backend = trainer._tokenizer
        backend.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0))
        cache_dir.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".tmp{os.getpid()}")
        backend.save(str(temporary))
        os.replace(temporary, path)
        logger.info("BPE tokenizer trained on %d reviews and cached at %s", len(texts), path)
    if [backend.token_to_id(token) for token in SPECIAL_TOKENS] != list(range(len(SPECIAL_TOKENS))):
        raise ValueError(f"{path}: special tokens are not at ids 0-4; delete the file to retrain")
    return TextTokenizer("bpe", backend, pad_token_id=1, vocab_size=backend.get_vocab_size(),
                         description=f"byte-level BPE, {backend.get_vocab_size()} tokens, "
                                     f"trained on {len(texts)} training reviews (cache key {key})")


def load_pretrained_tokenizer(name: str) -> TextTokenizer:
    """Load a Hugging Face tokenizer by hub name or folder; fail with advice if unavailable."""
    from transformers import AutoTokenizer

    from fwdbwd_lib.models.text import looks_like_path

    path = Path(name).expanduser()
    if looks_like_path(name) and not path.exists():
        raise ValueError(
            f"dataset.tokenizer={name!r}: folder {path} not found; give a folder written by "
            "save_pretrained, a hub name such as roberta-base, or bpe to train a byte-level BPE "
            "tokenizer on the training reviews (dataset.tokenizer=bpe)"
        )
    try:
        backend = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"dataset.tokenizer={name!r} could not be loaded ({str(error).splitlines()[0]}). "
            "Give a folder written by save_pretrained, run where the hub name can be "
            "downloaded, or set dataset.tokenizer=bpe to train a byte-level BPE tokenizer on "
            "the training reviews"
        ) from None
    return TextTokenizer(name, backend, pad_token_id=backend.pad_token_id,
                         vocab_size=len(backend), description=f"pretrained tokenizer {name}")


# ---------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------

class TokenizedTextDataset(Dataset):
    """Token id sequences and labels; a batch is padded to its longest sequence.

    ``__getitems__`` builds a whole batch, ``({"input_ids", "attention_mask"}, labels)``, so a
    DataLoader whose ``collate_fn`` is this dataset's ``collate_fn`` indexes once per batch.
    """

    def __init__(self, token_ids: list[list[int]], labels: np.ndarray, pad_token_id: int,
                 texts: list[str] | None = None, source_files: list[str] | None = None):
        self.token_ids = [torch.tensor(ids, dtype=torch.long) for ids in token_ids]
        self.lengths = torch.tensor([len(ids) for ids in token_ids], dtype=torch.long)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.pad_token_id = pad_token_id
        self.texts = texts
        self.source_files = source_files

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        ids = self.token_ids[index]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, self.labels[index]

    def __getitems__(self, indices):
        indices = [int(i) for i in indices]
        longest = int(self.lengths[indices].max())
        input_ids = torch.full((len(indices), longest), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(indices), longest), dtype=torch.long)
        for row, index in enumerate(indices):
            ids = self.token_ids[index]
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}, self.labels[indices]

    @staticmethod
    def collate_fn(batch):
        return batch


def clean_review(text: str) -> str:
    """Replace the HTML line breaks (``<br />``) that IMDB reviews contain with spaces."""
    return _LINE_BREAK_TAG.sub(" ", text)


@register_dataset("imdb")
def load_imdb(
    root: Path,
    train_size: int | None = None,
    validation_size: int = 1000,
    test_size: int | None = None,
    split_seed: int = 0,
    tokenizer: str = "bpe",
    vocab_size: int = 8000,
    max_length: int = 256,
    strip_html: bool = True,
    deduplicate: bool = True,
    download: bool = False,
) -> DataSplits:
    """IMDB sentiment, two classes, tokenized for ``roberta`` and ``text_cnn``.

    ``validation_size`` reviews are drawn from the 25,000 training reviews with ``split_seed``;
    ``train_size`` and ``test_size`` cap the other splits (null: all that is left). Every draw
    is class-balanced. ``vocab_size`` applies to ``tokenizer=bpe`` only.

    IMDB repeats some reviews word for word: 96 training reviews repeat another training
    review, 199 test reviews repeat another test review, and 123 texts occur in both splits.
    ``deduplicate=true`` keeps the first copy of each text within a split and drops test
    reviews whose text is a training review, so no text is both trained and scored; 24,904
    training and 24,678 test reviews remain.
    """
    for name, size in (("train_size", train_size), ("test_size", test_size)):
        if size is not None and (not isinstance(size, int) or size <= 0):
            raise ValueError(f"dataset.{name} must be a positive integer or null (all), got {size!r}")
    if not isinstance(validation_size, int) or not 0 <= validation_size < IMDB_SPLIT_SIZE // 2:
        raise ValueError(f"dataset.validation_size must be an integer in [0, {IMDB_SPLIT_SIZE // 2}), "
                         f"got {validation_size!r}")
    if not isinstance(max_length, int) or max_length < 3:
        raise ValueError(f"dataset.max_length must be an integer >= 3, got {max_length!r}")
    if not isinstance(tokenizer, str) or not tokenizer:
        raise ValueError("dataset.tokenizer must be 'bpe' or a pretrained tokenizer name or "
                         f"folder such as roberta-base, got {tokenizer!r}")

    raw, variant = read_imdb(root, download)
    if deduplicate:
        raw, dropped = drop_duplicates(raw)
        variant += f"; {dropped['train']} repeated training and {dropped['test']} repeated or " \
                   "train-overlapping test reviews dropped"
    generator = np.random.default_rng(split_seed)
    train_labels = raw["train"].labels
    validation_index = (balanced_sample(train_labels, validation_size, generator)
                        if validation_size else np.array([], dtype=np.int64))
    pool = np.setdiff1d(np.arange(len(train_labels)), validation_index)
    if train_size is not None and train_size > len(pool):
        raise ValueError(f"dataset.train_size={train_size} exceeds the {len(pool)} training "
                         f"reviews left after validation_size={validation_size}")
    train_index = (pool if train_size is None
                   else pool[balanced_sample(train_labels[pool], train_size, generator)])
    test_labels = raw["test"].labels
    if test_size is not None and test_size > len(test_labels):
        raise ValueError(f"dataset.test_size={test_size} exceeds the {len(test_labels)} test reviews")
    test_index = (np.arange(len(test_labels)) if test_size is None
                  else balanced_sample(test_labels, test_size, generator))

    def texts_of(split: str, index: np.ndarray) -> list[str]:
        texts = [raw[split].texts[i] for i in index]
        return [clean_review(t) for t in texts] if strip_html else texts

    selected = {
        "train": ("train", train_index), "validation": ("train", validation_index),
        "test": ("test", test_index),
    }
    texts = {name: texts_of(split, index) for name, (split, index) in selected.items()}
    if tokenizer == "bpe":
        text_tokenizer = train_bpe_tokenizer(texts["train"], vocab_size)
    else:
        text_tokenizer = load_pretrained_tokenizer(tokenizer)

    datasets = {}
    for name, (split, index) in selected.items():
        datasets[name] = TokenizedTextDataset(
            text_tokenizer.encode(texts[name], max_length) if len(index) else [],
            raw[split].labels[index], text_tokenizer.pad_token_id, texts[name],
            [raw[split].source_files[i] for i in index],
        )
    logger.info("IMDB: %d/%d/%d reviews", *(len(datasets[n]) for n in datasets))
    longest = max((int(d.lengths.max()) for d in datasets.values() if len(d)), default=0)
    if longest < max_length:
        # Position embeddings are sized by max_length, so unused positions still cost parameters.
        logger.warning("dataset.max_length=%d but the longest review has %d tokens; positions "
                       "beyond %d are never used", max_length, longest, longest)
    splits = DataSplits(
        train=datasets["train"], validation=datasets["validation"], test=datasets["test"],
        num_classes=2,
        model_kwargs={"vocab_size": text_tokenizer.vocab_size, "max_length": max_length,
                      "pad_token_id": text_tokenizer.pad_token_id, "tokenizer": tokenizer},
        variant=(f"{variant}; validation drawn with split_seed={split_seed}; "
                 f"{text_tokenizer.description}; max_length={max_length}"
                 + ("; <br /> tags replaced by spaces" if strip_html else "")),
    )
    splits.tokenizer = text_tokenizer
    return splits


def split_summary(data: DataSplits) -> "pandas.DataFrame":
    """Reviews, positive share, token lengths and the share truncated at ``max_length``."""
    import pandas as pd

    max_length = data.model_kwargs["max_length"]
    rows = []
    for name in ("train", "validation", "test"):
        dataset = getattr(data, name)
        lengths = dataset.lengths.numpy()
        rows.append({
            "split": name,
            "reviews": len(dataset),
            "positive share": float(dataset.labels.float().mean()) if len(dataset) else float("nan"),
            "median tokens": float(np.median(lengths)) if len(lengths) else float("nan"),
            f"truncated at {max_length}": float((lengths >= max_length).mean()) if len(lengths) else float("nan"),
        })
    return pd.DataFrame(rows).set_index("split")

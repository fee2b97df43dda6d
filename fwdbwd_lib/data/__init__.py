"""Dataset loaders, registered by name in ``fwdbwd_lib.registry.datasets``.

A loader is called as ``loader(root, **kwargs)``, with the ``dataset`` config group as keyword
arguments, and returns a :class:`DataSplits`
with train, validation and test ``torch.utils.data.Dataset`` objects. The validation split is
carved from the training data with a fixed ``split_seed``, so every run gets the same split.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from fwdbwd_lib.registry import datasets

DATA_ENV_VAR = "FWDBWD_DATA"
DEFAULT_DATA_ROOT = Path.home() / ".cache" / "fwdbwd" / "data"


@dataclass
class DataSplits:
    """Train, validation and test datasets plus what a model builder needs to know."""

    train: Dataset
    validation: Dataset
    test: Dataset
    num_classes: int
    # Keyword arguments passed to model builders that accept them (in_channels, image_size, ...).
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # Which copy of the data was read, stored in the run record (e.g. original arrays vs JPEG).
    variant: str = ""


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """Return the data root: ``data_root`` if given, else ``$FWDBWD_DATA``, else a cache folder."""
    if data_root not in (None, ""):
        return Path(data_root).expanduser()
    if os.environ.get(DATA_ENV_VAR):
        return Path(os.environ[DATA_ENV_VAR]).expanduser()
    return DEFAULT_DATA_ROOT


def load_data(name: str, data_root: str | os.PathLike | None = None, **kwargs: Any) -> DataSplits:
    """Build the dataset registered as ``name`` from the resolved data root."""
    loader = datasets.get(name)
    return loader(resolve_data_root(data_root), **kwargs)


from fwdbwd_lib.data import vision  # noqa: E402,F401  (registers cifar10, mnist)
from fwdbwd_lib.data import speech  # noqa: E402,F401  (registers timit, fsdd, speech_commands)
from fwdbwd_lib.data import text  # noqa: E402,F401  (registers imdb)

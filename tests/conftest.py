import os
from pathlib import Path

import pytest
import torch

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real data copy named by $FWDBWD_DATA (CI points it at the shared data folder)."""
    root = os.environ.get("FWDBWD_DATA")
    if not root or not (Path(root) / "cifar10").is_dir():
        message = f"FWDBWD_DATA={root!r} does not contain cifar10/; set it to the data folder"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return Path(root)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield

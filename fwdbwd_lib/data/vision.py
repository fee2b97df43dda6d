"""CIFAR-10 and MNIST, decoded once and kept in memory as uint8 tensors.

CIFAR-10 is read from one of three places under the data root, in this order:

1. a class-folder copy ``<root>/cifar10/{train,test}/<class>/<image>.{png,jpg}`` (class folder
   names in sorted order give the standard label ids 0-9);
2. torchvision's ``<root>/cifar-10-batches-py`` (the original arrays);
3. a download by ``torchvision.datasets.CIFAR10`` when ``download=true``.

The run record stores which one was read, because a JPEG copy is lossy.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from fwdbwd_lib.data import DATA_ENV_VAR, DataSplits
from fwdbwd_lib.registry import register_dataset

logger = logging.getLogger(__name__)

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
# Per-channel mean and standard deviation of the CIFAR-10 training images, pixel values in [0, 1].
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class ImageTensorDataset(Dataset):
    """Images ``(N, C, H, W)`` uint8 and labels ``(N,)``, normalised batch-wise on access.

    ``__getitems__`` returns a whole batch at once, so a ``DataLoader`` with ``collate_fn`` set
    to this dataset's ``collate_fn`` does one indexing per batch instead of one per image.
    Augmentation (``augment=True``) is a random crop after 4-pixel zero padding and a random
    horizontal flip, drawn from the global torch RNG.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std, augment=False):
        self.images = images
        self.labels = labels
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        images, labels = self.__getitems__([index])
        return images[0], labels[0]

    def __getitems__(self, indices):
        index = torch.as_tensor(indices)
        images = self.images[index].float().div_(255)  # (batch, C, H, W) in [0, 1]
        if self.augment:
            images = _random_crop_and_flip(images)
        return (images - self.mean) / self.std, self.labels[index]

    @staticmethod
    def collate_fn(batch):
        return batch


def _random_crop_and_flip(images: torch.Tensor, padding: int = 4) -> torch.Tensor:
    batch, _, height, width = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    rows = torch.randint(0, 2 * padding + 1, (batch,))
    columns = torch.randint(0, 2 * padding + 1, (batch,))
    flips = torch.rand(batch) < 0.5
    cropped = torch.empty_like(images)
    for i in range(batch):
        crop = padded[i, :, rows[i] : rows[i] + height, columns[i] : columns[i] + width]
        cropped[i] = crop.flip(-1) if flips[i] else crop
    return cropped


def split_indices(
    num_train: int,
    num_test: int,
    train_size: int | None,
    validation_size: int,
    test_size: int | None,
    split_seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Carve validation from the training data with a fixed seed and take the requested sizes.

    Returns index arrays (train, validation, test). ``None`` sizes mean "all that is left".
    """
    for name, size in (("train_size", train_size), ("test_size", test_size)):
        if size is not None and size <= 0:
            raise ValueError(f"dataset.{name} must be positive or null (all), got {size}")
    if not isinstance(validation_size, int) or validation_size < 0:
        raise ValueError(f"dataset.validation_size must be >= 0, got {validation_size}")
    available = num_train - validation_size
    if available <= 0 or (train_size is not None and train_size > available):
        raise ValueError(
            f"dataset.train_size={train_size} and dataset.validation_size={validation_size} "
            f"need more than the {num_train} training examples available; lower them"
        )
    if test_size is not None and test_size > num_test:
        raise ValueError(
            f"dataset.test_size={test_size} exceeds the {num_test} test examples available"
        )
    generator = np.random.default_rng(split_seed)
    order = generator.permutation(num_train)
    validation = np.sort(order[:validation_size])
    train = np.sort(order[validation_size : validation_size + (train_size or available)])
    test = np.arange(num_test)
    if test_size is not None:
        test = np.sort(generator.permutation(num_test)[:test_size])
    return train, validation, test


# ---------------------------------------------------------------------------------------------
# Reading images
# ---------------------------------------------------------------------------------------------

def _list_class_folder(split_dir: Path, classes: tuple[str, ...]) -> tuple[list[Path], np.ndarray]:
    paths, labels = [], []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [label] * len(files)
    return paths, np.asarray(labels, dtype=np.int64)


@functools.lru_cache(maxsize=8)
def _decode_images(paths: tuple[Path, ...]) -> torch.Tensor:
    array = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8


def _cifar10_missing_message(root: Path) -> str:
    return (
        f"CIFAR-10 not found under data root {root}. Expected either the class-folder copy "
        f"{root}/cifar10/{{train,test}}/<class>/<image>.png|jpg (classes {', '.join(CIFAR10_CLASSES)})"
        f" or torchvision's {root}/cifar-10-batches-py. Set data_root=... or the {DATA_ENV_VAR} "
        f"environment variable to the folder that contains it, or pass dataset.download=true to "
        f"download the original arrays with torchvision."
    )


@register_dataset("cifar10")
def load_cifar10(
    root: Path,
    train_size: int | None = None,
    validation_size: int = 5000,
    test_size: int | None = None,
    augment: bool = False,
    split_seed: int = 0,
    download: bool = False,
) -> DataSplits:
    """CIFAR-10 (Krizhevsky 2009): 32×32 RGB images of 10 classes."""
    folder = root / "cifar10"
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        train_paths, train_labels = _list_class_folder(folder / "train", CIFAR10_CLASSES)
        test_paths, test_labels = _list_class_folder(folder / "test", CIFAR10_CLASSES)
        train_idx, val_idx, test_idx = split_indices(
            len(train_paths), len(test_paths), train_size, validation_size, test_size, split_seed
        )
        formats = sorted({p.suffix.lower().lstrip(".") for p in train_paths[:50]})
        variant = f"class-folder copy ({'/'.join(formats)})"
        if "jpg" in formats or "jpeg" in formats:
            variant += ", lossy JPEG: expect slightly lower accuracy than on the original arrays"

        def subset(paths, labels, indices):
            images = _decode_images(tuple(paths[i] for i in indices))
            return images, torch.from_numpy(labels[indices])

        train = subset(train_paths, train_labels, train_idx)
        validation = subset(train_paths, train_labels, val_idx)
        test = subset(test_paths, test_labels, test_idx)
    else:
        train, validation, test, variant = _load_torchvision_cifar10(
            root, train_size, validation_size, test_size, split_seed, download
        )

    logger.info(
        "CIFAR-10 from %s: %d train, %d validation, %d test images",
        variant, len(train[1]), len(validation[1]), len(test[1]),
    )
    return DataSplits(
        train=ImageTensorDataset(*train, CIFAR10_MEAN, CIFAR10_STD, augment=augment),
        validation=ImageTensorDataset(*validation, CIFAR10_MEAN, CIFAR10_STD),
        test=ImageTensorDataset(*test, CIFAR10_MEAN, CIFAR10_STD),
        num_classes=10,
        model_kwargs={"in_channels": 3, "image_size": 32},
        variant=variant,
    )


def _load_torchvision_cifar10(root, train_size, validation_size, test_size, split_seed, download):
    from torchvision.datasets import CIFAR10

    if not (root / "cifar-10-batches-py").is_dir() and not download:
        raise FileNotFoundError(_cifar10_missing_message(root))
    train_set = CIFAR10(str(root), train=True, download=download)
    test_set = CIFAR10(str(root), train=False, download=download)
    train_images = torch.from_numpy(train_set.data).permute(0, 3, 1, 2).contiguous()
    test_images = torch.from_numpy(test_set.data).permute(0, 3, 1, 2).contiguous()
    train_labels = torch.tensor(train_set.targets)
    test_labels = torch.tensor(test_set.targets)
    train_idx, val_idx, test_idx = split_indices(
        len(train_labels), len(test_labels), train_size, validation_size, test_size, split_seed
    )
    to_tensor = torch.from_numpy
    return (
        (train_images[to_tensor(train_idx)], train_labels[to_tensor(train_idx)]),
        (train_images[to_tensor(val_idx)], train_labels[to_tensor(val_idx)]),
        (test_images[to_tensor(test_idx)], test_labels[to_tensor(test_idx)]),
        "torchvision CIFAR10 (original arrays)",
    )


@register_dataset("mnist")
def load_mnist(
    root: Path,
    train_size: int | None = None,
    validation_size: int = 5000,
    test_size: int | None = None,
    augment: bool = False,
    split_seed: int = 0,
    download: bool = False,
) -> DataSplits:
    """MNIST (LeCun et al. 1998) through ``torchvision.datasets.MNIST`` (28×28 grey images)."""
    from torchvision.datasets import MNIST

    if augment:
        raise ValueError("dataset.augment=true is not supported for MNIST: crops and flips "
                         "change digit identity; set dataset.augment=false")
    if not (root / "MNIST" / "raw").is_dir() and not download:
        raise FileNotFoundError(
            f"MNIST not found under data root {root}: expected torchvision's layout "
            f"{root}/MNIST/raw/. Set data_root=... or {DATA_ENV_VAR}, or pass "
            f"dataset.download=true."
        )
    train_set = MNIST(str(root), train=True, download=download)
    test_set = MNIST(str(root), train=False, download=download)
    train_idx, val_idx, test_idx = split_indices(
        len(train_set), len(test_set), train_size, validation_size, test_size, split_seed
    )

    def subset(data_set, indices):
        index = torch.from_numpy(indices)
        return data_set.data[index].unsqueeze(1), data_set.targets[index]  # (N, 1, 28, 28)

    return DataSplits(
        train=ImageTensorDataset(*subset(train_set, train_idx), MNIST_MEAN, MNIST_STD),
        validation=ImageTensorDataset(*subset(train_set, val_idx), MNIST_MEAN, MNIST_STD),
        test=ImageTensorDataset(*subset(test_set, test_idx), MNIST_MEAN, MNIST_STD),
        num_classes=10,
        model_kwargs={"in_channels": 1, "image_size": 28},
        variant="torchvision MNIST (original arrays)",
    )

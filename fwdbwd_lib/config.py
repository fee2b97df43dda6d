"""Compose run configs with Hydra, and expand comma-list sweeps into one config per run.

Group files (``dataset/``, ``model/``, ``optimizer/``, ``scheduler/``) are searched in a
``configs/`` folder beside the user's config first, then in the package's ``fwdbwd_lib/configs``.
The primary config's own folder is searched too, as Hydra always does.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Iterable

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

PACKAGE_CONFIGS = Path(__file__).parent / "configs"

# Keys of the config contract that every run config must have.
REQUIRED_KEYS = (
    "epochs", "device_id", "grad_clipping", "model_name", "dataset_name", "loss", "activation",
    "method", "num_tangents", "tangent", "seed", "data_root", "runs_dir", "resume",
)


def shipped_config(name: str = "cifar10_convnet") -> Path:
    """Return the path of a config file shipped in the package (``fwdbwd_lib/configs``)."""
    path = PACKAGE_CONFIGS / f"{name}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in PACKAGE_CONFIGS.glob("*.yaml"))
        raise FileNotFoundError(f"no shipped config {name!r}: available are {', '.join(names)}")
    return path


def _search_path_override(config_dir: Path) -> str:
    entries = []
    user_groups = config_dir / "configs"
    if user_groups.is_dir():
        entries.append(f"file://{user_groups.resolve()}")
    entries.append("pkg://fwdbwd_lib.configs")
    return "hydra.searchpath=[" + ",".join(entries) + "]"


def compose_config(config_path: str | Path, overrides: Iterable[str] = ()) -> DictConfig:
    """Compose one config from ``config_path`` and ``key=value`` overrides (no sweeps)."""
    config_path = Path(config_path).expanduser()
    if not config_path.is_file():
        raise FileNotFoundError(
            f"config file {config_path} not found; pass --config_path with the path of a YAML "
            f"file, for example {shipped_config()}"
        )
    config_dir = config_path.resolve().parent
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            config = compose(
                config_name=config_path.stem,
                overrides=[*overrides, _search_path_override(config_dir)],
            )
    except HydraException as error:
        raise ValueError(f"invalid config {config_path} with overrides {list(overrides)}: {error}") from None
    finally:
        GlobalHydra.instance().clear()
    with open_dict(config):
        config.pop("hydra", None)
    missing = [key for key in REQUIRED_KEYS if key not in config]
    if missing:
        raise ValueError(
            f"config {config_path} lacks the keys {', '.join(missing)}; start from "
            f"{shipped_config()} or add them"
        )
    return config


def open_dict(config: DictConfig):
    from omegaconf import open_dict as omegaconf_open_dict

    return omegaconf_open_dict(config)


def expand_sweep(overrides: Iterable[str]) -> list[list[str]]:
    """Expand comma-list overrides into the product of their values, one override list each.

    ``["method=backprop,forward_gradient", "seed=0,1"]`` gives four lists. Hydra's override
    grammar parses the values, so ranges (``seed=range(0,3)``) and quoting work as in Hydra.
    """
    overrides = list(overrides)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as error:
        raise ValueError(f"invalid override in {overrides}: {error}") from None
    fixed, sweeps = [], []
    for override in parsed:
        if override.is_sweep_override():
            key = override.get_key_element()
            sweeps.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            fixed.append(override.input_line)
    return [fixed + list(choice) for choice in itertools.product(*sweeps)]


def compose_sweep(config_path: str | Path, overrides: Iterable[str] = ()) -> list[DictConfig]:
    """Compose one config per combination of the comma-list overrides."""
    return [compose_config(config_path, combination) for combination in expand_sweep(overrides)]


def to_container(config: DictConfig | dict[str, Any]) -> dict[str, Any]:
    if isinstance(config, DictConfig):
        return OmegaConf.to_container(config, resolve=True)
    return dict(config)

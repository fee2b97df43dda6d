"""Name-to-builder registries for datasets, models, losses and gradient methods.

Users add their own entries without editing the library::

    from fwdbwd_lib.registry import register_model

    @register_model("my_net")
    def build_my_net(num_classes: int, width: int = 64) -> torch.nn.Module:
        ...

A config then selects it with ``model_name=my_net``. The module that registers it goes in the
config key ``imports``, because the command line imports those modules before building the run.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


class Registry:
    """A mapping from names to builders, with errors that list the known names."""

    def __init__(self, kind: str, config_key: str):
        self.kind = kind
        self.config_key = config_key
        self._builders: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorator(builder: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._builders and self._builders[name] is not builder:
                raise ValueError(f"{self.kind} {name!r} is already registered; choose another name")
            self._builders[name] = builder
            return builder

        return decorator

    def names(self) -> list[str]:
        return sorted(self._builders)

    def get(self, name: str) -> Callable[..., Any]:
        """Return the builder registered as ``name``, or import ``name`` as a dotted path."""
        if name in self._builders:
            return self._builders[name]
        if "." in name:
            return resolve_dotted_path(name, self.config_key)
        raise ValueError(
            f"unknown {self.kind} {name!r} in {self.config_key}: known names are "
            f"{', '.join(self.names())}; register your own with "
            f"fwdbwd_lib.registry.register_{self.kind.replace(' ', '_')}, or give a dotted path "
            f"such as my_package.my_module.build"
        )


def resolve_dotted_path(path: str, config_key: str = "dotted path") -> Any:
    """Import ``package.module.attribute`` and return the attribute."""
    if not isinstance(path, str) or "." not in path:
        raise ValueError(
            f"invalid dotted path {path!r} in {config_key}: expected 'package.module.name', "
            "for example torch.nn.functional.cross_entropy"
        )
    module_name, _, attribute = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        # The attribute may itself be nested (package.module.Class.method).
        parent_name, _, parent_attribute = module_name.rpartition(".")
        try:
            module = getattr(importlib.import_module(parent_name), parent_attribute)
        except (ImportError, AttributeError, ValueError):
            raise ValueError(
                f"invalid dotted path {path!r} in {config_key}: module {module_name!r} cannot be "
                "imported; check the spelling and that the package is installed"
            ) from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ValueError(
            f"invalid dotted path {path!r} in {config_key}: {module_name!r} has no attribute "
            f"{attribute!r}"
        ) from None


datasets = Registry("dataset", "dataset_name")
models = Registry("model", "model_name")
losses = Registry("loss", "loss")
gradient_methods = Registry("gradient method", "method")

register_dataset = datasets.register
register_model = models.register
register_loss = losses.register
register_gradient_method = gradient_methods.register

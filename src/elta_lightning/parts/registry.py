"""Which part a name in ``method.parts`` means, and the checks a list of parts must pass."""

from __future__ import annotations

import difflib
from typing import Any

from omegaconf import DictConfig, OmegaConf

from elta_lightning.errors import ConfigError
from elta_lightning.parts.base import Part, PartContext

#: Part classes by their name in ``method.parts`` (filled by :func:`register_part`).
PARTS: dict[str, type[Part]] = {}


def register_part(cls: type[Part]) -> type[Part]:
    """Class decorator: make ``cls`` available as ``method.parts=[<cls.name>]``. The class says
    its typed config node with ``config_class`` (a dataclass whose ``__post_init__`` validates
    it); the node lives at ``method.<name>`` of the run config."""
    if cls.name in PARTS and PARTS[cls.name] is not cls:
        raise ValueError(f"two parts are named {cls.name!r}: {PARTS[cls.name]} and {cls}")
    PARTS[cls.name] = cls
    return cls


def part_class(name: str) -> type[Part]:
    """The class of a part name, or a ConfigError listing the names there are."""
    if name not in PARTS:
        close = difflib.get_close_matches(name, list(PARTS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"method.parts: unknown part {name!r}. Parts: {sorted(PARTS)}.{hint}")
    return PARTS[name]


def part_config(method: DictConfig, name: str) -> Any:
    """The typed, validated config object of part ``name`` (its dataclass instance), from the
    node ``method.<name>`` (typed or plain, e.g. a checkpoint's stored config)."""
    typed = OmegaConf.merge(OmegaConf.structured(part_class(name).config_class), method[name])
    return OmegaConf.to_object(typed)


def check_parts(names: list[str]) -> None:
    """A list of parts that can run together: each at most once, at most one that replaces the
    task loss, at most one that sets sample weights."""
    classes = [part_class(name) for name in names]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"method.parts: {repeated} listed more than once: {names}")
    exclusive = (
        ("replaces_task_loss", "replace the task loss"),
        ("weights_samples", "set sample weights"),
    )
    for flag, what in exclusive:
        claimants = [cls.name for cls in classes if getattr(cls, flag)]
        if len(claimants) > 1:
            raise ConfigError(
                f"method.parts: at most one part may {what}; {claimants} all do. Keep one."
            )


def build_parts(method: DictConfig, context: PartContext) -> list[Part]:
    """The parts of ``method.parts`` in order, each built from its config node."""
    names = list(method.parts)
    check_parts(names)
    return [part_class(name)(part_config(method, name), context) for name in names]


def views_needed(names: list[str]) -> int:
    """How many extra augmented views of each training image the parts read (0: none)."""
    return max((part_class(name).views_needed for name in names), default=0)

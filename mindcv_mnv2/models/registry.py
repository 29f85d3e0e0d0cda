"""The named networks: one entry per distinct network, with the facts needed to evaluate it.

A name is ``mobilenet_v2_<width x 100>[_<eval size>]``. The size suffix is part of what the
entry *is* (its default input size), so ``mobilenet_v2_100_192`` evaluates at 192 px unless a
recipe says otherwise; ``_224`` is an alias of the bare name (MindCV spells both).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

from ..constants import DEFAULT_CROP_PCT, DEFAULT_INTERPOLATION, EVAL_SIZES, IMAGENET_MEAN, IMAGENET_STD, WIDTHS


@dataclass(frozen=True)
class ModelSpec:
    """A registered network: constructor arguments plus its evaluation facts."""

    name: str
    width_mult: float
    image_size: int = 224
    crop_pct: float = DEFAULT_CROP_PCT
    interpolation: str = DEFAULT_INTERPOLATION
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD

    def eval_facts(self) -> Dict[str, Any]:
        """The config keys this entry supplies when a recipe leaves them unset."""
        return {"image_resize": self.image_size, "crop_pct": self.crop_pct,
                "interpolation": self.interpolation, "mean": self.mean, "std": self.std}


# Explicit: every width at every size of the published grid (TF-slim's 22 checkpoints plus 1.3/1.4 @ 224).
REGISTRY: Dict[str, ModelSpec] = {}
for _tag, _w in WIDTHS.items():
    for _s in EVAL_SIZES if _w <= 1.0 else (224,):
        _name = f"mobilenet_v2_{_tag}" if _s == 224 else f"mobilenet_v2_{_tag}_{_s}"
        REGISTRY[_name] = ModelSpec(_name, _w, image_size=_s)

ALIASES = {f"mobilenet_v2_{tag}_224": f"mobilenet_v2_{tag}" for tag in WIDTHS}


def list_models() -> List[str]:
    """All registered model names (aliases excluded)."""
    return list(REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """Look up a model name (or alias); KeyError lists the valid names."""
    spec = REGISTRY.get(ALIASES.get(name, name))
    if spec is None:
        import difflib
        close = difflib.get_close_matches(name, list(REGISTRY) + list(ALIASES), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise KeyError(f"unknown model '{name}'.{hint} Valid names: {', '.join(REGISTRY)}")
    return spec


def model_defaults(name: str) -> Dict[str, Any]:
    """Evaluation facts of a model name, for filling recipe keys left unset."""
    return get_spec(name).eval_facts()


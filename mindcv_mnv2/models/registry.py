"""The named networks: one entry per distinct network, with the facts needed to evaluate it.

A name is ``mobilenet_v2_<width x 100>[_<eval size>]``. The size suffix is part of what the
entry *is* (its default input size), so ``mobilenet_v2_100_192`` evaluates at 192 px unless a
recipe says otherwise; ``_224`` is an alias of the bare name (MindCV spells both).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Tuple

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # 0-255 scale, RGB
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class ModelSpec:
    """A registered network: constructor arguments plus its evaluation facts."""

    name: str
    width_mult: float
    image_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD

    def eval_facts(self) -> Dict[str, Any]:
        """The config keys this entry supplies when a recipe leaves them unset."""
        return {"image_resize": self.image_size, "crop_pct": self.crop_pct,
                "interpolation": self.interpolation, "mean": self.mean, "std": self.std}


_WIDTHS = {"035": 0.35, "050": 0.5, "075": 0.75, "100": 1.0, "130": 1.3, "140": 1.4}
_SIZES = (224, 192, 160, 128, 96)  # the TF-slim / MindCV resolution grid

# Explicit: every width at every size of the published grid (TF-slim's 22 checkpoints plus 1.3/1.4 @ 224).
REGISTRY: Dict[str, ModelSpec] = {}
for _tag, _w in _WIDTHS.items():
    for _s in _SIZES if _w <= 1.0 else (224,):
        _name = f"mobilenet_v2_{_tag}" if _s == 224 else f"mobilenet_v2_{_tag}_{_s}"
        REGISTRY[_name] = ModelSpec(_name, _w, image_size=_s)

ALIASES = {f"mobilenet_v2_{tag}_224": f"mobilenet_v2_{tag}" for tag in _WIDTHS}


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


def spec_dict(name: str) -> Dict[str, Any]:
    """JSON-friendly description of a registry entry."""
    return asdict(get_spec(name))

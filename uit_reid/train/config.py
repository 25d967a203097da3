"""Training configuration: nested dataclasses read from TOML, strict about unknown keys.

A config file has up to six tables, ``[model]``, ``[loss]``, ``[data]``, ``[optim]``,
``[train]`` and ``[synthetic]``; anything left out keeps the defaults below, which are UIT's recipe for ViT-B/16 on
CUHK-PEDES (`uit_reid.recipe`). A misspelt key is an error naming the key and the file, never silently ignored.
Keys that name a choice (a sampler, a TIR layout, ...) take the keys of the registry that defines the choice
(`CHOICES`), read when a config is checked: this module itself imports neither torch nor those modules.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uit_reid import recipe

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainLoopConfig",
    "SyntheticConfig",
    "TrainConfig",
    "ConfigError",
    "bundled_config",
    "load_config",
]


class ConfigError(ValueError):
    """A configuration file or override that cannot be used."""


@dataclass
class ModelConfig:
    """The ``[model]`` table: ``tower`` is an open_clip architecture (``ViT-B-16-quickgelu``, ``uit-tiny``,
    ``hf-hub:org/name``) with its ``pretrained`` tag; ``tir_head`` switches the TIR decoder on."""

    tower: str = "ViT-B-16-quickgelu"
    pretrained: str | None = "openai"
    image_size: tuple[int, int] = recipe.IMAGE_SIZE
    context_length: int = recipe.CONTEXT_LENGTH
    tir_head: bool = True
    tir_width: int = recipe.TIR_WIDTH
    tir_depth: int = recipe.TIR_DEPTH
    tir_heads: int = recipe.TIR_HEADS
    tir_layout: str = recipe.TIR_LAYOUT
    mask_ratio: float = recipe.MASK_RATIO
    tir_grayscale: str = recipe.TIR_GRAYSCALE
    tir_target: str = recipe.TIR_TARGET
    tir_pretrained: str | None = None
    """Start the TIR decoder from pre-trained weights: a tag shipped for ``tower`` (`uit_reid.pretrained.
    SHIPPED_TIR_HEADS`) or a ``.safetensors`` file of a `TIRHead`; none (the authors' recipe): a fresh decoder."""

    def __post_init__(self) -> None:
        # TOML has no null: "none" (or "") means random initialisation.
        if isinstance(self.pretrained, str) and self.pretrained.lower() in ("", "none", "random"):
            self.pretrained = None
        if isinstance(self.tir_pretrained, str) and self.tir_pretrained.lower() in ("", "none", "random"):
            self.tir_pretrained = None


@dataclass
class LossConfig:
    sdm: float = recipe.LOSS_WEIGHTS["sdm"]
    id: float = recipe.LOSS_WEIGHTS["id"]
    tir: float = recipe.LOSS_WEIGHTS["tir"]
    cmt: float = recipe.LOSS_WEIGHTS["cmt"]
    itc: float = recipe.LOSS_WEIGHTS["itc"]
    logit_scale: float = recipe.LOGIT_SCALE
    cmt_margin: float = recipe.CMT_MARGIN


@dataclass
class DataConfig:
    root: str = "data/CUHK-PEDES"
    format: str = "auto"
    batch_size: int = 128
    sampler: str = recipe.SAMPLER
    num_instances: int = recipe.NUM_INSTANCES
    num_workers: int = 8
    text_augment_p: float = 0.2
    token_corruption: bool = True
    padding: int = 10
    erasing_p: float = 0.5
    erasing_fill: str = "clip_mean"
    interpolation: str = "bilinear"
    on_missing: str = "error"
    eval_batch_size: int = 512


@dataclass
class OptimConfig:
    lr: float = 1e-5
    head_lr_mult: float = 5.0
    bias_lr_mult: float = 2.0
    weight_decay: float = 4e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-3
    warmup_epochs: float = 5.0
    warmup_factor: float = 0.1
    min_lr_factor: float = 0.0
    grad_clip: float = 0.0
    accum_steps: int = 1


@dataclass
class TrainLoopConfig:
    """The ``[train]`` table: how long and how the loop runs, where it writes, how it logs."""

    epochs: int = 60
    precision: str = "auto"
    compile: bool = False
    seed: int = 1
    eval_every: int = 1
    checkpoint_every_steps: int = 0
    log_every: int = 50
    output_dir: str = "runs/uit"
    device: str = "auto"
    max_steps: int = 0
    tir_warmup_steps: int = 0
    """Steps of the TIR decoder alone on the frozen encoders before joint training (`uit_reid.train.tir_warmup`)."""
    tir_warmup_lr: float = 0.0
    """The warm-up's constant learning rate for the whole decoder; 0: ``optim.lr * optim.head_lr_mult``."""
    select_on_test: bool = False
    report_to: tuple[str, ...] = ()
    """Where metrics go besides ``metrics.jsonl``: any of ``"tensorboard"``, ``"wandb"`` (none by default)."""


@dataclass
class SyntheticConfig:
    """Generate the built-in synthetic dataset into ``data.root`` when it is not there yet."""

    generate: bool = False
    num_ids: int = 1000
    images_per_id: int = 4
    num_val_ids: int = 100
    num_test_ids: int = 200
    seed: int = 0
    workers: int = 1
    world: str = "pedestrians"
    """Which synthetic world to write (``uit_reid.data.synthetic.WORLD_NAMES``): the demo's or the pre-training one."""


@dataclass
class TrainConfig:
    """The whole training recipe; ``TrainConfig()`` is UIT on CUHK-PEDES with ViT-B/16."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every key's type (from the dataclass annotations) and the ranges training relies on."""
        for section in _SECTION_TYPES:
            _check_types(section, getattr(self, section))
        r, d, o = self.train, self.data, self.optim
        checks = [
            (r.eval_every >= 1, f"train.eval_every must be >= 1, got {r.eval_every}"),
            (r.log_every >= 1, f"train.log_every must be >= 1, got {r.log_every}"),
            (r.max_steps >= 0, f"train.max_steps must be >= 0 (0 = no limit), got {r.max_steps}"),
            (r.checkpoint_every_steps >= 0, f"train.checkpoint_every_steps must be >= 0, got {r.checkpoint_every_steps}"),
            (r.tir_warmup_steps >= 0, f"train.tir_warmup_steps must be >= 0, got {r.tir_warmup_steps}"),
            (r.tir_warmup_lr >= 0, f"train.tir_warmup_lr must be >= 0 (0 = optim.lr * optim.head_lr_mult), got {r.tir_warmup_lr}"),
            (d.num_workers >= 0, f"data.num_workers must be >= 0, got {d.num_workers}"),
            (d.eval_batch_size > 0, f"data.eval_batch_size must be positive, got {d.eval_batch_size}"),
            (d.num_instances >= 1, f"data.num_instances must be >= 1, got {d.num_instances}"),
            (0.0 <= d.text_augment_p <= 1.0, f"data.text_augment_p must be in [0, 1], got {d.text_augment_p}"),
            (0.0 <= d.erasing_p <= 1.0, f"data.erasing_p must be in [0, 1], got {d.erasing_p}"),
            (d.padding >= 0, f"data.padding must be >= 0, got {d.padding}"),
            (o.lr > 0, f"optim.lr must be positive, got {o.lr}"),
            (o.eps > 0, f"optim.eps must be positive, got {o.eps}"),
            (o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}"),
            (all(0.0 <= b < 1.0 for b in o.betas), f"optim.betas must be in [0, 1), got {list(o.betas)}"),
            (o.warmup_epochs >= 0, f"optim.warmup_epochs must be >= 0, got {o.warmup_epochs}"),
            (o.grad_clip >= 0, f"optim.grad_clip must be >= 0, got {o.grad_clip}"),
            (all(v > 0 for v in self.model.image_size), f"model.image_size must be positive, got {list(self.model.image_size)}"),
            (self.model.context_length >= 1, f"model.context_length must be >= 1, got {self.model.context_length}"),
            (self.synthetic.num_ids >= 1 and self.synthetic.images_per_id >= 1,
             "synthetic.num_ids and synthetic.images_per_id must be >= 1"),
        ]
        checks += [
            (self.data.batch_size > 0, "data.batch_size must be positive"),
            (self.optim.accum_steps >= 1, "optim.accum_steps must be >= 1"),
            (self.train.epochs >= 1, "train.epochs must be >= 1"),
            (0.0 <= self.model.mask_ratio < 1.0, "model.mask_ratio must be in [0, 1)"),
            (len(self.model.image_size) == 2, "model.image_size must be [height, width]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self._check_choices()

    def _check_choices(self) -> None:
        """Each choice key holds one of its registry's keys (a list key: only such keys)."""
        for dotted, registry in CHOICES.items():
            section, key = dotted.split(".")
            allowed = registry.keys()
            value = getattr(getattr(self, section), key)
            chosen = value if isinstance(value, tuple) else (value,)
            if not all(v in allowed for v in chosen):
                listed = list(value) if isinstance(value, tuple) else repr(value)
                raise ConfigError(f"{dotted} must be {'any of' if isinstance(value, tuple) else 'one of'} "
                                  f"{list(allowed)}, got {listed}")

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dicts, one per section."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> TrainConfig:
        """Build from nested dicts; unknown tables or keys raise `ConfigError` naming them."""
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        source_for = data.pop("__sources__", {}) if isinstance(data.get("__sources__"), dict) else {}
        for name, value in data.items():
            if name not in sections:
                raise ConfigError(f"{source}: unknown section [{name}]; known: {sorted(sections)}")
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: [{name}] must be a table")
            section_cls = _SECTION_TYPES[name]
            known = {f.name: f for f in dataclasses.fields(section_cls)}
            for key in value:
                if f"{name}.{key}" in RENAMED_KEYS:
                    where = source_for.get(f"{name}.{key}", source)
                    raise ConfigError(f"{where}: '{name}.{key}' is now '{RENAMED_KEYS[name + '.' + key]}'")
                if key not in known:
                    raise ConfigError(f"{source}: unknown key '{name}.{key}'; known: {sorted(known)}")
            hints = _hints(section_cls)
            for key, v in value.items():
                where = source_for.get(f"{name}.{key}", source)
                _check_value(f"{name}.{key}", v, hints[key], where)
            kwargs[name] = section_cls(**{k: _coerce(hints[k], v) for k, v in value.items()})
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            key = str(exc).split(" ", 1)[0]  # "section.key must ..." : blame the override that set it
            raise ConfigError(f"{source_for.get(key, source)}: {exc}") from None

    @classmethod
    def from_toml(cls, path: str | Path) -> TrainConfig:
        """Read a TOML file; errors name the file and the offending key.

        A top-level ``extends = "paper"`` starts from another config (a bundled one by name, or a
        ``.toml`` path relative to this file) and replaces the keys this file sets (`_read_toml`).
        """
        return cls.from_dict(_read_toml(path), source=str(path))

    def override(self, assignments: list[str]) -> TrainConfig:
        """Apply ``section.key=value`` overrides (values parsed as TOML, else taken as strings)."""
        data: dict[str, Any] = self.to_dict()
        sources: dict[str, str] = {}
        for item in assignments:
            if "=" not in item or "." not in item.split("=", 1)[0]:
                raise ConfigError(f"override {item!r} must look like section.key=value")
            dotted, raw = item.split("=", 1)
            section, key = dotted.strip().split(".", 1)
            try:
                value = tomllib.loads(f"v = {raw}")["v"]
            except tomllib.TOMLDecodeError:
                value = raw
            data.setdefault(section, {})[key] = value
            sources[f"{section}.{key}"] = f"--set {item}"
        data["__sources__"] = sources
        return TrainConfig.from_dict(data, source="--set " + " ".join(assignments))

    def to_toml(self) -> str:
        """Render as TOML (TOML has no null: ``None`` is written as ``"none"``)."""
        lines: list[str] = []
        for section, values in self.to_dict().items():
            lines.append(f"[{section}]")
            for key, value in values.items():
                lines.append(f"{key} = {_toml_value('none' if value is None else value)}")
            lines.append("")
        return "\n".join(lines)


RENAMED_KEYS = {"model.tir": "model.tir_head", "model.name": "model.tower"}
"""Keys that were renamed: reading the old one is an error that names the new one."""

_SECTION_TYPES = {
    "model": ModelConfig,
    "loss": LossConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "train": TrainLoopConfig,
    "synthetic": SyntheticConfig,
}


class Registry(typing.NamedTuple):
    """Where a choice's allowed values live: ``module.name``, a tuple of names or a dict by name."""

    module: str
    name: str
    extra: tuple[str, ...] = ()
    """Values allowed besides the registry's keys (``"auto"``)."""

    def keys(self) -> tuple[str, ...]:
        """The allowed values, read now: an entry added to the registry is one at once."""
        return (*self.extra, *getattr(importlib.import_module(self.module), self.name))


CHOICES: dict[str, Registry] = {
    "model.tir_layout": Registry("uit_reid.tir", "TIR_LAYOUTS"),
    "model.tir_grayscale": Registry("uit_reid.tir", "TIR_GRAYSCALES"),
    "model.tir_target": Registry("uit_reid.tir", "TIR_TARGETS"),
    "data.sampler": Registry("uit_reid.data.samplers", "SAMPLERS"),
    "data.interpolation": Registry("uit_reid.images", "INTERPOLATIONS"),
    "data.erasing_fill": Registry("uit_reid.augment", "ERASING_FILLS"),
    "data.on_missing": Registry("uit_reid.data.readers", "ON_MISSING"),
    "train.precision": Registry("uit_reid.device", "PRECISIONS", extra=("auto",)),
    "train.report_to": Registry("uit_reid.train._reporting", "REPORTERS"),
    "synthetic.world": Registry("uit_reid.data.synthetic", "WORLD_NAMES"),
}
"""The keys that name a choice and the registry whose keys are the allowed values. Registries are
imported when a config is checked, not with this module, which therefore imports without torch."""


def _hints(section_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(section_cls)


def _describe(tp: Any) -> str:
    """Words for a type annotation: ``int`` -> "an integer", ``tuple[int, int]`` -> "a list of 2 integers"."""
    names = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string", type(None): "none"}
    if tp in names:
        return names[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (tuple, list):
        if len(args) == 2 and args[1] is Ellipsis or origin is list:
            return f"a list of {_describe(args[0]).split(' ', 1)[1]}s"
        kinds = {_describe(a).split(" ", 1)[1] for a in args}
        return f"a list of {len(args)} {kinds.pop() + 's' if len(kinds) == 1 else 'values'}"
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in args)
    return getattr(tp, "__name__", str(tp))


def _matches(value: Any, tp: Any) -> bool:
    if tp is Any:
        return True
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if tp is type(None):
        return value is None
    if tp is str:
        return isinstance(value, str)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            return False
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # an annotation this checker does not know: leave it to the code that uses it


def _check_value(key: str, value: Any, tp: Any, source: str) -> None:
    if not _matches(value, tp):
        raise ConfigError(f"{source}: {key} must be {_describe(tp)}, got {value!r}")


def _check_types(section: str, obj: Any) -> None:
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not _matches(value, hints[f.name]):
            raise ConfigError(f"{section}.{f.name} must be {_describe(hints[f.name])}, got {value!r}")


def _coerce(tp: Any, value: Any) -> Any:
    if isinstance(value, list):
        return tuple(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def bundled_config(name: str) -> Path:
    """Path of a config shipped with the package (``cuhk_pedes``, ``icfg_pedes``, ``rstpreid``, ``demo``)."""
    path = CONFIG_DIR / f"{name}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
        raise ConfigError(f"no bundled config {name!r}; available: {known}")
    return path


def _read_toml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The tables of a config file, with those of the config it ``extends`` under them, key by key.

    ``extends`` names a bundled config (``"paper"``) or a ``.toml`` file relative to the extending
    file; a chain may go on, a cycle is an error naming the files.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    base_name = data.pop("extends", None)
    if base_name is None:
        return data
    if not isinstance(base_name, str) or not base_name:
        raise ConfigError(f"{path}: extends: must be a config name or a .toml path, got {base_name!r}")
    base_path = path.parent / base_name if base_name.endswith(".toml") else bundled_config(base_name)
    if base_path.resolve() in {p.resolve() for p in (*_chain, path)}:
        raise ConfigError(f"{path}: extends {base_name!r} makes a cycle: {' -> '.join(map(str, (*_chain, path, base_path)))}")
    merged = _read_toml(base_path, (*_chain, path))
    for section, values in data.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = values
    return merged


def load_config(path_or_name: str | Path) -> TrainConfig:
    """Load a TOML file, or a bundled config by name (``"demo"``, ``"cuhk_pedes"``...)."""
    path = Path(path_or_name)
    if path.suffix != ".toml" and not path.exists():
        path = bundled_config(str(path_or_name))
    return TrainConfig.from_toml(path)

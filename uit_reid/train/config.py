"""Training configuration: nested dataclasses read from TOML, strict about unknown keys.

A config file has up to six tables, ``[model]``, ``[loss]``, ``[data]``, ``[optim]``,
``[train]`` and ``[synthetic]``; anything left out keeps the defaults below, which are UIT's recipe for ViT-B/16 on
CUHK-PEDES. A misspelt key is an error naming the key and the file, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    name: str = "ViT-B-16"
    pretrained: str | None = "openai"
    image_size: tuple[int, int] = (384, 128)
    context_length: int = 77
    tir: bool = True
    tir_width: int = 512
    tir_depth: int = 4
    tir_heads: int = 8
    mask_ratio: float = 0.7

    def __post_init__(self) -> None:
        # TOML has no null: "none" (or "") means random initialisation.
        if isinstance(self.pretrained, str) and self.pretrained.lower() in ("", "none", "random"):
            self.pretrained = None


@dataclass
class LossConfig:
    sdm: float = 1.0
    id: float = 1.0
    tir: float = 10.0
    cmt: float = 10.0
    itc: float = 0.0
    logit_scale: float = 50.0
    cmt_margin: float = 0.05


@dataclass
class DataConfig:
    root: str = "data/CUHK-PEDES"
    format: str = "auto"
    batch_size: int = 128
    sampler: str = "random"
    num_instances: int = 4
    num_workers: int = 8
    text_augment_p: float = 0.2
    padding: int = 10
    erasing_p: float = 0.5
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
    report_to: tuple[str, ...] = ()
    """Where metrics go besides ``metrics.jsonl``: any of ``"tensorboard"``, ``"wandb"`` (none by default)."""

    def __post_init__(self) -> None:
        if isinstance(self.report_to, str):  # report_to = "wandb" means ["wandb"]; "none" means []
            self.report_to = () if self.report_to.lower() in ("", "none") else (self.report_to,)


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
        """Check values that would otherwise fail deep inside training."""
        checks = [
            (self.train.precision in ("auto", "fp32", "bf16", "fp16"), "train.precision must be auto|fp32|bf16|fp16"),
            (self.data.sampler in ("random", "identity"), "data.sampler must be 'random' or 'identity'"),
            (self.data.on_missing in ("error", "skip"), "data.on_missing must be 'error' or 'skip'"),
            (self.data.batch_size > 0, "data.batch_size must be positive"),
            (self.optim.accum_steps >= 1, "optim.accum_steps must be >= 1"),
            (self.train.epochs >= 1, "train.epochs must be >= 1"),
            (0.0 <= self.model.mask_ratio < 1.0, "model.mask_ratio must be in [0, 1)"),
            (len(self.model.image_size) == 2, "model.image_size must be [height, width]"),
            (
                set(self.train.report_to) <= {"tensorboard", "wandb"},
                f"train.report_to takes 'tensorboard' and/or 'wandb', got {list(self.train.report_to)}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dicts, one per section."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> TrainConfig:
        """Build from nested dicts; unknown tables or keys raise `ConfigError` naming them."""
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            if name not in sections:
                raise ConfigError(f"{source}: unknown section [{name}]; known: {sorted(sections)}")
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: [{name}] must be a table")
            section_cls = _SECTION_TYPES[name]
            known = {f.name: f for f in dataclasses.fields(section_cls)}
            for key in value:
                if (name, key) in _RENAMED:
                    raise ConfigError(f"{source}: '{name}.{key}' is now called '{name}.{_RENAMED[name, key]}'")
                if key not in known:
                    raise ConfigError(f"{source}: unknown key '{name}.{key}'; known: {sorted(known)}")
            kwargs[name] = section_cls(**{k: _coerce(known[k], v) for k, v in value.items()})
        return cls(**kwargs)

    @classmethod
    def from_toml(cls, path: str | Path) -> TrainConfig:
        """Read a TOML file; errors name the file and the offending key."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
        return cls.from_dict(data, source=str(path))

    def override(self, assignments: list[str]) -> TrainConfig:
        """Apply ``section.key=value`` overrides (values parsed as TOML, else taken as strings)."""
        data = self.to_dict()
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
        return TrainConfig.from_dict(data, source="overrides")

    def to_toml(self) -> str:
        """Render as TOML (TOML has no null: ``None`` is written as ``"none"``)."""
        lines: list[str] = []
        for section, values in self.to_dict().items():
            lines.append(f"[{section}]")
            for key, value in values.items():
                lines.append(f"{key} = {_toml_value('none' if value is None else value)}")
            lines.append("")
        return "\n".join(lines)


_SECTION_TYPES = {
    "model": ModelConfig,
    "loss": LossConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "train": TrainLoopConfig,
    "synthetic": SyntheticConfig,
}


_RENAMED = {("data", "text_aug_p"): "text_augment_p"}
"""Keys renamed since 0.1.0: using the old name is an error that gives the new one."""


def _coerce(spec: dataclasses.Field, value: Any) -> Any:
    if isinstance(value, list):
        return tuple(value)
    if spec.type == "float" and isinstance(value, int) and not isinstance(value, bool):
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


def load_config(path_or_name: str | Path) -> TrainConfig:
    """Load a TOML file, or a bundled config by name (``"demo"``, ``"cuhk_pedes"``...)."""
    path = Path(path_or_name)
    if path.suffix != ".toml" and not path.exists():
        path = bundled_config(str(path_or_name))
    return TrainConfig.from_toml(path)

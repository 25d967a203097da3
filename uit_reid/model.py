"""UITModel: the dual encoder, an identity classifier and an optional TIR head, composed into losses."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from uit_reid import losses, recipe
from uit_reid._bounds import (
    MAX_SIZES,
    check_image_size,
    check_int,
    check_model_cfg,
    check_number,
    check_weights_hold,
    clip_parameter_count,
)
from uit_reid._version import __version__
from uit_reid.distributed import gather_no_grad, gather_with_grad
from uit_reid.encoders import CLIPDualEncoder, MaskedImageOutput, load_state_dict_file
from uit_reid.images import INTERPOLATIONS
from uit_reid.io import atomic_write_bytes, atomic_write_text
from uit_reid.model_card import MODEL_CARD_NAME, ModelCardInfo, render_model_card
from uit_reid.tir import TIR_GRAYSCALES, TIR_TARGETS, TIRHead, tir_loss, tir_target, to_grayscale

__all__ = ["PRETRAINED_FORMAT_VERSION", "UITModel", "pretrained_tokenizer"]

PRETRAINED_FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"

logger = logging.getLogger(__name__)

_RENAMED_METHODS = {
    "encode_images": "encode_image(images, normalize=True), called under torch.no_grad()",
    "encode_texts": "encode_text(ids, normalize=True), called under torch.no_grad()",
}


class UITModel(nn.Module):
    """Encoder + shared identity classifier + optional TIR head → a dict of losses.

    ``forward(batch)`` takes ``{"images", "text_ids", "pids"}`` and returns each enabled loss
    (``sdm``, ``id``, ``cmt``, ``tir``, ``itc``) unweighted plus their weighted sum ``loss``. A loss
    whose weight is 0 is not computed. Under ``torch.distributed`` the features are gathered
    across ranks (with gradients) before the batch-level losses (SDM, CMT, ITC).

    Args:
        encoder: the dual encoder.
        num_classes: number of training identities (the ID classifier's outputs); ``0`` disables it.
        tir_head: ``True`` builds a `TIRHead` of UIT's size for this encoder, ``False`` disables
            TIR, or pass a configured `TIRHead` (the TIR loss's weight is ``loss_weights["tir"]``).
        loss_weights: overrides of the recipe's `uit_reid.recipe.LOSS_WEIGHTS` (unknown names are an error).
        logit_scale: fixed inverse temperature of SDM and ITC (UIT: 50).
        cmt_margin: margin of the cross-modal triplet loss (UIT: 0.05).
        mask_ratio: fraction of patches TIR drops (UIT: 0.7).
        image_mean: per-channel mean the input images are normalised with (transforms, TIR's grayscale
            inputs); by default the tower's own (``encoder.preprocess_cfg``: CLIP's for uit_reid's towers).
        image_std: per-channel standard deviation of that normalisation; by default the tower's.
        tir_grayscale: how TIR's grayscale input is formed. ``"normalised"`` (the authors' code):
            the luma weights applied to the normalised tensor, one channel repeated three times;
            ``"pixels"``: grayscale of the de-normalised pixels, normalised again.
        tir_target: what TIR restores (`uit_reid.tir.TIR_TARGETS`): ``"pixels"`` (the authors' code)
            or ``"patch_norm"`` (each patch standardised, MAE's ``norm_pix_loss``).
        interpolation: the resize the model's images were trained with (``"bicubic"`` or
            ``"bilinear"``; by default the tower's); saved with the model (with the mean and std) so
            that `eval_transform` gives evaluation and indexing the same preprocessing.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> UITModel:
        if "tir" in kwargs:  # renamed: 'tir' is only the loss weight (loss_weights["tir"])
            raise TypeError(f"{cls.__name__}(tir=...) is now {cls.__name__}(tir_head=...)")
        return super().__new__(cls)

    def __init__(
        self,
        encoder: CLIPDualEncoder,
        num_classes: int,
        tir_head: bool | TIRHead = True,
        loss_weights: Mapping[str, float] | None = None,
        logit_scale: float = recipe.LOGIT_SCALE,
        cmt_margin: float = recipe.CMT_MARGIN,
        mask_ratio: float = recipe.MASK_RATIO,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        tir_grayscale: str = recipe.TIR_GRAYSCALE,
        interpolation: str | None = None,
        tir_target: str = recipe.TIR_TARGET,
    ) -> None:
        super().__init__()
        self.image_mean, self.image_std, self.interpolation = _preprocessing(
            encoder, image_mean, image_std, interpolation
        )
        if tir_grayscale not in TIR_GRAYSCALES:
            raise ValueError(f"tir_grayscale must be one of {list(TIR_GRAYSCALES)}, got {tir_grayscale!r}")
        if tir_target not in TIR_TARGETS:
            raise ValueError(f"tir_target must be one of {list(TIR_TARGETS)}, got {tir_target!r}")
        check_int(num_classes, "num_classes", 0, MAX_SIZES["num_classes"])
        check_number(logit_scale, "logit_scale", 0, low_open=True)
        check_number(cmt_margin, "cmt_margin", 0)
        check_number(mask_ratio, "mask_ratio", 0, 1, high_open=True)
        weights = dict(recipe.LOSS_WEIGHTS)
        for name, value in (loss_weights or {}).items():
            if name not in weights:
                raise ValueError(f"unknown loss {name!r} in loss_weights; known: {sorted(weights)}")
            weights[name] = check_number(value, f"loss_weights.{name}", 0)
        self.encoder = encoder
        self.num_classes = int(num_classes)
        self.classifier: nn.Linear | None = None
        if self.num_classes > 0:
            self.classifier = nn.Linear(encoder.embed_dim, self.num_classes)
            nn.init.normal_(self.classifier.weight, std=0.001)
            nn.init.zeros_(self.classifier.bias)
        elif weights["id"] > 0:
            logger.info("num_classes=0: the ID loss is disabled")
            weights["id"] = 0.0
        if tir_head is True:
            tir_head = TIRHead(encoder.embed_dim, encoder.grid_size, encoder.patch_size, text_dim=encoder.embed_dim)
        self.tir_head: TIRHead | None = tir_head if isinstance(tir_head, TIRHead) else None
        if self.tir_head is None:
            weights["tir"] = 0.0
        elif self.tir_head.grid_size != encoder.grid_size or self.tir_head.patch_size != encoder.patch_size:
            raise ValueError(
                f"TIRHead grid {self.tir_head.grid_size} / patch {self.tir_head.patch_size} do not match the "
                f"encoder's {encoder.grid_size} / {encoder.patch_size}"
            )
        self.loss_weights = weights
        self.logit_scale = float(logit_scale)
        self.cmt_margin = float(cmt_margin)
        self.mask_ratio = float(mask_ratio)
        self.tir_grayscale = tir_grayscale
        self.tir_target = tir_target
        self.model_card: ModelCardInfo | None = None
        """Training data, config, metrics or origin that `save_pretrained` writes into the model card."""

    @property
    def image_size(self) -> tuple[int, int]:
        """Input image size (height, width) the encoder expects."""
        return self.encoder.image_size

    def eval_transform(self, interpolation: str | None = None) -> Callable[[Any], torch.Tensor]:
        """The image transform for evaluation and indexing: resize to `image_size`, normalise as trained.

        ``interpolation`` replaces the model's resize filter (to measure another one).
        """
        from uit_reid.augment import build_eval_transform

        return build_eval_transform(
            self.image_size, interpolation=interpolation or self.interpolation, mean=self.image_mean, std=self.image_std
        )

    def train_transform(self, **kwargs: Any) -> Callable[[Any], torch.Tensor]:
        """The training augmentation (`augment.build_train_transform`; ``kwargs`` set its options) at this
        model's size, resize and normalisation."""
        from uit_reid.augment import build_train_transform

        kwargs = {"interpolation": self.interpolation, "mean": self.image_mean, "std": self.image_std, **kwargs}
        return build_train_transform(self.image_size, **kwargs)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Losses of one batch ``{"images", "text_ids", "pids"}``: each enabled loss and ``loss``."""
        images, ids, pids = batch["images"], batch["text_ids"], batch["pids"]
        w = self.loss_weights
        need_tokens = w["tir"] != 0.0
        image_feats = self.encoder.encode_image(images)
        text_out = self.encoder.encode_text(ids, return_tokens=need_tokens)
        text_feats, text_tokens = text_out if need_tokens else (text_out, None)

        out: dict[str, torch.Tensor] = {}
        if w["sdm"] or w["cmt"] or w["itc"]:
            all_image, all_text = gather_with_grad(image_feats), gather_with_grad(text_feats)
            all_pids = gather_no_grad(pids)
            if w["sdm"]:
                out["sdm"] = losses.sdm_loss(all_image, all_text, all_pids, logit_scale=self.logit_scale)
            if w["itc"]:
                out["itc"] = losses.itc_loss(all_image, all_text, logit_scale=self.logit_scale)
            if w["cmt"]:
                out["cmt"] = losses.cmt_loss(all_image, all_text, all_pids, margin=self.cmt_margin)
        if w["id"]:
            assert self.classifier is not None
            out["id"] = losses.id_loss(self.classifier(image_feats), self.classifier(text_feats), pids)
        if need_tokens:
            assert self.tir_head is not None and text_tokens is not None
            out["tir"] = self.restoration_loss(images, ids, text_tokens)
        total = sum((w[name] * value for name, value in out.items()), start=images.new_zeros((), dtype=torch.float32))
        out["loss"] = total
        return out

    def restoration_loss(
        self, images: torch.Tensor, ids: torch.Tensor, text_tokens: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Restore the RGB pixels of masked patches of the grayscale image from the caption."""
        masked = self.tir_input(images, generator)
        pred = self.restore(masked, ids, text_tokens)
        return tir_loss(pred, tir_target(images, self.encoder.patch_size, self.tir_target), masked.mask)

    def tir_input(self, images: torch.Tensor, generator: torch.Generator | None = None) -> MaskedImageOutput:
        """TIR's input: ``images`` turned to grayscale, a random ``mask_ratio`` of patches dropped
        (``generator`` fixes which), the rest encoded by the image tower."""
        if self.tir_grayscale == "normalised":
            gray = to_grayscale(images)
        else:
            gray = to_grayscale(images, self.image_mean, self.image_std)
        return self.encoder.encode_masked_image(gray, self.mask_ratio, generator)

    def restore(self, masked: MaskedImageOutput, ids: torch.Tensor, text_tokens: torch.Tensor) -> torch.Tensor:
        """The TIR head's prediction ``(B, N, P)`` for every patch of `tir_input`'s ``masked``, read
        from the captions ``ids`` and their token features."""
        if self.tir_head is None:
            raise ValueError("this model has no TIR head (tir_head=False)")
        return self.tir_head(masked.tokens, masked.ids_restore, text_tokens, self.encoder.text_padding_mask(ids))

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Pooled image features (no TIR cost); ``normalize``: L2-normalised, as float32.

        open_clip's convention: gradients flow, so retrieval calls it under ``torch.no_grad()``.
        """
        return self.encoder.encode_image(images, normalize=normalize)

    def encode_text(self, ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Pooled caption features (padding trimmed: `trim_padding`); ``normalize``: L2-normalised, as float32.

        open_clip's convention: gradients flow, so retrieval calls it under ``torch.no_grad()``.
        """
        return self.encoder.encode_text(self.encoder.trim_padding(ids), normalize=normalize)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in _RENAMED_METHODS:
                raise AttributeError(f"UITModel.{name} is now {_RENAMED_METHODS[name]}") from None
            raise

    @torch.no_grad()
    def encode_captions(self, texts: Sequence[str], normalize: bool = False) -> torch.Tensor:
        """Query features of caption strings: tokenized, moved to the model's device, `encode_text`.

        ``normalize`` as in `encode_text` (open_clip's default, ``False``). The text encoder that
        `uit_reid.retrieval.search_text` and the service take as it is (the index normalises).
        """
        device = next(self.encoder.parameters()).device
        return self.encode_text(self.encoder.tokenize(list(texts)).to(device), normalize=normalize)

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this model's architecture (not its weights)."""
        return {
            "format_version": PRETRAINED_FORMAT_VERSION,
            "uit_reid_version": __version__,
            "encoder": {
                "name": self.encoder.model_name,
                "image_size": list(self.encoder.image_size),
                "context_length": self.encoder.context_length,
                **({"model_cfg": self.encoder.model_cfg} if self.encoder.model_cfg is not None else {}),
            },
            "num_classes": self.num_classes,
            "tir": self.tir_head.config() if self.tir_head is not None else None,
            "loss_weights": dict(self.loss_weights),
            "logit_scale": self.logit_scale,
            "cmt_margin": self.cmt_margin,
            "mask_ratio": self.mask_ratio,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "tir_grayscale": self.tir_grayscale,
            "tir_target": self.tir_target,
            "interpolation": self.interpolation,
        }

    def save_pretrained(self, directory: str | os.PathLike, card: ModelCardInfo | None = None) -> Path:
        """Write ``model.safetensors``, ``config.json`` and a model card ``README.md`` to ``directory``.

        Each file is written atomically. ``card`` adds what the weights cannot tell (training data
        and config, metrics, where a converted model came from) to the model card; by default
        `model_card` is used.
        """
        from safetensors.torch import save

        directory = Path(directory)
        state = {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items()}
        config = self.config()
        atomic_write_bytes(directory / WEIGHTS_NAME, save(state, metadata={"format": "pt"}))
        atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
        atomic_write_text(directory / MODEL_CARD_NAME, render_model_card(config, card or self.model_card))
        return directory

    def push_to_hub(
        self,
        repo_id: str,
        *,
        revision: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str = "Upload uit_reid model",
        card: ModelCardInfo | None = None,
    ) -> str:
        """Upload this model (`save_pretrained` files) to the Hugging Face Hub repository ``repo_id``.

        The repository is created if needed. Returns the URL of the commit.
        """
        from uit_reid.hub import upload_folder

        with tempfile.TemporaryDirectory(prefix="uit_reid_push_") as tmp:
            self.save_pretrained(tmp, card=card)
            return upload_folder(
                tmp, repo_id, revision=revision, private=private, token=token, commit_message=commit_message
            )

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        device: str | torch.device = "cpu",
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | None = None,
    ) -> UITModel:
        """Rebuild a model written by `save_pretrained` (no pickle).

        ``source`` is a local folder, a Hugging Face Hub repository ``org/name`` or
        ``hf-hub:org/name``; ``revision`` (branch, tag or commit) and ``cache_dir`` apply to the hub.
        """
        from uit_reid.hub import resolve_pretrained

        directory = resolve_pretrained(
            source, (CONFIG_NAME, WEIGHTS_NAME), revision=revision, cache_dir=cache_dir, token=token
        )
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        cfg = _read_config(config_path, weights_path)
        try:  # every field checked and the implied size weighed against the weights before building
            enc_cfg, model_cfg = _checked_encoder_config(cfg)
            check_weights_hold(_parameter_estimate(cfg, model_cfg), weights_path, "the model")
            model = cls._from_config(cfg, enc_cfg)
        except KeyError as exc:
            raise ValueError(f"{config_path}: the field {exc.args[0]!r} is missing") from exc
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"{config_path}: {_one_line(exc)}") from exc
        state = load_state_dict_file(weights_path)
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"{weights_path} does not match {config_path}: missing {result.missing_keys[:8]}, "
                f"unexpected {result.unexpected_keys[:8]}"
            )
        logger.info("loaded %s from %s", enc_cfg["name"], directory)
        return model.to(device)

    @classmethod
    def _from_config(cls, cfg: Mapping[str, Any], enc_cfg: Mapping[str, Any]) -> UITModel:
        """A randomly initialised model of the architecture a checked `config` describes."""
        if enc_cfg.get("model_cfg") is not None:
            encoder = CLIPDualEncoder.from_model_config(enc_cfg["model_cfg"], name=enc_cfg["name"])
        else:
            encoder = CLIPDualEncoder.from_open_clip(
                enc_cfg["name"], pretrained=None, image_size=tuple(enc_cfg["image_size"]),
                context_length=enc_cfg["context_length"],
            )
        tir: bool | TIRHead = TIRHead(**cfg["tir"]) if cfg.get("tir") else False
        return cls(
            encoder,
            num_classes=cfg["num_classes"],
            tir_head=tir,
            loss_weights=cfg["loss_weights"],
            logit_scale=cfg["logit_scale"],
            cmt_margin=cfg["cmt_margin"],
            mask_ratio=cfg["mask_ratio"],
            image_mean=cfg["image_mean"],
            image_std=cfg["image_std"],
            tir_grayscale=cfg["tir_grayscale"],
            interpolation=cfg["interpolation"],
            tir_target=cfg.get("tir_target", "pixels"),  # models saved before 0.x restore pixels
        )


def pretrained_tokenizer(
    source: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | None = None,
) -> Callable[..., torch.Tensor]:
    """The tokenizer of a model written by `UITModel.save_pretrained`, read from its ``config.json`` alone.

    ``source`` as in `UITModel.from_pretrained`; the weights are neither read nor downloaded.
    """
    from uit_reid.encoders import get_tokenizer
    from uit_reid.hub import resolve_pretrained

    config_path = resolve_pretrained(source, (CONFIG_NAME,), revision, cache_dir, token) / CONFIG_NAME
    cfg = _read_config(config_path)
    try:
        enc_cfg, _ = _checked_encoder_config(cfg)
    except KeyError as exc:
        raise ValueError(f"{config_path}: the field {exc.args[0]!r} is missing") from exc
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{config_path}: {_one_line(exc)}") from exc
    return get_tokenizer(enc_cfg["name"], enc_cfg["context_length"], enc_cfg.get("model_cfg"))


def _read_config(config_path: Path, weights_path: Path | None = None) -> dict[str, Any]:
    """The JSON object of a `save_pretrained` folder's ``config.json``, with its weights file beside it (if named)."""
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: not a directory written by save_pretrained")
    if weights_path is not None and not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path} not found: {config_path} has no weights beside it")
    if config_path.stat().st_size > _MAX_CONFIG_BYTES:
        raise ValueError(f"{config_path}: {config_path.stat().st_size:,} bytes, more than a model config needs")
    try:
        cfg = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"{config_path}: invalid JSON: {exc}") from exc
    if not isinstance(cfg, dict):
        raise ValueError(f"{config_path}: must hold a JSON object, got {type(cfg).__name__}")
    if cfg.get("format_version") != PRETRAINED_FORMAT_VERSION:
        raise ValueError(f"{config_path}: unsupported format_version {cfg.get('format_version')!r}")
    return cfg


def _preprocessing(
    encoder: CLIPDualEncoder, mean: Sequence[float] | None, std: Sequence[float] | None, interpolation: str | None
) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """Checked (mean, std, interpolation): each as given, else the tower's own (``encoder.preprocess_cfg``)."""
    preprocess = encoder.preprocess_cfg
    image_mean = preprocess["mean"] if mean is None else mean
    image_std = preprocess["std"] if std is None else std
    interpolation = preprocess["interpolation"] if interpolation is None else interpolation
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {list(INTERPOLATIONS)}, got {interpolation!r}")
    for field, values in (("image_mean", image_mean), ("image_std", image_std)):
        if isinstance(values, str) or not isinstance(values, Sequence) or len(values) != 3:
            raise ValueError(f"{field}: must be 3 numbers (R, G, B), got {values!r}")
        for i, v in enumerate(values):
            check_number(v, f"{field}[{i}]", 0, low_open=field == "image_std")
    return tuple(float(m) for m in image_mean), tuple(float(s) for s in image_std), interpolation


_MAX_CONFIG_BYTES = 1 << 20  # ours are ~2 KB


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _checked_encoder_config(cfg: Mapping[str, Any]) -> tuple[Mapping[str, Any], dict[str, Any]]:
    """The ``encoder`` section with every size in range, and the open_clip model config it implies."""
    from uit_reid.encoders import get_model_config

    enc_cfg = cfg["encoder"]
    if not isinstance(enc_cfg, Mapping):
        raise ValueError(f"encoder: must be an object, got {type(enc_cfg).__name__}")
    if not isinstance(enc_cfg.get("name"), str):
        raise ValueError(f"encoder.name: must be a string, got {enc_cfg.get('name')!r}")
    check_image_size(enc_cfg["image_size"], "encoder.image_size")
    check_int(enc_cfg["context_length"], "encoder.context_length", 1, MAX_SIZES["context_length"])
    if enc_cfg.get("model_cfg") is not None:
        check_model_cfg(enc_cfg["model_cfg"], "encoder.model_cfg")
        model_cfg = dict(enc_cfg["model_cfg"])
    else:
        model_cfg = get_model_config(enc_cfg["name"])
        if model_cfg is None:
            raise ValueError(f"encoder.name: unknown open_clip model {enc_cfg['name']!r}")
        model_cfg = {**model_cfg, "vision_cfg": {**model_cfg.get("vision_cfg", {}),
                                                  "image_size": list(enc_cfg["image_size"])}}
    tir = cfg.get("tir")
    if tir:
        if not isinstance(tir, Mapping):
            raise ValueError(f"tir: must be an object or null, got {type(tir).__name__}")
        for key in ("embed_dim", "text_dim", "width"):
            if tir.get(key) is not None:
                check_int(tir[key], f"tir.{key}", 1, MAX_SIZES["width"])
        for key in ("depth", "heads", "cross_heads"):
            if tir.get(key) is not None:
                check_int(tir[key], f"tir.{key}", 1, MAX_SIZES["layers"])
        if "mlp_ratio" in tir:
            check_number(tir["mlp_ratio"], "tir.mlp_ratio", 0, MAX_SIZES["mlp_ratio"], low_open=True)
        for key in ("grid_size", "patch_size"):
            check_image_size(tir.get(key), f"tir.{key}")
    return enc_cfg, model_cfg


def _parameter_estimate(cfg: Mapping[str, Any], model_cfg: Mapping[str, Any]) -> int:
    """Parameters the config declares: the CLIP, the classifier and the TIR head (from checked fields)."""
    count = clip_parameter_count(model_cfg)
    num_classes = cfg.get("num_classes")
    if isinstance(num_classes, int) and 0 < num_classes <= MAX_SIZES["num_classes"]:
        count += num_classes * (int(model_cfg.get("embed_dim", 512)) + 1)
    tir = cfg.get("tir")
    if tir:
        width, depth = int(tir.get("width", 512)), int(tir.get("depth", 4))
        patch = tir.get("patch_size", [16, 16])
        count += (depth + 1) * 12 * width * width + width * int(patch[0]) * int(patch[1]) * 3
    return count

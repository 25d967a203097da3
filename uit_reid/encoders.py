"""CLIP dual encoder over open_clip with token outputs, masked-image forward and person-shaped inputs.

`CLIPDualEncoder` wraps an open_clip ``CLIP`` model (ViT image tower, built-in text tower)
and exposes what text-based person retrieval needs beyond open_clip's own API:

* per-token features projected to the joint space (TIR cross-attends to the caption's tokens);
* a forward over a random subset of patch tokens (MAE-style) for text-guided image restoration;
* non-square inputs (384x128 by default) with the position grid resized when a checkpoint made for
  another grid (e.g. 224x224) is loaded;
* local checkpoints loaded without pickle, with errors that name the file and the mismatched keys.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from open_clip.factory import parse_model_name
from open_clip.model import resize_text_pos_embed
from open_clip.transform import PreprocessCfg, merge_preprocess_dict
from open_clip.transformer import VisionTransformer, text_global_pool
from timm.layers import resample_abs_pos_embed
from torch import nn

from uit_reid import recipe
from uit_reid._bounds import check_torch_zip
from uit_reid.pretrained import SHIPPED, shipped_tags, shipped_weights
from uit_reid.tir import random_masking

__all__ = [
    "CLIPDualEncoder",
    "MaskedImageOutput",
    "get_model_config",
    "get_tokenizer",
    "list_models",
    "load_state_dict_file",
    "resize_position_embedding",
    "resolve_activation",
]

logger = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
"""uit_reid's own architectures (``uit-tiny``), read here rather than registered with open_clip."""

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


@dataclass
class MaskedImageOutput:
    """Result of `CLIPDualEncoder.encode_masked_image`.

    Attributes:
        tokens: ``(B, 1 + n_keep, D)`` projected features of the CLS token and the visible patches.
        ids_restore: ``(B, N)`` index that puts ``[visible, dropped]`` back into patch order.
        mask: ``(B, N)`` bool, True where a patch was dropped (the patches TIR must restore).
    """

    tokens: torch.Tensor
    ids_restore: torch.Tensor
    mask: torch.Tensor


@functools.cache
def _own_model_configs() -> dict[str, dict[str, Any]]:
    """The architectures of `MODEL_CONFIG_DIR` by name, read once; open_clip's registry stays untouched."""
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(MODEL_CONFIG_DIR.glob("*.json"))}


def get_model_config(name: str) -> dict[str, Any] | None:
    """A copy of the model config of a uit_reid architecture (``uit-tiny``) or an open_clip one; ``None`` if unknown."""
    own = _own_model_configs().get(name)
    return copy.deepcopy(own) if own is not None else open_clip.get_model_config(name)


def list_models() -> list[str]:
    """Architecture names `CLIPDualEncoder.from_open_clip` accepts: uit_reid's own and open_clip's."""
    return sorted({*_own_model_configs(), *open_clip.list_models()})


def _source_grid(num_patches: int, new_grid: tuple[int, int]) -> tuple[int, int]:
    """The (rows, columns) grid of a ``num_patches`` position table whose grid nobody recorded.

    Square when the count is a square (OpenAI's and open_clip's weights), else the grid with the
    target's aspect ratio (a person-crop model at another resolution, e.g. 24x8 for 12x4).
    """
    side = int(round(num_patches**0.5))
    if side * side == num_patches:
        return side, side
    rows = int(round((num_patches * new_grid[0] / new_grid[1]) ** 0.5))
    if rows > 0 and num_patches % rows == 0 and rows * new_grid[1] == (num_patches // rows) * new_grid[0]:
        return rows, num_patches // rows
    raise ValueError(
        f"cannot infer the grid of a {num_patches}-token position embedding (neither square nor shaped like "
        f"the {new_grid[0]}x{new_grid[1]} target); pass old_grid"
    )


def resize_position_embedding(
    pos_embed: torch.Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int] | None = None
) -> torch.Tensor:
    """Resize a ``(1 + H*W, C)`` ViT position embedding (CLS first) to ``new_grid`` with timm's resampler.

    timm's ``resample_abs_pos_embed`` (bicubic, antialiased) takes the source grid explicitly, so a
    non-square source resizes too; ``old_grid`` defaults to `_source_grid`'s reading of the count.
    """
    if old_grid is None:
        old_grid = _source_grid(pos_embed.shape[0] - 1, new_grid)
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    if old_grid[0] * old_grid[1] != pos_embed.shape[0] - 1:
        raise ValueError(f"a {pos_embed.shape[0] - 1}-token position embedding has no {old_grid[0]}x{old_grid[1]} grid")
    out = resample_abs_pos_embed(pos_embed.unsqueeze(0), new_size=list(new_grid), old_size=list(old_grid))
    return out[0]


def resize_text_positions(state: dict[str, torch.Tensor], clip: nn.Module) -> None:
    """Fit ``state["positional_embedding"]`` to ``clip``'s context length, in place.

    A shorter context keeps the first rows: under the causal mask they are exactly the positions the
    caption's tokens were trained at (the demo reads the 77-token shipped weights at 52). A longer
    one goes through open_clip's ``resize_text_pos_embed`` (linear), as open_clip does for its tags.
    """
    old, own = state.get("positional_embedding"), getattr(clip, "positional_embedding", None)
    if old is None or own is None or old.shape[1:] != own.shape[1:] or old.shape[0] == own.shape[0]:
        return
    if old.shape[0] > own.shape[0]:
        logger.info("kept the first %d of %d text positions", own.shape[0], old.shape[0])
        state["positional_embedding"] = old[: own.shape[0]]
    else:
        resize_text_pos_embed(state, clip)
        logger.info("resized the text positions from %d to %d", old.shape[0], own.shape[0])


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file without pickle: safetensors, or ``torch.load(weights_only=True)``.

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` containers and a DDP ``module.`` prefix.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    check_torch_zip(path)  # before torch inflates anything
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated files, pickles with code, foreign formats
        raise ValueError(f"could not read checkpoint {path}: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"checkpoint {path} does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _looks_like_path(pretrained: str) -> bool:
    return (
        os.sep in pretrained
        or pretrained.startswith(".")
        or pretrained.endswith(_CHECKPOINT_SUFFIXES)
        or Path(pretrained).exists()
    )


def _clip_from_config(model_cfg: dict[str, Any], name: str) -> open_clip.CLIP:
    """A randomly initialised open_clip ``CLIP`` from a full model config (not modified).

    ``open_clip.create_model`` logs an "initialized randomly" warning whenever it loads no weights
    (through the root logger in open_clip 3.3, through its module logger on its main branch); building
    ``open_clip.CLIP`` from the config gives the same module, draws the same random numbers, and never
    reaches that warning, so nothing needs filtering. Refuses towers `CLIPDualEncoder` cannot drive.
    """
    cfg = copy.deepcopy(dict(model_cfg))
    vision_cfg, text_cfg = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if cfg.pop("custom_text", False) or "hf_model_name" in text_cfg or "timm_model_name" in vision_cfg:
        raise TypeError(f"{name}: CLIPDualEncoder needs a ViT image tower and the built-in text tower")
    preprocess = cfg.pop("preprocess_cfg", None) or {}
    clip = open_clip.CLIP(**cfg)
    if preprocess:  # as create_model does for a hub config's preprocess_cfg
        open_clip.set_model_preprocess_cfg(clip, merge_preprocess_dict(PreprocessCfg(), preprocess))
    return clip


def _tokenizer_from_config(model_cfg: dict[str, Any], context_length: int | None = None) -> Any:
    """The tokenizer a model config's ``text_cfg`` names (open_clip's BPE unless ``hf_tokenizer_name``)."""
    text_cfg = model_cfg.get("text_cfg", {})
    context_length = int(context_length or text_cfg.get("context_length", recipe.CONTEXT_LENGTH))
    kwargs = dict(text_cfg.get("tokenizer_kwargs", {}))
    if text_cfg.get("hf_tokenizer_name"):
        return open_clip.tokenizer.HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=context_length, **kwargs)
    return open_clip.SimpleTokenizer(context_length=context_length, **kwargs)


def get_tokenizer(name: str, context_length: int | None = None, model_cfg: dict[str, Any] | None = None) -> Any:
    """The tokenizer of an architecture `from_open_clip` accepts (uit_reid's own without open_clip's registry).

    ``model_cfg``: the full config of a tower that no registry names (a hub tower, a converted
    model: `from_model_config`), whose ``text_cfg`` then decides; ``name`` is only its label.
    """
    if model_cfg is not None:
        return _tokenizer_from_config(model_cfg, context_length)
    own = _own_model_configs().get(name)
    if own is not None:
        return _tokenizer_from_config(own, context_length)
    return open_clip.get_tokenizer(name, context_length=context_length)


def _pretrained_source(
    name: str, pretrained: str | os.PathLike | None
) -> tuple[str | None, Path | None, tuple[int, int] | None]:
    """``pretrained`` read as (open_clip tag, weights file, the file's recorded grid); all ``None`` for random init."""
    if pretrained is None:
        return None, None, None
    pretrained = os.fspath(pretrained)
    if _looks_like_path(pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrained checkpoint not found: {path}")
        return None, path, None
    if shipped_tags(name) or name in _own_model_configs():  # weights inside the package
        if pretrained not in shipped_tags(name):
            raise ValueError(f"unknown pretrained tag {pretrained!r} for {name}; shipped tags: {shipped_tags(name)}")
        return None, shipped_weights(name, pretrained), SHIPPED[(name, pretrained)].grid
    return pretrained, None, None


def _schema_model_config(
    name: str, image_size: tuple[int, int], context_length: int, quick_gelu: bool | None
) -> dict[str, Any]:
    """The config of an ``hf-hub:`` / ``local-dir:`` tower at our sizes, kept so a saved model rebuilds offline."""
    model_cfg = open_clip.get_model_config(name)
    model_cfg["vision_cfg"]["image_size"] = list(image_size)
    model_cfg["text_cfg"]["context_length"] = context_length
    if quick_gelu is not None and bool(model_cfg.get("quick_gelu", False)) != quick_gelu:
        if not quick_gelu:
            raise ValueError(f"{name}: its config uses QuickGELU; quick_gelu=False cannot change it")
        model_cfg["quick_gelu"] = True
    return model_cfg


def resolve_activation(name: str, tag: str | None = None, quick_gelu: bool | None = None) -> str:
    """The open_clip model name whose activation fits the weights, so the name always tells it.

    OpenAI's CLIP weights (and every IRRA/SEN checkpoint built on them) were trained with QuickGELU;
    open_clip's ``ViT-B-16`` uses ``nn.GELU`` and ``ViT-B-16-quickgelu`` QuickGELU (open_clip only
    warns on a mismatch). ``quick_gelu=None`` follows the pretrained tag's record (the
    architecture's own activation without a tag); ``True``/``False`` choose. The result is ``name``
    or its ``-quickgelu`` sibling; a choice no registered model offers is an error.
    """
    has = bool((get_model_config(name) or {}).get("quick_gelu", False))
    if quick_gelu is None and tag is not None:
        from open_clip.pretrained import get_pretrained_cfg

        quick_gelu = bool(get_pretrained_cfg(name, tag).get("quick_gelu", has))
    if quick_gelu is None or quick_gelu == has:
        return name
    other = f"{name}-quickgelu" if quick_gelu else name.removesuffix("-quickgelu")
    if other == name or other not in list_models():
        act = "QuickGELU" if quick_gelu else "GELU"
        raise ValueError(f"no {act} variant of open_clip model {name!r} is registered (quick_gelu={quick_gelu})")
    logger.info(
        "%s: using %r (%s)%s", name, other, "QuickGELU" if quick_gelu else "GELU",
        f", the activation the {tag!r} weights were trained with" if tag else "",
    )
    return other


def _normalized(features: torch.Tensor) -> torch.Tensor:
    """Features L2-normalised along the last axis, in float32 (the ``normalize=True`` of every encode call)."""
    return F.normalize(features.float(), dim=-1)


def _describe_keys(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


class CLIPDualEncoder(nn.Module):
    """Image and text towers of an open_clip CLIP model with token-level outputs.

    Build it with `from_open_clip`. Features are returned unnormalised; losses and the
    index normalise where they need to. ``logit_scale`` of the wrapped model is frozen: UIT uses a
    fixed temperature, and a trainable parameter that no loss uses breaks DDP.
    """

    def __init__(
        self, clip: nn.Module, tokenizer: Any, model_name: str = "custom", model_cfg: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        visual = getattr(clip, "visual", None)
        if not isinstance(visual, VisionTransformer) or not hasattr(clip, "token_embedding"):
            raise TypeError(
                f"{model_name}: CLIPDualEncoder needs an open_clip CLIP with a ViT image tower and the "
                "built-in text tower (got a different architecture)"
            )
        if visual.attn_pool is not None or visual.pool_type != "tok" or visual.final_ln_after_pool:
            raise TypeError(f"{model_name}: only CLS-token pooled ViTs are supported")
        self.clip = clip
        self.tokenizer = tokenizer
        self.model_name = model_name
        # The full open_clip config, kept when the architecture is not a built-in name (hub models,
        # converted checkpoints) so that a saved model rebuilds without the network.
        self.model_cfg = copy.deepcopy(model_cfg) if model_cfg is not None else None
        for name in ("logit_scale", "logit_bias"):
            param = getattr(clip, name, None)
            if isinstance(param, nn.Parameter):
                param.requires_grad_(False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_open_clip(
        cls,
        name: str = "ViT-B-16",
        pretrained: str | os.PathLike | None = None,
        image_size: tuple[int, int] = recipe.IMAGE_SIZE,
        context_length: int = recipe.CONTEXT_LENGTH,
        device: str | torch.device = "cpu",
        quick_gelu: bool | None = None,
    ) -> CLIPDualEncoder:
        """Create an encoder from an open_clip architecture name.

        Args:
            name: an open_clip model name (``"ViT-B-16"``), ``"uit-tiny"`` (tests, demo), or a name
                with an open_clip schema: ``"hf-hub:org/repo"`` (config and weights from the Hugging
                Face Hub) or ``"local-dir:/path"`` (a folder with ``open_clip_config.json``). OpenAI
                weights and IRRA/SEN checkpoints need QuickGELU: ``"ViT-B-16-quickgelu"``.
            pretrained: ``None`` (random init), an open_clip tag such as ``"openai"`` (downloads from
                the hub), a tag of weights shipped in the package (``"uit-tiny"`` with
                ``"synthetic"``, see `uit_reid.pretrained`: offline, checksum-verified), or a local
                checkpoint file (``.pt``/``.pth``/``.bin``/``.safetensors``).
                Must be ``None`` with a schema name, which brings its own weights.
            image_size: input (height, width); the position grid is resized to match.
            context_length: text length in tokens.
            quick_gelu: activation choice, see `resolve_activation`. ``None`` follows a pretrained
                tag's record (``"openai"`` → QuickGELU, so ``"ViT-B-16"`` becomes
                ``"ViT-B-16-quickgelu"``); a local file carries no record, so pass ``True`` or a
                ``-quickgelu`` name for OpenAI/IRRA/SEN files. ``model_name`` shows the result.
        """
        image_size = (int(image_size[0]), int(image_size[1]))
        schema, _ = parse_model_name(name)
        if schema is not None and pretrained is not None:
            raise ValueError(f"{name}: a {schema}: name brings its own weights; leave pretrained=None")
        if schema is None and get_model_config(name) is None:
            raise ValueError(f"unknown open_clip model {name!r}; see uit_reid.encoders.list_models()")
        tag, path, grid = _pretrained_source(name, pretrained)
        model_cfg = None
        if schema is None:
            name = resolve_activation(name, tag, quick_gelu)
        else:  # remember the downloaded config: a saved model must rebuild offline
            model_cfg = _schema_model_config(name, image_size, context_length, quick_gelu)
        if schema is None and tag is None:  # random init (a local file is loaded below)
            cfg = get_model_config(name)  # with create_model's overrides, as it would build it
            cfg["vision_cfg"]["image_size"] = image_size
            cfg["text_cfg"]["context_length"] = context_length
            clip = _clip_from_config(cfg, name)
        else:  # a pretrained tag or an hf-hub: name loads weights, so open_clip has nothing to warn about
            clip = open_clip.create_model(
                name,
                pretrained=tag,
                force_quick_gelu=bool(model_cfg and model_cfg.get("quick_gelu")),
                force_image_size=image_size,
                force_context_length=context_length,
                device="cpu",
            )
        encoder = cls(clip, get_tokenizer(name, context_length=context_length), model_name=name, model_cfg=model_cfg)
        if path is not None:
            encoder.load_clip_weights(path, grid=grid)
        return encoder.to(device)

    @classmethod
    def from_model_config(
        cls, model_cfg: dict[str, Any], name: str = "custom", device: str | torch.device = "cpu"
    ) -> CLIPDualEncoder:
        """Create a randomly initialised encoder from a full open_clip model config.

        ``model_cfg`` has open_clip's keys (``embed_dim``, ``vision_cfg``, ``text_cfg``, optionally
        ``quick_gelu``); it is how converted checkpoints and hub models are rebuilt offline. ``name``
        is recorded as the architecture's label.
        """
        clip = _clip_from_config(model_cfg, name)
        return cls(clip, get_tokenizer(name, model_cfg=model_cfg), model_name=name, model_cfg=model_cfg).to(device)

    def load_clip_weights(self, path: str | os.PathLike, grid: tuple[int, int] | None = None) -> None:
        """Load open_clip CLIP weights from ``path``, resizing the position tables if needed.

        ``grid`` is the checkpoint's (rows, columns) patch grid (see `load_clip_state`).
        """
        state = load_state_dict_file(path)
        if any(k.startswith("clip.") for k in state):  # saved from this wrapper
            state = {k[len("clip.") :]: v for k, v in state.items() if k.startswith("clip.")}
        self.load_clip_state(state, f"checkpoint {path}", grid=grid)
        logger.info("loaded CLIP weights from %s", path)

    def load_clip_state(self, state: dict[str, torch.Tensor], source: str, grid: tuple[int, int] | None = None) -> None:
        """Load a CLIP state dict (open_clip / OpenAI names) from ``source``, fitting its position tables.

        The image grid is resampled (`resize_position_embedding`; ``grid`` is the source's (rows,
        columns), read from the token count by default), the text positions fitted to the context
        length (`resize_text_positions`). Raises ``ValueError`` naming ``source`` and the missing,
        unexpected or mis-shaped keys when the weights belong to another architecture.
        """
        state = dict(state)
        key = "visual.positional_embedding"
        own = self.clip.state_dict()
        if key in state and key in own and state[key].shape != own[key].shape:
            try:
                state[key] = resize_position_embedding(state[key], self.grid_size, grid)
            except ValueError as exc:
                raise ValueError(f"{source}: {exc}") from exc
            logger.info("resized %s to grid %s", key, self.grid_size)
        resize_text_positions(state, self.clip)
        # logit_scale is stored as a scalar in some checkpoints and a 1-element tensor in others.
        for name in ("logit_scale", "logit_bias"):
            if name in state and name in own and state[name].shape != own[name].shape:
                state[name] = state[name].reshape(own[name].shape)
        missing = sorted(k for k in own if k not in state and k != "attn_mask")
        unexpected = sorted(k for k in state if k not in own)
        mismatched = sorted(
            f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
            for k in own
            if k in state and state[k].shape != own[k].shape
        )
        if missing or unexpected or mismatched:
            parts = []
            if mismatched:
                parts.append(f"shape mismatch: {_describe_keys(mismatched)}")
            if missing:
                parts.append(f"missing: {_describe_keys(missing)}")
            if unexpected:
                parts.append(f"unexpected: {_describe_keys(unexpected)}")
            raise ValueError(f"{source} does not match architecture {self.model_name}: " + "; ".join(parts))
        self.clip.load_state_dict(state, strict=False)

    # ------------------------------------------------------------------ properties
    @property
    def embed_dim(self) -> int:
        """Dimension of the joint image-text space."""
        return int(self.clip.visual.output_dim)

    @property
    def image_size(self) -> tuple[int, int]:
        """Input (height, width) in pixels."""
        size = self.clip.visual.image_size
        return (int(size[0]), int(size[1])) if isinstance(size, tuple | list) else (int(size), int(size))

    @property
    def patch_size(self) -> tuple[int, int]:
        """Patch (height, width) in pixels."""
        size = self.clip.visual.patch_size
        return (int(size[0]), int(size[1])) if isinstance(size, tuple | list) else (int(size), int(size))

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid (rows, columns), e.g. (24, 8) for 384x128 at patch 16."""
        grid = self.clip.visual.grid_size
        return int(grid[0]), int(grid[1])

    @property
    def quick_gelu(self) -> bool:
        """True when every transformer MLP of both towers uses QuickGELU (``x * sigmoid(1.702 x)``)."""
        acts = [m for m in self.clip.modules() if type(m).__name__ in ("QuickGELU", "GELU")]
        return bool(acts) and all(type(m).__name__ == "QuickGELU" for m in acts)

    @property
    def preprocess_cfg(self) -> dict[str, Any]:
        """The tower's image preprocessing (open_clip's ``PreprocessCfg`` keys: mean, std, interpolation, ...).

        What open_clip set from a tag's or a hub config's ``preprocess_cfg``; CLIP's statistics and
        bicubic resizing for a tower that brings none (uit_reid's own, random init, local files).
        """
        return merge_preprocess_dict(PreprocessCfg(), open_clip.get_model_preprocess_cfg(self.clip))

    @property
    def context_length(self) -> int:
        """Caption length in tokens."""
        return int(self.clip.context_length)

    @property
    def text_width(self) -> int:
        """Width of the text transformer (before projection)."""
        return int(self.clip.transformer.width)

    def fingerprint(self) -> str:
        """A short hash of the architecture, input size and weights; stored with gallery indexes."""
        digest = hashlib.sha256(f"{self.model_name}|{self.image_size}|{self.context_length}".encode())
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        return f"{self.model_name}-{digest.hexdigest()[:16]}"

    # ------------------------------------------------------------------ text
    def tokenize(self, texts: str | list[str]) -> torch.Tensor:
        """Token ids ``(B, context_length)`` for a caption or a list of captions."""
        if isinstance(texts, str):
            texts = [texts]
        return self.tokenizer(list(texts))

    @staticmethod
    def text_padding_mask(ids: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` bool, True at positions after the EOT token (padding that carries no text)."""
        eot = ids.argmax(dim=-1, keepdim=True)
        return torch.arange(ids.shape[1], device=ids.device).unsqueeze(0) > eot

    def trim_padding(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids`` without the columns after the batch's last EOT token, when that cannot change the features.

        With a causal text mask and EOT (argmax) pooling, no position attends to a later one, so the
        padding after every caption's EOT never reaches the pooled feature: dropping it gives the
        same features for a fraction of the work (a query is ~15 tokens of the 77). Other text
        towers get ``ids`` back unchanged.
        """
        if self.clip.attn_mask is None or self.clip.text_pool_type != "argmax" or ids.numel() == 0:
            return ids
        return ids[:, : int(ids.argmax(dim=-1).max()) + 1]

    def encode_text(
        self, ids: torch.Tensor, normalize: bool = False, return_tokens: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Pooled caption features ``(B, D)`` (EOT token, projected); with tokens ``(B, L, D)``.

        ``ids`` may be shorter than the context length (see `trim_padding`). ``normalize``: the
        pooled features L2-normalised, as float32 (open_clip's keyword; tokens are never normalised).
        """
        clip = self.clip
        length = ids.shape[1]
        x = clip.token_embedding(ids)
        x = x + clip.positional_embedding[:length].to(x.dtype)
        mask = clip.attn_mask[:length, :length] if clip.attn_mask is not None else None
        x = clip.transformer(x, attn_mask=mask)
        x = clip.ln_final(x)
        eos_id = getattr(clip, "text_eos_id", None)
        if not return_tokens:  # the projection is per token: pool first, project one token per caption
            pooled = self._project_text(text_global_pool(x, ids, clip.text_pool_type, eos_token_id=eos_id))
            return _normalized(pooled) if normalize else pooled
        tokens = self._project_text(x)
        pooled = text_global_pool(tokens, ids, clip.text_pool_type, eos_token_id=eos_id)
        return (_normalized(pooled) if normalize else pooled), tokens

    def _project_text(self, x: torch.Tensor) -> torch.Tensor:
        proj = self.clip.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    # ------------------------------------------------------------------ images
    def _patch_embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch embeddings plus position embeddings, CLS first: ``(B, 1 + N, width)``."""
        visual = self.clip.visual
        if tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(f"images must be {self.image_size} (height, width), got {tuple(images.shape[-2:])}")
        x = visual.conv1(images)
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        return x + visual.positional_embedding.to(x.dtype)

    def _encode_embedded(self, x: torch.Tensor) -> torch.Tensor:
        visual = self.clip.visual
        x = visual.patch_dropout(x)
        x = visual.ln_pre(x)
        x = visual.transformer(x)
        x = visual.ln_post(x)
        return x @ visual.proj if visual.proj is not None else x

    def encode_image(
        self, images: torch.Tensor, normalize: bool = False, return_tokens: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Pooled image features ``(B, D)`` (CLS token, projected); with tokens ``(B, 1 + N, D)``.

        The token output includes the CLS token at index 0 followed by the patches in grid order.
        ``normalize``: the pooled features L2-normalised, as float32 (open_clip's keyword).
        """
        tokens = self._encode_embedded(self._patch_embed(images))
        pooled = _normalized(tokens[:, 0]) if normalize else tokens[:, 0]
        return (pooled, tokens) if return_tokens else pooled

    def encode_masked_image(
        self, images: torch.Tensor, mask_ratio: float = 0.7, generator: torch.Generator | None = None
    ) -> MaskedImageOutput:
        """Encode only a random subset of patches (CLS always kept), as TIR's restoration input.

        Patch tokens are dropped after the position embedding, so the kept tokens keep their
        positions; only the visible ones go through the transformer.
        """
        x = self._patch_embed(images)
        cls, patches = x[:, :1], x[:, 1:]
        ids_keep, ids_restore, mask = random_masking(
            patches.shape[0], patches.shape[1], mask_ratio, patches.device, generator
        )
        visible = torch.gather(patches, 1, ids_keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        tokens = self._encode_embedded(torch.cat([cls, visible], dim=1))
        return MaskedImageOutput(tokens=tokens, ids_restore=ids_restore, mask=mask)

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled image and text features (for ``torch.compile`` and DDP wrappers)."""
        return self.encode_image(images), self.encode_text(ids)

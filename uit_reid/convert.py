"""Convert checkpoints of other text-to-person projects (and plain CLIP weights) into a `UITModel`.

Layouts read (all without unpickling code: ``torch.load(weights_only=True)`` or safetensors):

* ``irra``: IRRA's ``{"model": state_dict, ...}``: the CLIP weights under ``base_model.`` in
  OpenAI CLIP naming, an optional ID ``classifier``, and the MLM heads (not converted: uit_reid
  has no MLM objective). RDE and other follow-ups that keep IRRA's naming read the same way.
* ``sen``: the same plus SEN's text-guided restoration decoder (``decoder_embed``,
  ``cross_attn_Text``, ``cross_modal_transformer_mae``, ...), converted to a SEN-layout `TIRHead`.
* ``openai``: a plain CLIP state dict in OpenAI naming (``visual.conv1.weight``, ...).
* ``open_clip``: a checkpoint for a named open_clip architecture (``model_name`` required).

The architecture (patch size, widths, layers, joint dimension, context length, vocabulary) is
read from the tensors' shapes. The patch grid is not: the position embedding only gives the number
of patches. It comes from ``image_size`` or from the ``configs.yaml`` that IRRA and SEN write
beside their checkpoints (``img_size``, ``stride_size``); OpenAI weights use their square grid.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from uit_reid import recipe
from uit_reid._bounds import (
    check_image_size,
    check_int,
    check_model_cfg,
    check_weights_hold,
    clip_parameter_count,
)
from uit_reid.encoders import CLIPDualEncoder, load_state_dict_file
from uit_reid.io import file_sha256
from uit_reid.model import UITModel
from uit_reid.model_card import ModelCardInfo, markdown_text
from uit_reid.tir import SEN_TIR_KEY_MAP, SEN_TIR_UNUSED_PREFIXES, TIRHead, sincos_2d_position_embedding

__all__ = ["LAYOUTS", "clip_config_from_state_dict", "convert_model", "detect_layout"]

logger = logging.getLogger(__name__)

LAYOUTS = ("irra", "sen", "openai", "open_clip")
"""Checkpoint layouts `convert_model` reads (``format=`` values besides ``"auto"``)."""

_BASE = "base_model."
_CLIP = "encoder.clip."  # the CLIP weights' place in a UITModel state dict
_HEAD_WIDTH = 64  # OpenAI CLIP (and IRRA/SEN, which build from it) use heads = width // 64

# Top-level module names of the heads in the IRRA / SEN model classes.
_IRRA_MLM = ("cross_attn", "cross_modal_transformer", "ln_pre_t", "ln_pre_i", "ln_post", "mlm_head")
_SEN_MLM = ("cross_attn_mlm", "cross_modal_transformer_mlm", "ln_pre_t", "ln_pre_i", "ln_post", "mlm_head")
_SEN_DECODER = (*(prefix.rstrip(".") for prefix in SEN_TIR_KEY_MAP), "decoder_pos_embed")
# Built by SEN's constructor but never called in its forward pass.
_SEN_UNUSED = tuple(p.rstrip(".") for p in SEN_TIR_UNUSED_PREFIXES if p.rstrip(".") not in _SEN_DECODER)
# SEN's optional image-text fusion score head ('fuse' loss); the two norms belong to a fusion path it never calls.
_SEN_FUSE = ("fuse_head", "norm_image", "norm_text")
_SEN_MARKERS = ("decoder_embed", "cross_attn_Text", "cross_modal_transformer_mae", "decoder_pred")
# Entries some plain CLIP state dicts carry besides weights.
_CLIP_META = ("input_resolution", "context_length", "vocab_size")

_LAYOUT_HELP = (
    "irra (IRRA/RDE: base_model.visual.conv1.weight, ...), sen (irra + decoder_embed, cross_attn_Text, "
    "cross_modal_transformer_mae, ...), openai (visual.conv1.weight, token_embedding.weight, ...), "
    "open_clip (pass the architecture name)"
)


def _roots(keys: Iterable[str]) -> set[str]:
    return {k.split(".", 1)[0] for k in keys}


def detect_layout(keys: Iterable[str]) -> str | None:
    """The layout a checkpoint's keys follow (``"irra"``, ``"sen"``, ``"openai"``) or ``None``.

    ``open_clip`` checkpoints of CLIP ViTs share OpenAI's names and are read as ``openai``
    unless the layout is given.
    """
    keys = list(keys)
    if f"{_BASE}visual.conv1.weight" in keys and f"{_BASE}token_embedding.weight" in keys:
        return "sen" if _roots(keys) & set(_SEN_MARKERS) else "irra"
    if "visual.conv1.weight" in keys and "token_embedding.weight" in keys and "visual.proj" in keys:
        return "openai"
    return None


def _count_blocks(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    if indices != set(range(len(indices))):
        raise ValueError(f"{prefix}N blocks are not numbered 0..{len(indices) - 1}: {sorted(indices)}")
    return len(indices)


def _heads(width: int, what: str) -> int:
    if width % _HEAD_WIDTH:
        raise ValueError(f"{what} width {width} is not a multiple of {_HEAD_WIDTH} (OpenAI CLIP heads are 64 wide)")
    return width // _HEAD_WIDTH


def _patch_grid(image_size: Sequence[int], patch: int, stride: int) -> tuple[int, int]:
    return (int(image_size[0]) - patch) // stride + 1, (int(image_size[1]) - patch) // stride + 1


def _grid_candidates(num_patches: int, patch: int, limit: int = 6) -> str:
    pairs = [(h, num_patches // h) for h in range(num_patches, 0, -1) if num_patches % h == 0 and h >= num_patches // h]
    shown = ", ".join(f"{h * patch}x{w * patch}" for h, w in pairs[:limit])
    return shown + (", ..." if len(pairs) > limit else "")


def read_irra_configs(path: Path) -> dict[str, Any]:
    """``img_size`` and ``stride_size`` from an IRRA/SEN ``configs.yaml`` (read safely).

    Those files are ``yaml.dump(vars(args))``: tuples carry a ``!!python/tuple`` tag, read here as
    lists; no other Python object is constructed.
    """
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_constructor("tag:yaml.org,2002:python/tuple", lambda loader, node: loader.construct_sequence(node))
    if path.stat().st_size > _MAX_CONFIGS_BYTES:
        raise ValueError(f"{path}: {path.stat().st_size:,} bytes, more than an IRRA/SEN configs.yaml holds")
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - safe loader subclass
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"{path}: not readable as YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict) or "img_size" not in data:
        raise ValueError(f"{path}: no img_size entry (expected IRRA/SEN's configs.yaml)")
    try:
        out: dict[str, Any] = {"image_size": check_image_size(data["img_size"], "img_size"), "text": text}
        if "stride_size" in data:
            out["stride"] = check_int(data["stride_size"], "stride_size", 1, 1024)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if isinstance(data.get("dataset_name"), str):
        out["dataset"] = data["dataset_name"]
    return out


_MAX_CONFIGS_BYTES = 1 << 20  # IRRA's are ~2 KB


def _image_geometry(
    state: Mapping[str, torch.Tensor],
    image_size: Sequence[int] | None,
    stride: int | None,
    allow_resize: bool,
    source: str,
) -> tuple[int, int, int]:
    """(height, width, patch) of the image tower: the patch from the weights, the size as given or implied."""
    conv = state["visual.conv1.weight"]
    if conv.ndim != 4 or conv.shape[1] != 3 or conv.shape[2] != conv.shape[3]:
        raise ValueError(f"{source}: visual.conv1.weight {tuple(conv.shape)} is not a square 3-channel patch embedding")
    patch = int(conv.shape[2])
    stride = patch if stride is None else int(stride)
    if stride != patch:
        raise ValueError(
            f"{source}: patch embedding stride {stride} differs from patch size {patch} (overlapping patches); "
            "uit_reid's ViT supports stride == patch size only"
        )
    num_patches = int(state["visual.positional_embedding"].shape[0]) - 1
    if image_size is None:
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise ValueError(
                f"{source}: the position embedding has {num_patches} patch positions, which fits several image "
                f"sizes at patch {patch} ({_grid_candidates(num_patches, patch)}); pass image_size "
                "(--image-size H W) or keep the configs.yaml written with the checkpoint beside it"
            )
        image_size = (side * patch, side * patch)
    height, width = int(image_size[0]), int(image_size[1])
    if height % patch or width % patch:
        raise ValueError(f"{source}: image size {height}x{width} is not a multiple of the patch size {patch}")
    grid = _patch_grid((height, width), patch, stride)
    if grid[0] * grid[1] != num_patches and not allow_resize:
        raise ValueError(
            f"{source}: image size {height}x{width} at patch {patch} gives a {grid[0]}x{grid[1]} grid "
            f"({grid[0] * grid[1]} patches) but the checkpoint has {num_patches} patch positions"
        )
    return height, width, patch


def clip_config_from_state_dict(
    state: Mapping[str, torch.Tensor],
    image_size: Sequence[int] | None = None,
    stride: int | None = None,
    quick_gelu: bool = True,
    allow_resize: bool = False,
    source: str = "checkpoint",
) -> dict[str, Any]:
    """An open_clip model config for CLIP weights in OpenAI naming, read from the tensors' shapes.

    Args:
        state: the CLIP weights (``visual.conv1.weight``, ``token_embedding.weight``, ...).
        image_size: input (height, width). Without it the grid must be square (OpenAI's weights).
        stride: the patch embedding's stride (IRRA's ``stride_size``); only ``stride == patch`` is supported.
        quick_gelu: the activation the weights were trained with (OpenAI, IRRA, SEN: QuickGELU).
        allow_resize: accept an ``image_size`` whose grid differs from the checkpoint's (the
            position grid is then resized; for plain CLIP weights, not for trained re-id models).
        source: named in error messages.
    """
    height, width, patch = _image_geometry(state, image_size, stride, allow_resize, source)
    vision_width = int(state["visual.conv1.weight"].shape[0])
    text_width = int(state["ln_final.weight"].shape[0])
    embed_dim = int(state["visual.proj"].shape[1])
    if int(state["text_projection"].shape[1]) != embed_dim:
        raise ValueError(
            f"{source}: visual.proj {tuple(state['visual.proj'].shape)} and text_projection "
            f"{tuple(state['text_projection'].shape)} disagree on the joint dimension"
        )
    vision_mlp = int(state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0])
    text_mlp = int(state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0])
    return {
        "embed_dim": embed_dim,
        "quick_gelu": bool(quick_gelu),
        "vision_cfg": {
            "image_size": [height, width],
            "layers": _count_blocks(state, "visual.transformer.resblocks."),
            "width": vision_width,
            "head_width": vision_width // _heads(vision_width, "image tower"),
            "mlp_ratio": vision_mlp / vision_width,
            "patch_size": patch,
        },
        "text_cfg": {
            "context_length": int(state["positional_embedding"].shape[0]),
            "vocab_size": int(state["token_embedding.weight"].shape[0]),
            "width": text_width,
            "heads": _heads(text_width, "text tower"),
            "layers": _count_blocks(state, "transformer.resblocks."),
            "mlp_ratio": text_mlp / text_width,
        },
    }


def _architecture_label(cfg: Mapping[str, Any], layout: str) -> str:
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    return f"{layout}-vit-p{v['patch_size']}-w{v['width']}-l{v['layers']}-t{t['width']}x{t['layers']}-d{cfg['embed_dim']}"


def _split_heads(rest: Mapping[str, torch.Tensor], groups: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Group leftover keys by head (``{group: [root names present]}``); unknown roots under ``"unknown"``."""
    present = _roots(rest)
    out: dict[str, list[str]] = {}
    claimed: set[str] = set()
    for group, roots in groups.items():
        found = [r for r in roots if r in present and r not in claimed]
        claimed.update(found)
        if found:
            out[group] = found
    unknown = sorted(present - claimed)
    if unknown:
        out["unknown"] = unknown
    return out


# ---------------------------------------------------------------------------------------------- layouts
@dataclass
class ConvertRequest:
    """What the caller said about a checkpoint: its file and the geometry the weights cannot tell."""

    path: Path
    image_size: tuple[int, int] | None = None
    stride: int | None = None
    model_name: str | None = None


@dataclass
class Converted:
    """A layout filter's result: our weights and the config that builds the model they fit.

    Attributes:
        state: tensors under `UITModel`'s names (``encoder.clip.*``, ``classifier.*``, ``tir_head.*``).
        config: ``encoder`` (as in `UITModel.config`: ``model_cfg``, or ``name``/``image_size``/
            ``context_length``), ``num_classes``, ``tir`` (`TIRHead` arguments or ``None``) and
            optionally ``interpolation``.
        card: what the model card says of the source.
    """

    state: dict[str, torch.Tensor]
    config: dict[str, Any]
    card: ModelCardInfo


def _clip_weights(clip_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIP weights in fp32 under the encoder's names; IRRA/SEN's fixed temperature (50) where none is stored."""
    state = {f"{_CLIP}{k}": v.float() for k, v in clip_state.items()}
    state.setdefault(f"{_CLIP}logit_scale", torch.tensor(math.log(50.0)))
    return state


def _filter_openai(state: dict[str, torch.Tensor], request: ConvertRequest) -> Converted:
    """A plain CLIP state dict in OpenAI naming (QuickGELU); another ``image_size`` resizes the grid."""
    clip_state = {k: v for k, v in state.items() if k not in _CLIP_META}
    cfg = clip_config_from_state_dict(
        clip_state, request.image_size, request.stride, allow_resize=True, source=str(request.path)
    )
    config = {"encoder": {"name": _architecture_label(cfg, "openai"), "model_cfg": cfg}, "num_classes": 0, "tir": None}
    return Converted(_clip_weights(clip_state), config, ModelCardInfo(source=_describe_source(request.path, "openai")))


def _filter_open_clip(state: dict[str, torch.Tensor], request: ConvertRequest) -> Converted:
    """Weights of a named open_clip architecture (``model_name``) at ``image_size`` (default 384x128)."""
    if request.model_name is None:
        raise ValueError(f"{request.path}: format open_clip needs the architecture name (model_name / --model)")
    if any(k.startswith("clip.") for k in state):  # saved from CLIPDualEncoder
        state = {k[len("clip.") :]: v for k, v in state.items() if k.startswith("clip.")}
    encoder = {"name": request.model_name, "image_size": list(request.image_size or recipe.IMAGE_SIZE),
               "context_length": recipe.CONTEXT_LENGTH}
    source = _describe_source(request.path, f"open_clip {request.model_name}")
    return Converted({f"{_CLIP}{k}": v for k, v in state.items()}, {"encoder": encoder, "num_classes": 0, "tir": None},
                     ModelCardInfo(source=source))


def _filter_irra(state: dict[str, torch.Tensor], request: ConvertRequest) -> Converted:
    """IRRA (and RDE): CLIP under ``base_model.``, an ID classifier; the MLM heads are dropped."""
    return _filter_irra_family(state, request, "irra")


def _filter_sen(state: dict[str, torch.Tensor], request: ConvertRequest) -> Converted:
    """SEN: IRRA's layout plus the text-guided restoration decoder, read as a SEN-layout `TIRHead`."""
    return _filter_irra_family(state, request, "sen")


def _filter_irra_family(state: dict[str, torch.Tensor], request: ConvertRequest, layout: str) -> Converted:
    path, sen = request.path, layout == "sen"
    configs = path.parent / "configs.yaml"  # geometry: the arguments, else IRRA's configs.yaml beside the file
    found = read_irra_configs(configs) if configs.is_file() else {}
    image_size, stride = request.image_size, request.stride
    if image_size is None and found:
        image_size, stride = found["image_size"], found.get("stride") if stride is None else stride
        logger.info("image size %s, stride %s from %s", tuple(image_size), stride, configs)
    clip_state = {k[len(_BASE) :]: v for k, v in state.items() if k.startswith(_BASE)}
    rest = {k: v for k, v in state.items() if not k.startswith(_BASE)}
    cfg = clip_config_from_state_dict(clip_state, image_size, stride, source=str(path))
    ours = _clip_weights(clip_state)
    heads = _split_heads(rest, {
        "classifier": ("classifier",),
        "decoder": _SEN_DECODER if sen else (),
        "mlm": _SEN_MLM if sen else _IRRA_MLM,
        "unused": _SEN_UNUSED if sen else (),
        "fuse": _SEN_FUSE if sen else (),
    })
    num_classes = 0
    if "classifier" in heads:
        weight = rest["classifier.weight"]
        if weight.shape[1] != cfg["embed_dim"]:
            raise ValueError(f"{path}: classifier.weight {tuple(weight.shape)} does not take {cfg['embed_dim']}-d features")
        num_classes = int(weight.shape[0])
        ours.update({f"classifier.{k}": rest[f"classifier.{k}"].float() for k in ("weight", "bias")})
    tir = None
    if sen:
        tir, tir_state = _sen_tir(rest, cfg, str(path))
        ours.update({f"tir_head.{k}": v for k, v in tir_state.items()})
    _log_ignored(heads, path)
    # IRRA/SEN resize with torchvision's default (bilinear): evaluation and indexing must do the same
    config = {"encoder": {"name": _architecture_label(cfg, layout), "model_cfg": cfg}, "num_classes": num_classes,
              "tir": tir, "interpolation": "bilinear"}
    card = ModelCardInfo(
        source=_describe_source(path, layout),
        training_data=f"{markdown_text(found['dataset'])} (from {configs.name})" if "dataset" in found else None,
        training_config=found.get("text"),
    )
    return Converted(ours, config, card)


def _log_ignored(heads: Mapping[str, list[str]], path: Path) -> None:
    if "mlm" in heads:
        logger.info("ignored the MLM head (%s): uit_reid has no MLM objective", ", ".join(heads["mlm"]))
    if "unused" in heads:
        logger.info("ignored modules SEN builds but never uses: %s", ", ".join(heads["unused"]))
    if "fuse" in heads:
        logger.info("ignored SEN's fusion score head (%s): uit_reid ranks by cosine similarity only", ", ".join(heads["fuse"]))
    if "unknown" in heads:
        logger.warning("%s: ignored tensors of unknown modules: %s", path, ", ".join(heads["unknown"]))


def _sen_tir(
    state: Mapping[str, torch.Tensor], cfg: Mapping[str, Any], source: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """SEN's restoration decoder as SEN-layout `TIRHead` arguments and weights (names by `SEN_TIR_KEY_MAP`)."""
    missing = [root for root in _SEN_DECODER if root != "decoder_pos_embed" and not any(
        k == root or k.startswith(root + ".") for k in state)]
    if missing:
        raise ValueError(f"{source}: SEN decoder incomplete, missing {', '.join(missing)}")
    embed = state["decoder_embed.weight"]
    width, embed_dim = int(embed.shape[0]), int(embed.shape[1])
    vision = cfg["vision_cfg"]
    patch = int(vision["patch_size"])
    grid = [int(vision["image_size"][0]) // patch, int(vision["image_size"][1]) // patch]
    pixels = int(state["decoder_pred.weight"].shape[0])
    if pixels != patch * patch * 3:
        raise ValueError(f"{source}: decoder_pred predicts {pixels} values per patch, the encoder's patch needs {patch * patch * 3}")
    tir = {
        "embed_dim": embed_dim, "grid_size": grid, "patch_size": [patch, patch],
        "text_dim": int(state["norm_2.weight"].shape[0]), "width": width,
        "depth": _count_blocks(state, "cross_modal_transformer_mae.resblocks."), "heads": _heads(width, "SEN decoder"),
        "mlp_ratio": int(state["cross_modal_transformer_mae.resblocks.0.mlp.c_fc.weight"].shape[0]) / width,
        "layout": "sen",
    }
    converted = {}
    for key, value in state.items():
        prefix = next((p for p in SEN_TIR_KEY_MAP if key == p or (p.endswith(".") and key.startswith(p))), None)
        if prefix is not None:
            converted[SEN_TIR_KEY_MAP[prefix] + key[len(prefix):]] = value.float()
    table, ours = state.get("decoder_pos_embed"), sincos_2d_position_embedding(width, grid)
    if table is not None and not (
        table.shape[-2:] == ours.shape and torch.allclose(table.float().reshape(ours.shape), ours, atol=1e-4)
    ):
        logger.warning("%s: SEN's decoder_pos_embed differs from the 2-D sin-cos table TIRHead uses", source)
    return tir, converted


LAYOUT_FILTERS: dict[str, Callable[[dict[str, torch.Tensor], ConvertRequest], Converted]] = {
    "irra": _filter_irra,
    "sen": _filter_sen,
    "openai": _filter_openai,
    "open_clip": _filter_open_clip,
}
"""Layout -> filter (timm's ``checkpoint_filter_fn`` shape): the peer's state dict in, `Converted` out."""
assert tuple(LAYOUT_FILTERS) == LAYOUTS


# ---------------------------------------------------------------------------------------------- shared path
def convert_model(
    path: str | os.PathLike,
    format: str = "auto",
    *,
    image_size: Sequence[int] | None = None,
    stride: int | None = None,
    model_name: str | None = None,
) -> UITModel:
    """Read a checkpoint of a known layout and return the equivalent `UITModel` (fp32, eval mode).

    Args:
        path: the checkpoint file (``.pth``/``.pt``/``.bin``/``.safetensors``).
        format: ``"auto"`` (from the keys) or one of `LAYOUTS`.
        image_size: input (height, width). For ``irra``/``sen`` it must fit the checkpoint's
            position grid; by default it is read from the ``configs.yaml`` beside the checkpoint.
            For ``openai``/``open_clip`` weights a different size resizes the position grid
            (``(384, 128)`` for person crops).
        stride: IRRA's ``stride_size`` (default: from ``configs.yaml``, else the patch size).
        model_name: the open_clip architecture of an ``open_clip`` checkpoint (``"ViT-B-16"``).

    Raises ``ValueError`` with one line naming the file when the layout is unknown or the shapes
    do not fit.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; convert reads one checkpoint file (a save_pretrained folder needs no conversion)")
    if image_size is not None:
        image_size = check_image_size(image_size, "image_size")
    if format not in ("auto", *LAYOUTS):
        raise ValueError(f"unknown format {format!r}; choose auto, {', '.join(LAYOUTS)}")
    if format == "open_clip" and model_name is None:
        raise ValueError(f"{path}: format open_clip needs the architecture name (model_name / --model)")
    state = load_state_dict_file(path)
    format = _layout_of(state, format, path)
    request = ConvertRequest(path, tuple(image_size) if image_size is not None else None, stride, model_name)
    converted = LAYOUT_FILTERS[format](state, request)
    model = _build_and_load(converted, str(path))
    model.model_card = converted.card
    logger.info(
        "converted %s (%s layout): %s, image %sx%s, %d identities", path, format, model.encoder.model_name,
        *model.image_size, model.num_classes,
    )
    return model.eval()


def _layout_of(state: Mapping[str, torch.Tensor], format: str, path: Path) -> str:
    """The layout to read ``state`` as: ``format``, checked against the keys, or the detected one for ``auto``."""
    if any(k.startswith("encoder.clip.") for k in state):
        raise ValueError(f"{path} is a uit_reid model file: load its folder with UITModel.from_pretrained, no conversion needed")
    if format == "open_clip":
        return format
    layout = detect_layout(state)
    if format == "auto":
        if layout is None:
            raise ValueError(
                f"{path}: no known checkpoint layout ({len(state)} tensors, top-level names "
                f"{', '.join(sorted(_roots(state))[:6])}); known layouts: {_LAYOUT_HELP}"
            )
        return layout
    if layout is None or (format in ("irra", "sen")) != (layout in ("irra", "sen")):
        raise ValueError(f"{path}: the keys do not follow the {format} layout (detected: {layout or 'none'})")
    if format == "sen" and layout == "irra":
        raise ValueError(f"{path}: format sen needs SEN's decoder tensors ({', '.join(_SEN_MARKERS)}); none found")
    return format


def _build_and_load(converted: Converted, source: str) -> UITModel:
    """The one build and validation path: sizes weighed against the file, then every tensor placed."""
    enc = converted.config["encoder"]
    if "model_cfg" in enc:  # shapes someone else wrote: weigh them against the file before building
        check_model_cfg(enc["model_cfg"], f"{source}: the shapes give model_cfg")
        check_weights_hold(clip_parameter_count(enc["model_cfg"]), source, source)
        encoder = CLIPDualEncoder.from_model_config(enc["model_cfg"], name=enc["name"])
    else:
        encoder = CLIPDualEncoder.from_open_clip(
            enc["name"], image_size=tuple(enc["image_size"]), context_length=enc["context_length"]
        )
    tir = converted.config.get("tir")
    model = UITModel(encoder, num_classes=converted.config["num_classes"], tir_head=TIRHead(**tir) if tir else False,
                     interpolation=converted.config.get("interpolation"))
    clip_state = {k[len(_CLIP) :]: v for k, v in converted.state.items() if k.startswith(_CLIP)}
    encoder.load_clip_state(clip_state, source)
    heads = {k: v for k, v in converted.state.items() if not k.startswith(_CLIP)}
    own = {k for k in model.state_dict() if not k.startswith("encoder.")}
    missing, unexpected = sorted(own - set(heads)), sorted(set(heads) - own)
    if missing or unexpected:
        raise ValueError(f"{source}: the converted heads do not match the model: missing {missing[:6]}, "
                         f"unexpected {unexpected[:6]}")
    model.load_state_dict(heads, strict=False)
    return model


def _describe_source(path: Path, layout: str) -> str:
    return f"{markdown_text(path.name)} ({layout} layout, sha256 {file_sha256(path)}) by `uit_reid.convert_model`"

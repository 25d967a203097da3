"""Build a `UITModel` from its description, and load a trained one for inference.

``build_model`` turns the ``[model]`` and ``[loss]`` sections of a training config (the dataclasses of
`uit_reid.train.config`, or the same keys as plain dicts) into a model; ``load_model`` reads a model
back from a ``save_pretrained`` folder or a trainer's ``last.pt``. Neither needs the trainer.
``create_model_and_transforms`` and ``get_tokenizer`` are the entry points open_clip users expect.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from uit_reid import recipe
from uit_reid.checkpoint import CheckpointError, load_checkpoint
from uit_reid.encoders import CLIPDualEncoder, get_model_config
from uit_reid.encoders import get_tokenizer as _tower_tokenizer
from uit_reid.model import UITModel, pretrained_tokenizer
from uit_reid.tir import TIRHead

__all__ = [
    "build_model",
    "create_model_and_transforms",
    "get_tokenizer",
    "load_model",
    "load_tir_head_weights",
    "save_tir_head",
]

_UNSET = object()


def _as_dict(section: Any) -> Mapping[str, Any]:
    return dataclasses.asdict(section) if dataclasses.is_dataclass(section) else section


def build_model(
    model: Any, loss: Any, num_classes: int, pretrained: Any = _UNSET, interpolation: str | None = None
) -> UITModel:
    """The `UITModel` that a ``[model]`` and a ``[loss]`` config section describe.

    Args:
        model: ``ModelConfig`` or a dict with its keys (tower, pretrained, image_size, context_length,
            tir_head, tir_width, tir_depth, tir_heads, tir_layout, tir_grayscale, tir_target, mask_ratio).
        loss: ``LossConfig`` or a dict with its keys (the five loss weights, logit_scale, cmt_margin).
        num_classes: training identities (the ID classifier's size; unused when the ID weight is 0).
        pretrained: overrides ``model["pretrained"]`` (e.g. None when weights are loaded afterwards).
        interpolation: the training resize (``[data] interpolation``), recorded in the model; by
            default the tower's own (its preprocessing config).
    """
    m, lw = _as_dict(model), _as_dict(loss)
    encoder = CLIPDualEncoder.from_open_clip(
        m["tower"],
        pretrained=m["pretrained"] if pretrained is _UNSET else pretrained,
        image_size=tuple(m["image_size"]),
        context_length=m["context_length"],
    )
    tir: bool | TIRHead = False
    if m["tir_head"] and lw["tir"] > 0:
        tir = TIRHead(
            encoder.embed_dim,
            encoder.grid_size,
            encoder.patch_size,
            width=m["tir_width"],
            depth=m["tir_depth"],
            heads=m["tir_heads"],
            layout=m["tir_layout"],
        )
        if m.get("tir_pretrained"):
            load_tir_head_weights(tir, m["tir_pretrained"], m["tower"])
    return UITModel(
        encoder,
        num_classes=num_classes if lw["id"] > 0 else 0,
        tir_head=tir,
        loss_weights={name: lw[name] for name in ("sdm", "id", "tir", "cmt", "itc")},
        logit_scale=lw["logit_scale"],
        cmt_margin=lw["cmt_margin"],
        mask_ratio=m["mask_ratio"],
        tir_grayscale=m["tir_grayscale"],
        interpolation=interpolation,
        tir_target=m.get("tir_target", recipe.TIR_TARGET),
    )


def load_tir_head_weights(head: TIRHead, source: str | os.PathLike, tower: str | None = None) -> TIRHead:
    """Load pre-trained decoder weights into ``head``: a tag shipped for ``tower``
    (`uit_reid.pretrained.SHIPPED_TIR_HEADS`) or a ``.safetensors`` file written by `save_tir_head`.

    The file records the `TIRHead` configuration it was trained with; a head built differently is refused
    with both configurations named (a decoder of another width or layout cannot be loaded).
    """
    from safetensors import safe_open

    from uit_reid.pretrained import SHIPPED_TIR_HEADS, shipped_tir_head

    source = str(source)
    is_tag = tower is not None and (tower, source) in SHIPPED_TIR_HEADS
    if not is_tag and not Path(source).is_file():
        raise ValueError(f"model.tir_pretrained: {source!r} is neither a TIR decoder shipped for {tower} "
                         f"({sorted(t for a, t in SHIPPED_TIR_HEADS if a == tower)}) nor a file")
    path = shipped_tir_head(tower, source) if is_tag else Path(source)
    with safe_open(str(path), framework="pt") as f:
        recorded = json.loads((f.metadata() or {}).get("tir_head", "null"))
        state = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    if recorded != json.loads(json.dumps(head.config())):
        raise ValueError(f"{path}: a TIR decoder trained as {recorded}; this model's decoder is {head.config()}")
    head.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return head


def save_tir_head(head: TIRHead, path: str | os.PathLike) -> None:
    """Write ``head``'s weights and configuration as ``.safetensors`` (for ``model.tir_pretrained``), atomically."""
    from safetensors.torch import save

    from uit_reid.io import atomic_write_bytes

    state = {k: v.detach().contiguous() for k, v in head.state_dict().items()}
    atomic_write_bytes(path, save(state, metadata={"tir_head": json.dumps(head.config())}))


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> UITModel:
    """Load a trained model, in eval mode, from a ``save_pretrained`` folder or a trainer's ``last.pt``.

    The model knows its input size: ``model.image_size`` (height, width). A Hub id (``org/name`` or
    ``hf-hub:org/name``) that names no local folder is downloaded through ``huggingface_hub``.
    """
    from uit_reid.hub import hub_repo_id

    if hub_repo_id(path) is not None:
        return UITModel.from_pretrained(path, device=device).eval()
    path = Path(path)
    if path.is_dir():
        model = UITModel.from_pretrained(path, device=device)
    elif path.is_file():
        state = load_checkpoint(path)
        if not isinstance(state.get("config"), str) or not isinstance(state.get("model"), dict):
            raise CheckpointError(f"{path} is a training checkpoint without a model and its config")
        config = json.loads(state["config"])
        classifier = state["model"].get("classifier.weight")
        num_classes = int(classifier.shape[0]) if classifier is not None else 0
        model = build_model(config["model"], config["loss"], num_classes, pretrained=None,
                            interpolation=config["data"]["interpolation"])
        model.load_state_dict(state["model"])
        model = model.to(device)
    else:
        raise FileNotFoundError(f"checkpoint not found: {path} (a model directory or a last.pt file)")
    return model.eval()


def _tower_name(source: str | os.PathLike, pretrained: str | None) -> str | None:
    """The name `CLIPDualEncoder.from_open_clip` takes when ``source`` is an architecture, ``None`` for a trained model.

    A Hub id is read the same way with or without ``hf-hub:``: the repository's files decide
    (`uit_reid.hub.hub_tower_name`).
    """
    from uit_reid.hub import hub_repo_id, hub_tower_name

    text = os.fspath(source)
    if pretrained is not None or text.startswith("local-dir:"):
        return text
    if hub_repo_id(text) is not None:
        return hub_tower_name(text)
    return text if get_model_config(text) is not None and not Path(text).exists() else None


def create_model_and_transforms(
    source: str | os.PathLike,
    pretrained: str | None = None,
    *,
    image_size: tuple[int, int] = recipe.IMAGE_SIZE,
    context_length: int = recipe.CONTEXT_LENGTH,
    device: str | torch.device = "cpu",
) -> tuple[UITModel, Callable[[Any], torch.Tensor], Callable[[Any], torch.Tensor]]:
    """``(model, train_transform, eval_transform)`` for ``source``, as ``open_clip.create_model_and_transforms``.

    ``source`` is what `load_model` reads (a ``save_pretrained`` folder, a trainer's ``last.pt``, a
    Hub model id) or an architecture `CLIPDualEncoder.from_open_clip` builds (``"ViT-B-16"`` with
    ``pretrained="openai"``, ``"uit-tiny"`` with ``"synthetic"``, ``"local-dir:/path"``), which becomes
    a model without ID classifier or TIR head at ``image_size``/``context_length``. Both transforms
    resize and normalise as the model says (its tower's preprocessing, kept in its ``config.json``).
    The model is in eval mode.
    """
    tower = _tower_name(source, pretrained)
    if tower is not None:
        encoder = CLIPDualEncoder.from_open_clip(
            tower, pretrained=pretrained, image_size=image_size, context_length=context_length
        )
        model = UITModel(encoder, num_classes=0, tir_head=False).to(device).eval()
    else:
        model = load_model(source, device=device)
    return model, model.train_transform(), model.eval_transform()


def get_tokenizer(source: str | os.PathLike, context_length: int | None = None) -> Callable[..., torch.Tensor]:
    """The tokenizer (texts -> ``(B, context_length)`` ids) for what `create_model_and_transforms` reads.

    Neither reads weights: an architecture's tokenizer comes from its name, a trained model's from
    its ``config.json`` (a trainer's ``last.pt`` is loaded whole), which fixes the context length
    (``context_length`` must then be left ``None``).
    """
    tower = _tower_name(source, None)
    if tower is not None:
        return _tower_tokenizer(tower, context_length=context_length)
    if context_length is not None:
        raise ValueError(f"{source}: a trained model has its own context length; leave context_length=None")
    if Path(source).is_file():
        return load_model(source).encoder.tokenizer
    return pretrained_tokenizer(source)

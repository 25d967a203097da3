"""The model card (``README.md``) that `UITModel.save_pretrained` writes beside the weights.

The card states what the folder holds (architecture, input size), where it came from (training
data and config, or the converted checkpoint), how well it did (the run's metrics), which library
version wrote it, and what it is for and must not be used for. Text-based person retrieval is
close to surveillance; the card says so plainly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from uit_reid.tables import metrics_table

__all__ = ["MODEL_CARD_NAME", "ModelCardInfo", "markdown_text", "render_model_card"]

MODEL_CARD_NAME = "README.md"

@dataclass
class ModelCardInfo:
    """What a model card needs beyond the model's own config.

    Attributes:
        training_data: the data the weights were trained on (e.g. ``"CUHK-PEDES train split"``).
        training_config: the training configuration (a mapping, shown as JSON, or text).
        metrics: ``{split name: {"R1": ..., "mAP": ...}}`` in percent, from the run.
        source: where converted weights came from (file, layout, checksum).
        notes: free text added under its own heading.
    """

    training_data: str | None = None
    training_config: Mapping[str, Any] | str | None = None
    metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    source: str | None = None
    notes: str | None = None


def _architecture(config: Mapping[str, Any]) -> list[str]:
    enc = config["encoder"]
    height, width = enc["image_size"]
    lines = [
        f"- Encoder: `{enc['name']}` (open_clip CLIP dual encoder), input {height}x{width} pixels "
        f"(height x width), captions of {enc['context_length']} tokens.",
    ]
    cfg = enc.get("model_cfg")
    if cfg:
        vision, text = cfg["vision_cfg"], cfg["text_cfg"]
        lines.append(
            f"- Image tower: ViT, patch {vision.get('patch_size')}, width {vision.get('width')}, "
            f"{vision.get('layers')} layers; text tower: width {text.get('width')}, {text.get('layers')} layers, "
            f"{text.get('heads', 8)} heads; joint space {cfg.get('embed_dim')}-d; activation "
            f"{'QuickGELU' if cfg.get('quick_gelu') else 'GELU'}."
        )
    lines.append(
        "- Retrieval feature: the projected CLS token (images) and EOT token (captions), compared by cosine."
    )
    if config.get("num_classes"):
        lines.append(f"- Identity classifier over {config['num_classes']} training identities (training only).")
    tir = config.get("tir")
    if tir:
        lines.append(
            f"- Text-guided image restoration head (training only; {tir.get('depth')} layers, "
            f"width {tir.get('width')})."
        )
    return lines


_FRONT_MATTER = (
    "---",
    "library_name: uit_reid",
    "pipeline_tag: zero-shot-image-classification",
    "tags:",
    "- text-to-image-retrieval",
    "- person-retrieval",
    "- clip",
    "- open_clip",
    "---",
)
"""The Hub's metadata block at the top of every card."""

_USE_AND_LIMITS = (
    "## Use",
    "",
    "```python",
    "import uit_reid as ur",
    'model = ur.UITModel.from_pretrained("path/or/org-name").eval()',
    "```",
    "",
    "or `uit-reid index build --model DIR --images PHOTOS --out gallery.faiss` and "
    '`uit-reid search "a woman in a red coat" --index gallery.faiss`.',
    "",
    "## Intended use",
    "",
    "Research on text-based person retrieval, and searching photo collections that the user is "
    "entitled to search, such as their own photos or benchmark data used under its licence.",
    "",
    "## Limitations",
    "",
    "- Trained on a few pedestrian benchmarks (surveillance-style crops of mostly one region); "
    "accuracy drops on other cameras, poses, clothing styles and populations.",
    "- Descriptions are matched on visible appearance (clothes, colours, carried objects): two "
    "people dressed alike are not told apart, and nothing about identity is verified.",
    "- Scores are similarities, not probabilities; a top result can be wrong. A person must review results.",
    "- Biases of CLIP's web-scale pre-training and of the benchmark captions carry over.",
    "",
    "## Prohibited uses",
    "",
    "Do not use this model to identify, track or profile people without their informed consent or a "
    "clear legal basis: no covert surveillance, no tracking of individuals across cameras or "
    "photo collections, no targeting of people by protected attributes (ethnicity, religion, "
    "health, sexual orientation, political views), no use in decisions about a person's rights, "
    "employment, housing, credit or access to services, and no law-enforcement identification "
    "without human review and the safeguards the law requires.",
    "",
)
"""What every card says about use, limits and prohibited uses, whatever the model."""


def _origin(card: ModelCardInfo) -> list[str]:
    lines = [f"- Converted from: {card.source}"] if card.source else []
    lines.append(f"- Training data: {card.training_data or 'not recorded'}")
    if isinstance(card.training_config, Mapping):
        lines += ["- Training config:", "", "```json", json.dumps(dict(card.training_config), indent=2), "```"]
    elif card.training_config:
        lines += ["- Training config:", "", "```", str(card.training_config).strip(), "```"]
    else:
        lines.append("- Training config: not recorded")
    return lines


def _metrics(card: ModelCardInfo) -> list[str]:
    if not card.metrics:
        return ["Not measured for this folder."]
    return ["Text-to-image retrieval (captions query the images), in percent:", "", metrics_table(card.metrics)]


def render_model_card(config: Mapping[str, Any], card: ModelCardInfo | None = None) -> str:
    """Markdown (with Hub front matter) describing a model from its `UITModel.config` and ``card``."""
    card = card or ModelCardInfo()
    out = [
        *_FRONT_MATTER,
        "",
        f"# uit_reid model: {config['encoder']['name']}",
        "",
        "Text-to-image person retrieval: a sentence describing a person in, the matching person images "
        "of a gallery out. Written by `uit_reid` "
        f"{config.get('uit_reid_version', 'unknown')} (model format {config.get('format_version')}).",
        "",
        "## Architecture",
        "",
        *_architecture(config),
        "",
        "## Origin",
        "",
        *_origin(card),
        "",
        "## Metrics",
        "",
        *_metrics(card),
        "",
        *_USE_AND_LIMITS,
    ]
    if card.notes:
        out += ["## Notes", "", card.notes.strip(), ""]
    return "\n".join(out)


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>#!|~])")  # links, images, HTML, emphasis, code, tables


def markdown_text(value: str, limit: int = 200) -> str:
    """``value`` (read from a file someone else wrote) as plain Markdown text on one line.

    The characters that start Markdown links, images, HTML, emphasis, code or tables are
    backslash-escaped (nothing can be smuggled into the card), line breaks become spaces and the text is cut at ``limit`` characters.
    """
    one_line = " ".join(str(value).split())
    if len(one_line) > limit:
        one_line = one_line[:limit] + "..."
    return _MARKDOWN_SPECIAL.sub(r"\\\1", one_line)

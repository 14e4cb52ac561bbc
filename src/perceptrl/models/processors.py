"""Build and load processors for Qwen-VL style models without needing torchvision.

``AutoProcessor.from_pretrained`` needs torchvision for Qwen-VL video processors, and
PyPI's torchvision does not import beside the CPU torch wheel. Images are all we need, so
we fall back to an image-only processor built from the saved tokenizer and image config.
The same holds for Qwen2-VL, Qwen3-VL and LLaVA-OneVision (``image_only_processor_class``),
whose image processors have PIL backends (``Qwen2VLImageProcessorPil``,
``LlavaOnevisionImageProcessorPil``).
"""

from __future__ import annotations

import json
from pathlib import Path


def _image_only_processor_class():
    from transformers import Qwen2_5_VLProcessor

    class ImageOnlyQwenVLProcessor(Qwen2_5_VLProcessor):
        """Qwen2.5-VL processor without a video processor (its signature drives the attributes)."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            from transformers.processing_utils import ProcessorMixin

            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return ImageOnlyQwenVLProcessor


def make_qwen_vl_processor(tokenizer, patch_size=14, merge_size=2, min_pixels=None, max_pixels=None):
    """A Qwen2/2.5-VL image processor (PIL backend, no torchvision) plus ``tokenizer``."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    size = {}
    if min_pixels is not None:
        size["shortest_edge"] = min_pixels
    if max_pixels is not None:
        size["longest_edge"] = max_pixels
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch_size, merge_size=merge_size, temporal_patch_size=2, **({"size": size} if size else {})
    )
    cls = _image_only_processor_class()
    return cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template)


# Stock processor class name -> transformers class; one image-only subclass is made per entry.
_STOCK_PROCESSORS = {
    "Qwen2VLProcessor": "transformers.models.qwen2_vl.processing_qwen2_vl",
    "Qwen3VLProcessor": "transformers.models.qwen3_vl.processing_qwen3_vl",
    "LlavaOnevisionProcessor": "transformers.models.llava_onevision.processing_llava_onevision",
}
_IMAGE_ONLY_CLASSES: dict = {}


def image_only_processor_class(stock_name: str):
    """An image-only subclass of the stock processor ``stock_name`` (no video processor).

    The subclass carries the stock class's name, so a saved folder names the stock class
    (``processor_config.json`` and ``tokenizer_config.json``) and ``AutoProcessor`` loads it
    wherever torchvision is installed. Its ``__init__`` has no ``video_processor`` argument
    (the signature decides which sub-processors ``ProcessorMixin`` expects); every other
    argument is forwarded to the stock ``__init__`` and, being in the signature, saved.
    """
    if stock_name in _IMAGE_ONLY_CLASSES:
        return _IMAGE_ONLY_CLASSES[stock_name]
    import importlib

    base = getattr(importlib.import_module(_STOCK_PROCESSORS[stock_name]), stock_name)
    if stock_name == "LlavaOnevisionProcessor":

        def __init__(
            self,
            image_processor=None,
            tokenizer=None,
            num_image_tokens=None,
            vision_feature_select_strategy=None,
            chat_template=None,
            image_token="<image>",
            video_token="<video>",
            vision_aspect_ratio="anyres_max_9",
            **kwargs,
        ):
            base.__init__(
                self,
                image_processor=image_processor,
                tokenizer=tokenizer,
                video_processor=None,  # dropped by ProcessorMixin: not an attribute of this class
                num_image_tokens=num_image_tokens,
                vision_feature_select_strategy=vision_feature_select_strategy,
                chat_template=chat_template,
                image_token=image_token,
                video_token=video_token,
                vision_aspect_ratio=vision_aspect_ratio,
            )

    else:

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            base.__init__(self, image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                          chat_template=chat_template)

    cls = type(stock_name, (base,), {"__init__": __init__, "__module__": __name__,
                                     "__doc__": f"{stock_name} for images only (no torchvision needed)."})
    _IMAGE_ONLY_CLASSES[stock_name] = cls
    return cls


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def saved_processor_class(path: str | Path) -> str | None:
    """The processor class a saved folder names (processor, tokenizer or model config)."""
    path = Path(path)
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        cls = _read_json(path / name).get("processor_class")
        if cls:
            return cls
    model_type = _read_json(path / "config.json").get("model_type")
    return {"qwen2_vl": "Qwen2VLProcessor", "qwen3_vl": "Qwen3VLProcessor",
            "llava_onevision": "LlavaOnevisionProcessor"}.get(model_type)


def _load_image_only_processor(path: Path, stock_name: str, tokenizer):
    """Rebuild an image-only ``stock_name`` processor from a saved folder (PIL image processor)."""
    if stock_name == "LlavaOnevisionProcessor":
        from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
            LlavaOnevisionImageProcessorPil as image_processor_class,
        )
    else:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil as image_processor_class,
        )
    image_processor = image_processor_class.from_pretrained(path)
    cls = image_only_processor_class(stock_name)
    saved = _read_json(path / "processor_config.json")
    import inspect

    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "image_processor", "tokenizer", "kwargs"}
    kwargs = {k: v for k, v in saved.items() if k in accepted}
    kwargs.setdefault("chat_template", tokenizer.chat_template)
    return cls(image_processor=image_processor, tokenizer=tokenizer, **kwargs)


def load_processor(path: str | Path, trust_remote_code: bool = False):
    """Load a saved processor; fall back to an image-only one when torchvision is missing."""
    from transformers import AutoProcessor, AutoTokenizer

    try:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        if hasattr(processor, "image_processor"):
            return processor
        err = "AutoProcessor returned a tokenizer only"
    except (ImportError, ValueError, OSError, TypeError, AttributeError, KeyError) as exc:
        err = exc
    stock_name = saved_processor_class(path)
    if stock_name in _STOCK_PROCESSORS:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        return _load_image_only_processor(Path(path), stock_name, tokenizer)
    if True:
        config_file = Path(path) / "preprocessor_config.json"
        if not config_file.exists():
            config_file = Path(path) / "processor_config.json"
        if not config_file.exists():
            raise OSError(f"{path}: no processor could be loaded ({err})")
        raw = json.loads(config_file.read_text())
        raw = raw.get("image_processor", raw)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        size = raw.get("size") or {}
        return make_qwen_vl_processor(
            tokenizer,
            patch_size=raw.get("patch_size", 14),
            merge_size=raw.get("merge_size", 2),
            min_pixels=size.get("shortest_edge", raw.get("min_pixels")),
            max_pixels=size.get("longest_edge", raw.get("max_pixels")),
        )

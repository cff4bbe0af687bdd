"""mmgpt: a multimodal (text + image + audio) GPT-style Transformer."""

from mmgpt.batch import MODALITIES, MultimodalBatch

__all__ = ["MODALITIES", "MultimodalBatch"]
__version__ = "0.1.0"

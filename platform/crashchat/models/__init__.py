"""Model loading and the tiny VideoLLaMA3 kit."""

from crashchat.models.loading import LoadedModel, load_model, select_attention, select_dtype

__all__ = ["LoadedModel", "load_model", "select_attention", "select_dtype"]

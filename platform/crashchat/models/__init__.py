"""Model loading and the tiny VideoLLaMA3 kit.

Import from the modules (``crashchat.models.loading``, ``.checkpoint``, ``.metadata``): the
package itself imports nothing, so reading a checkpoint's metadata (the Serve router, the
preprocessing driver) does not pull in torch and transformers (about 6 s per process here).
"""

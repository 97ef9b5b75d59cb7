"""aum: Audio Mamba (AuM) encoders - features, models, selective scan, checkpoints.

Quick use::

    import aum
    model = aum.create_model("small", mixer="v2", num_classes=527)
    feats = aum.waveform_to_features(wave, 16000, preset="audioset")   # [1024, 128]
    out = model.forward_features(feats[None])                           # tokens, grid, cls, pooled, logits
"""
from aum.audio.features import waveform_to_features
from aum.models import AuM, AuMConfig, AuMOutput, create_model, list_models

__version__ = "0.1.0"
__all__ = ["AuM", "AuMConfig", "AuMOutput", "create_model", "list_models", "waveform_to_features",
           "__version__"]

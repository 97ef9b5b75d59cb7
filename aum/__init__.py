"""aum: Audio Mamba (AuM) encoders - features, models, selective scan, checkpoints.

Quick use::

    import aum
    model = aum.create_model("small", mixer="v2", num_classes=527)
    feats = aum.waveform_to_features(wave, 16000, preset="audioset")   # [1024, 128]
    out = model.forward_features(feats[None])                           # tokens, grid, cls, pooled, logits
    dass = aum.create_model("dass_small_sslam", pretrained=True)        # released weights by name (aum-models)
"""
from aum.audio.features import waveform_to_features
from aum.checkpoint import get_pretrained, list_pretrained, load_checkpoint
from aum.checkpoint.pretrained import lookup
from aum.models import AuM, AuMConfig, AuMOutput, DASS, list_models
from aum.models import create_model as _create_preset

__version__ = "0.1.0"
__all__ = ["AuM", "AuMConfig", "AuMOutput", "create_model", "list_models", "list_pretrained", "load_checkpoint",
           "waveform_to_features", "__version__"]


def create_model(name: str, pretrained: bool = False, **overrides) -> AuM | DASS:
    """An encoder by name, timm style. ``name`` is a model preset (``tiny``, ``small``, ``base``, ``dass_small``,
    ...: :func:`list_models`) or a registered release (:func:`list_pretrained`, ``aum-models``).

    ``pretrained=True`` (a release only) returns its weights: downloaded on first use into the Hugging Face or
    aum cache and loaded with :func:`aum.checkpoint.load_checkpoint` (``overrides`` adapt it, e.g.
    ``num_classes=10`` replaces the head). Without it a release gives its architecture, randomly initialised
    (the preset plus the entry's fields, e.g. the mixer and class count), and a preset the preset."""
    entry = lookup(name)
    if pretrained:
        return load_checkpoint(get_pretrained(name).name, **overrides)
    if entry is not None:
        return _create_preset(entry.preset, **{**entry.config_overrides, **overrides})
    return _create_preset(name, **overrides)

"""Checkpoints: our format, the released foreign formats, and checked loading into a model.

    from aum.checkpoint import load_checkpoint, save_checkpoint
    model = load_checkpoint("run/encoder.safetensors")     # also: official AuM .pth, HF folder, Vim ImageNet .pth,
                                                           # DASS .pth (module.v.*) and DASS HF folder (dass.*)
    save_checkpoint(model, "run/copy.safetensors")         # one file: weights, config (and family), feature preset
    model = load_checkpoint("dass_small_sslam")            # released weights by name (aum-models), hf://org/repo, URL

The modules, lowest first: :mod:`~aum.checkpoint.state_dict` (errors, reports, checked loads, key helpers),
:mod:`~aum.checkpoint.files` (file kinds, safe reading), :mod:`~aum.checkpoint.ours` (our safetensors format and
its feature-preset record), :mod:`~aum.checkpoint.official_aum` and :mod:`~aum.checkpoint.official_dass` (the
released formats to our layouts), :mod:`~aum.checkpoint.adapt` (fitting weights to a model of another grid or
head), :mod:`~aum.checkpoint.pretrained` (the registry of released weights), :mod:`~aum.checkpoint.hub` (a
name, ``hf://`` reference or URL to a local file: Hub cache, downloads, offline mode),
:mod:`~aum.checkpoint.load` (read any file, build or initialise a model). docs/checkpoints.md lists every
format with its keys, and the registry.
"""
from aum.checkpoint.hub import cache_root, cached, check_reference, is_reference, resolve
from aum.checkpoint.load import init_from_pretrained, load_checkpoint, read_checkpoint
from aum.checkpoint.ours import DEFAULT_FEATURE_PRESET, content_hash, feature_preset_of, save_checkpoint
from aum.checkpoint.pretrained import PRETRAINED, Pretrained, get_pretrained, list_pretrained
from aum.checkpoint.state_dict import CheckpointError, CheckpointMismatchError, LoadReport, RawCheckpoint

__all__ = ["load_checkpoint", "save_checkpoint", "read_checkpoint", "init_from_pretrained", "feature_preset_of",
           "content_hash", "DEFAULT_FEATURE_PRESET", "CheckpointError", "CheckpointMismatchError", "LoadReport",
           "RawCheckpoint", "resolve", "cached", "check_reference", "is_reference", "cache_root", "PRETRAINED",
           "Pretrained", "get_pretrained", "list_pretrained"]

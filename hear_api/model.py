"""The model object :func:`hear_api.load_model` returns: an AuM or DASS encoder plus how to turn audio into
HEAR embeddings (feature preset, layer, pooling, timestamp hop). The computation itself lives in the
library (:mod:`aum.embed`)."""
from __future__ import annotations

import json
import os
import sys
import warnings
from dataclasses import asdict, dataclass, fields

import torch
from aum.checkpoint import feature_preset_of, is_reference, load_checkpoint
from aum.embed import check_audio_batch, column_width, embed_waveform, parse_pooling, pooled_width, scene_embedding
from aum.audio.features import FbankConfig, get_preset
from aum.models import AuM, DASS, create_model, list_models


SAMPLE_RATE = 16000
DEFAULT_ENV = "AUM_HEAR_CHECKPOINT"
OPTIONS_ENV = "AUM_HEAR_OPTIONS"


@dataclass
class EmbeddingOptions:
    """How audio becomes HEAR embeddings; every field can be set with heareval's ``--model-options``.

    - ``layer``: encoder layer to read (1..``num_layers``: AuM blocks, DASS blocks across its stages; ``None`` =
      the last, through the final norm).
    - ``combine``: how the frequency patches of one time column become one vector: ``"mean"`` (``D``
      values) or ``"concat"`` (``F' * D``, e.g. 8 x 192 = 1536 for tiny).
    - ``scene``: clip pooling for scene embeddings: ``"mean"`` or ``"max"`` over the columns, ``"cls"`` (class
      token), or several joined by ``+`` and concatenated (``"mean+max"``: the pooling of the HEAR naive
      baselines; ``"cls+mean"``).
    - ``hop_ms`` / ``fine``: timestamp hop and how it is made: ``"shift"`` (default, 40 ms: the encoder on
      4 copies shifted by 4 frames, every vector a real patch column; 4x cost; DASS, with 320 ms columns: 8
      copies), ``"interp"`` (one pass, linear interpolation of the native columns), ``"native"`` (one pass, the
      encoder's column step: 160 ms for AuM, 320 ms for DASS; ``hop_ms`` ignored).
    - ``window`` / ``window_hop``: encoder window and its hop in frames for long audio (default: the
      model's ``target_frames`` and half of it); ``pad_to_window``: pad shorter clips to one window as in
      AuM training (default) rather than encode them at their own length.
    - ``features``: normalisation preset (default: the one the checkpoint records,
      :func:`aum.checkpoint.feature_preset_of`; ``"audioset"``, with one warning, for a checkpoint that records
      none; given and different from the recorded one, it wins with a warning); ``batch_size``: windows per
      encoder call.
    """

    layer: int | None = None
    combine: str = "mean"
    scene: str = "mean"
    hop_ms: float = 40.0
    fine: str = "shift"
    window: int | None = None
    window_hop: int | None = None
    pad_to_window: bool = True
    features: str | None = None
    batch_size: int = 8

    def __post_init__(self):
        if self.combine not in ("mean", "concat"):
            raise ValueError(f"combine must be 'mean' or 'concat', got {self.combine!r}")
        parse_pooling(self.scene)
        if self.fine not in ("shift", "interp", "native"):
            raise ValueError(f"fine must be 'shift', 'interp' or 'native', got {self.fine!r}")
        self.hop_ms = float(self.hop_ms)
        self.layer = None if self.layer in (None, "", "none") else int(self.layer)
        self.batch_size = int(self.batch_size)
        if isinstance(self.pad_to_window, str):
            self.pad_to_window = self.pad_to_window.lower() in ("1", "true", "yes")


class HearAuM(torch.nn.Module):
    """An AuM or DASS encoder wrapped for the HEAR API (any encoder that describes itself: ``num_layers``,
    ``has_cls``, ``layer_dim``, ``token_grid``, ... - see :mod:`aum.embed`): ``sample_rate`` (16000), ``scene_embedding_size`` and
    ``timestamp_embedding_size`` (ints), ``options`` (:class:`EmbeddingOptions`), ``source`` (where the
    weights came from) and ``trained`` (False for the random default). Moving it (``.to``) moves the encoder."""

    sample_rate = SAMPLE_RATE

    def __init__(self, encoder: AuM | DASS, options: EmbeddingOptions | None = None, source: str = "",
                 trained: bool = True, preset: str | FbankConfig | None = None):
        super().__init__()
        self.encoder = encoder.eval()
        self.options = options or EmbeddingOptions()
        self.source, self.trained = source, trained
        # options.features > preset > the encoder's own (load_checkpoint sets it) > audioset
        self.feature_preset = (feature_preset_of(encoder, explicit=self.options.features) if preset is None
                               else get_preset(self.options.features or preset))
        self.preset = self.feature_preset.name
        if self.feature_preset.kind != "kaldi":
            raise ValueError(f"feature preset {self.preset!r} is not a 16 kHz Kaldi preset; the HEAR wrapper "
                             f"supports audioset, vggsound, voxceleb, speechcommands, none")
        o, depth = self.options, encoder.num_layers
        if o.layer is not None and not 1 <= o.layer <= depth:
            raise ValueError(f"layer must be in 1..{depth}, got {o.layer}")
        if "cls" in parse_pooling(o.scene) and not encoder.has_cls:
            raise ValueError(f"scene={o.scene!r} needs a class token; this encoder has none")
        self.timestamp_embedding_size = column_width(encoder, o.layer, o.combine)
        self.scene_embedding_size = pooled_width(encoder, o.scene, o.layer, o.combine)

    @property
    def device(self) -> torch.device:
        """Device of the encoder's weights."""
        return next(self.encoder.parameters()).device

    def _kw(self) -> dict:
        o = self.options
        return dict(window_frames=o.window, hop_frames=o.window_hop, layer=o.layer, combine=o.combine,
                    batch_size=o.batch_size, pad_to_window=o.pad_to_window)

    def _audio(self, audio) -> torch.Tensor:
        """The HEAR input checked (:func:`aum.embed.check_audio_batch`: 2-D float, no zero-length or ``(n, 1)``
        audio, finite) and moved to the model's device as float32. Integer PCM is rejected, never rescaled."""
        audio = torch.as_tensor(audio)
        if audio.dim() != 2:
            raise ValueError(f"audio must be [n_sounds, n_samples], got shape {tuple(audio.shape)}")
        audio, _ = check_audio_batch(audio, "audio")
        return audio.to(device=self.device, dtype=torch.float32)

    def timestamp_embeddings(self, audio) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embeddings float32 [n_sounds, n_timestamps, timestamp_embedding_size],
        timestamps float32 [n_sounds, n_timestamps] in ms)`` on the model's device."""
        audio = self._audio(audio)
        if audio.shape[0] == 0:
            return (torch.zeros(0, 1, self.timestamp_embedding_size, device=self.device),
                    torch.zeros(0, 1, device=self.device))
        o = self.options
        emb, times = embed_waveform(self.encoder, audio, SAMPLE_RATE, preset=self.feature_preset, hop_ms=o.hop_ms,
                                    method=o.fine, **self._kw())
        _check_finite(emb, "timestamp embeddings")
        ts = times.to(torch.float32).to(self.device)[None].expand(audio.shape[0], -1).contiguous()
        return emb.to(torch.float32), ts

    def scene_embeddings(self, audio) -> torch.Tensor:
        """``float32 [n_sounds, scene_embedding_size]`` on the model's device."""
        audio = self._audio(audio)
        if audio.shape[0] == 0:
            return torch.zeros(0, self.scene_embedding_size, device=self.device)
        emb = scene_embedding(self.encoder, audio, SAMPLE_RATE, preset=self.feature_preset, pooling=self.options.scene,
                              **self._kw())
        _check_finite(emb, "scene embeddings")
        return emb.to(torch.float32)

    def describe(self) -> dict:
        """Plain-dict summary (source, trained, preset, encoder config, options) for result records."""
        return {"source": self.source, "trained": self.trained, "features": self.preset,
                "encoder": self.encoder.config.to_dict(), "options": asdict(self.options)}


def _check_finite(x: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise FloatingPointError(f"{what}: {bad} non-finite values (the encoder produced NaN/Inf); "
                                 f"check the checkpoint and the input audio")


def _loud_warning(message: str) -> None:
    banner = "!" * 100
    print(f"\n{banner}\n{message}\n{banner}\n", file=sys.stderr, flush=True)
    warnings.warn(message, stacklevel=3)


def build(model_file_path: str = "", **options) -> HearAuM:
    """Implementation of :func:`hear_api.load_model` (see there). Options split into
    :class:`EmbeddingOptions` fields and, for the random default, ``arch`` (preset name), ``depth``,
    ``seed``. ``$AUM_HEAR_OPTIONS`` (a JSON object) supplies defaults for any of them (explicit options win):
    the way to configure tools that cannot pass options, such as the validator."""
    env_opts = os.environ.get(OPTIONS_ENV, "").strip()
    if env_opts:
        try:
            defaults = json.loads(env_opts)
        except json.JSONDecodeError as e:
            raise ValueError(f"${OPTIONS_ENV} is not valid JSON: {e}") from None
        if not isinstance(defaults, dict):
            raise ValueError(f"${OPTIONS_ENV} must be a JSON object, got {env_opts!r}")
        options = {**defaults, **options}
    arch = options.pop("arch", "tiny")
    depth = options.pop("depth", None)
    seed = int(options.pop("seed", 0))
    names = {f.name for f in fields(EmbeddingOptions)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(f"unknown model option(s) {unknown}; valid: {sorted(names | {'arch', 'depth', 'seed'})}")
    opts = EmbeddingOptions(**options)
    path = str(model_file_path or os.environ.get(DEFAULT_ENV, "") or "")
    if path and path not in ("random", "default"):        # a file, or a registered name / hf:// / URL (aum-models)
        encoder = load_checkpoint(path, map_location="cpu")
        return HearAuM(encoder, opts, source=path if is_reference(path) else os.path.abspath(path), trained=True)
    torch.manual_seed(seed)
    if depth is not None and arch in list_models("dass"):
        raise ValueError(f"depth is an AuM option; {arch!r} is a DASS preset (its depths are the preset's)")
    overrides = {"depth": int(depth)} if depth is not None else {}
    encoder = create_model(arch, **overrides).eval()
    _loud_warning(
        f"hear_api.load_model: no checkpoint given: using the DEFAULT, a RANDOMLY INITIALISED, UNTRAINED "
        f"{type(encoder).__name__} {arch} encoder ({encoder.num_layers} layers, seed {seed}). Its embeddings are "
        f"a chance-level baseline, not a pretrained model. Pass a checkpoint path (hear-validator -m / heareval "
        f"--model) or set ${DEFAULT_ENV}.")
    return HearAuM(encoder, opts, source=f"random:{arch}:depth={encoder.num_layers}:seed={seed}",
                   trained=False, preset="audioset")

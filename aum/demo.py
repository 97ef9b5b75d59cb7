"""``python -m aum`` / ``aum-encode``: encode a clip with an AuM encoder and print what comes out.

With no arguments it encodes a built-in generated 10 s clip with a randomly initialised ``tiny`` encoder,
so it runs on a fresh machine with nothing downloaded. ``--file`` encodes your audio; ``--checkpoint``
loads any checkpoint the library reads (ours, official AuM, the Hugging Face re-upload, Vision Mamba).
"""
from __future__ import annotations

import time

import torch

from aum.audio.io import load_audio
from aum.cli import CommandLine, run_cli
from aum.audio.features import get_preset, waveform_to_features
from aum.models import create_model, list_models
from aum.ops import cuda_kernels


def build_parser() -> CommandLine:
    """Command-line options of the demo (:class:`aum.cli.CommandLine`)."""
    p = CommandLine("aum-encode", __doc__)
    p.add_argument("--file", help="audio file to encode (default: a built-in generated clip)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the generated clip")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated clip and the random init")
    p.add_argument("--preset", default="tiny", choices=list_models(), help="model size (random init)")
    p.add_argument("--mixer", default="v1", choices=["none", "v1", "v2"])
    p.add_argument("--checkpoint", help="load weights (and config) from this checkpoint instead")
    p.add_argument("--norm", default="audioset", help="normalisation preset of the fbank")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def main(argv=None) -> int:
    """Entry point of ``aum-encode`` / ``python -m aum``: encode one clip and print shapes, token count and
    timings. Returns the exit status: 0 done, 2 an input error (audio file, checkpoint, preset; one message)."""
    return run_cli("aum-encode", _encode, argv)


def _encode(argv: list[str]) -> int:
    args = build_parser().parse(argv)
    if args.file:
        wave, source = load_audio(args.file), args.file
    else:
        from aum.audio.synth import generate_clip
        wave, events = generate_clip(seed=args.seed, duration=args.seconds)
        wave = torch.from_numpy(wave)
        source = (f"built-in generated clip (seed {args.seed}, {args.seconds:g} s, "
                  f"{len(events)} events: {', '.join(e['label'] for e in events)})")
    t0 = time.perf_counter()
    feats = waveform_to_features(wave, 16000, preset=args.norm, target_frames=None, name=source)
    t_feat = time.perf_counter() - t0
    torch.manual_seed(args.seed)
    if args.checkpoint:
        from aum.checkpoint import load_checkpoint
        model, what = load_checkpoint(args.checkpoint), f"checkpoint {args.checkpoint}"
    else:
        model, what = create_model(args.preset, mixer=args.mixer), f"{args.preset} / {args.mixer}, random init"
    model = model.to(args.device).eval()
    x = feats.unsqueeze(0).to(args.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.forward_features(x)
    t_model = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    backend = "cuda kernels" if x.is_cuda and cuda_kernels()[0] is not None else "pure PyTorch"
    preset = get_preset(args.norm)
    print(f"audio      : {source}")
    print(f"             {wave.numel()} samples at 16 kHz = {wave.numel() / 16000:.2f} s")
    print(f"fbank      : {tuple(feats.shape)} (frames x mel), normalised with '{preset.name}' "
          f"({t_feat * 1e3:.0f} ms)")
    print(f"model      : AuM {what}; {n_params:.1f}M parameters, mixer {model.config.mixer}, "
          f"class token {model.config.cls_position}; scan: {backend} on {args.device}")
    print(f"tokens     : {out.tokens.shape[1]} patches on a {out.grid[0]} x {out.grid[1]} "
          f"(frequency x time) grid{' + 1 class token' if out.cls is not None else ''}")
    print(f"outputs    : tokens {tuple(out.tokens.shape)}, pooled {tuple(out.pooled.shape)}"
          + (f", logits {tuple(out.logits.shape)}" if out.logits is not None else ""))
    print(f"time       : {t_model:.2f} s for the encoder forward ({wave.numel() / 16000 / t_model:.1f}x real time)")
    print(f"embedding  : first values {[round(v, 4) for v in out.pooled[0, :4].tolist()]}")
    return 0

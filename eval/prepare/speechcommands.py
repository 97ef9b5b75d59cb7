"""Speech Commands (V2: 35 words) from the official archive (speech_commands_v0.02.tar.gz, unpacked).

Layout read::

    ROOT/validation_list.txt    right/bb05582b_nohash_3.wav   (one relative path per line)
    ROOT/testing_list.txt
    ROOT/<word>/<speaker>_nohash_<n>.wav
    ROOT/_background_noise_/    excluded, as every folder starting with "_"

Clips in ``validation_list.txt`` are ``valid``, in ``testing_list.txt`` ``test``, all others ``train``. List entries
match files by word and stem, so a converted copy (``.flac``) counts. The classes are the word folders, sorted.
``group`` is the speaker id (the part before ``_nohash_``).
"""
from __future__ import annotations

from pathlib import Path

from aum.data.datasets import AUDIO_EXTENSIONS
from eval.prepare.common import PrepareError, Prepared, check_splits, missing_error, require_file


def _key(rel: str) -> str:
    rel = rel.strip().replace("\\", "/")
    return rel.rsplit(".", 1)[0] if "." in rel.rsplit("/", 1)[-1] else rel


def _read_list(path: Path) -> set[str]:
    return {_key(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()}


def prepare(root, audio=None) -> Prepared:
    """Manifest entries of Speech Commands under ``root`` (``audio``: another folder holding the word folders)."""
    root = Path(root)
    audio_dir = Path(audio) if audio else root
    valid = _read_list(require_file(root / "validation_list.txt", "validation_list.txt", "speechcommands"))
    test = _read_list(require_file(root / "testing_list.txt", "testing_list.txt", "speechcommands"))
    both = valid & test
    if both:
        raise PrepareError(f"speechcommands: {len(both)} clips are in both validation_list.txt and testing_list.txt")
    if not audio_dir.is_dir():
        raise PrepareError(f"speechcommands: audio folder {audio_dir} not found")
    words = sorted(d.name for d in audio_dir.iterdir() if d.is_dir() and not d.name.startswith(("_", ".")))
    entries, found = [], set()
    for word in words:
        for f in sorted((audio_dir / word).iterdir()):
            if f.suffix.lower() not in AUDIO_EXTENSIONS or not f.is_file():
                continue
            key = f"{word}/{f.stem}"
            found.add(key)
            split = "valid" if key in valid else "test" if key in test else "train"
            entries.append({"path": str(f.resolve()), "labels": [word], "split": split,
                            "group": f.stem.split("_nohash_")[0]})
    if not entries:
        raise PrepareError(f"speechcommands: no audio in word folders under {audio_dir}")
    for name, listed in (("validation_list.txt", valid), ("testing_list.txt", test)):
        missing = sorted(listed - found)
        if missing:
            raise missing_error("speechcommands", [f"{m} (in {name})" for m in missing], len(listed), audio_dir)
    counts = check_splits("speechcommands", entries, ["train", "valid", "test"])
    return Prepared(entries, words, {"splits": counts})

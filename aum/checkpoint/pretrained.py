"""The registry of released weights: each entry names a file (a Hugging Face Hub repository and file, or a URL),
its sha256 when known, the architecture it builds, the feature preset it was trained with and its label set.

    aum.create_model("vim_small_imagenet", pretrained=True)     # resolved and downloaded by aum.checkpoint.hub
    load_checkpoint("dass_small_sslam")                         # any place that takes a checkpoint path
    aum-models                                                  # the table below, with what is cached

Entries only describe; :mod:`aum.checkpoint.hub` finds or downloads the file and :mod:`aum.checkpoint.load`
reads it (the formats of docs/checkpoints.md, which also says where each file comes from). A ``sha256`` of
``None`` means that no published checksum was found: the file is then used as downloaded, unchecked.
"""
from __future__ import annotations

from dataclasses import dataclass

from aum.config import UnknownPresetError

__all__ = ["Pretrained", "PRETRAINED", "LABEL_SETS", "IMAGENET", "get_pretrained", "list_pretrained",
           "lookup", "HF_DEFAULT_FILES"]

#: The weights file of a Hugging Face repository whose entry names none, in the order tried.
HF_DEFAULT_FILES = ("model.safetensors", "pytorch_model.bin")

#: Label sets of the entries: the classes of a head, in the order of its outputs.
LABEL_SETS = {
    "imagenet1k": "the 1000 ImageNet-1k classes (an image head: dropped when loaded as an audio encoder)",
    "audioset": "the 527 AudioSet classes, in the index order of AudioSet's class_labels_indices.csv "
                "(index, mid, display_name; 0 = Speech)",
    "vggsound": "the 309 VGGSound classes, in the order of the official recipe's class-label index csv",
    "voxceleb1": "the 1251 VoxCeleb1 identification speakers, in the order of the official recipe's index csv",
    "speechcommands_v2": "the 35 Speech Commands V2 words, in the order of the official recipe's index csv",
    "epic_sounds": "the 44 EPIC-Sounds classes, in the order of the EPIC-Sounds annotations",
}


@dataclass(frozen=True)
class Pretrained:
    """One released file. ``hub`` (``org/repo``, with ``filename`` and an optional pinned ``revision``; no
    ``filename``: :data:`HF_DEFAULT_FILES`) or ``url`` (``filename`` is then the name it is cached under);
    ``extra_files`` are fetched beside a Hub file when the repository has them (``config.json``). The
    architecture: ``family`` (``aum`` / ``dass``), ``preset`` (a model preset), ``arch`` (further config fields,
    as ``(key, value)`` pairs) and ``num_classes`` (the file's head); ``features`` is the feature preset it
    was trained with (None: none, an image model), ``labels`` a key of :data:`LABEL_SETS`, ``init`` what it is
    as an initialisation (``imagenet`` or ``official``, the result records' vocabulary), ``note`` what a user
    should know (where no direct link exists, what is unverified)."""

    name: str
    family: str
    preset: str
    num_classes: int
    description: str
    hub: str | None = None
    filename: str | None = None
    revision: str | None = None
    url: str | None = None
    sha256: str | None = None
    arch: tuple = ()
    features: str | None = None
    labels: str | None = None
    init: str = "official"
    extra_files: tuple = ()
    note: str = ""

    @property
    def source(self) -> str:
        """Where the file lives: ``hf://org/repo[@rev][/file]`` or the URL."""
        if self.hub:
            rev = f"@{self.revision}" if self.revision else ""
            return f"hf://{self.hub}{rev}" + (f"/{self.filename}" if self.filename else "")
        return str(self.url)

    @property
    def config_overrides(self) -> dict:
        """The config fields beside the preset that build this entry's architecture (random weights)."""
        return {**dict(self.arch), "num_classes": self.num_classes}


def _gdrive(file_id: str) -> str:
    """The direct-download form of a Google Drive file (``confirm=t`` skips the page Drive shows for files it
    cannot scan for viruses, i.e. every checkpoint)."""
    return f"https://drive.google.com/uc?export=download&id={file_id}&confirm=t"


_AUM_NOTE = ("official release of kaistmm/Audio-Mamba-AuM (README 'Model Checkpoints', Google Drive); no checksum "
             "is published. If Drive answers with a web page instead of the file, download it in a browser and "
             "put it where the error says")
# (task, benchmark feature preset, label set, classes, extra config) of the official AuM releases
_TASKS = {
    "audioset": ("audioset", "audioset", 527, ()),
    "as20k": ("audioset20k", "audioset", 527, ()),
    "vggsound": ("vggsound", "vggsound", 309, ()),
    "voxceleb": ("voxceleb", "voxceleb1", 1251, ()),
    "speechcommands": ("speechcommands", "speechcommands_v2", 35, (("target_frames", 128),)),
    "epic_sounds": ("epic_sounds", "epic_sounds", 44, ()),
}
# (name, Google Drive file id, what, reported score) from the official README
_AUM_RELEASES = (
    ("aum_base_audioset", "1QgnyvGYxKd-q6twXf4i05jZA5xFIFs8j", "base Fo-Bi from scratch", "mAP 32.74"),
    ("aum_base_as20k", "11cbL_vizFFD7i6RvErSSEi9E3gRRIQWA", "base Fo-Bi from scratch", "mAP 14.05"),
    ("aum_base_vggsound", "1eAn8WEkfnB5pdon8o3PZMwFBsuuPu2L0", "base Fo-Bi from scratch", "acc 42.97"),
    ("aum_base_voxceleb", "1Y3LboHg1RYLsuoKfOT3u4odF6opJZXlw", "base Fo-Bi from scratch", "acc 33.12"),
    ("aum_base_speechcommands", "1wLFjYZxvJs2YBvDLYqOxVhMJnPKfhX5Z", "base Fo-Bi from scratch", "acc 94.44"),
    ("aum_base_epic_sounds", "1vLX3LjAggNAusW6B17s9uc2OoduvnvJi", "base Fo-Bi from scratch", "acc 44.92"),
    ("aum_small_imagenet_audioset", "1z-JdZTy52gW7RzhiTQozn6Ly2W4DOs9b", "small Bi-Bi, ImageNet init", "mAP 39.74"),
    ("aum_small_imagenet_as20k", "1XDlZEHe0xQXnOLFh3CJVaS5cmZW_7C-t", "small Bi-Bi, ImageNet init", "mAP 29.17"),
    ("aum_small_imagenet_vggsound", "11mEtjfHjkGGFjxVHvXIAX60KrBgWwWhQ", "small Bi-Bi, ImageNet init", "acc 49.61"),
    ("aum_small_imagenet_voxceleb", "1NoherLBbOP5eE1iMQ8joas1k0lYwAmd8", "small Bi-Bi, ImageNet init", "acc 41.78"),
    ("aum_small_imagenet_speechcommands", "1jhUKxzUo2TMHrd1a2vojjv1x9De_HyFe", "small Bi-Bi, ImageNet init",
     "acc 97.61"),
    ("aum_small_imagenet_epic_sounds", "1i9ANh01FWB8UY9ruQ81Ov5UnoXuhq0PQ", "small Bi-Bi, ImageNet init",
     "acc 53.45"),
    ("aum_base_audioset_vggsound", "1spsJXncpEXHKmIvDcB7ddkcgrzARpEeK", "base Fo-Bi, AudioSet init", "acc 46.78"),
    ("aum_base_audioset_voxceleb", "1dqWSIKTvA0wqKy-XTXYn-MUourMtHGrQ", "base Fo-Bi, AudioSet init", "acc 41.82"),
    ("aum_base_audioset_speechcommands", "1ikkU4COOqeCNCVTn4b7LulNr9p4Efr4M", "base Fo-Bi, AudioSet init",
     "acc 94.82"),
    ("aum_base_audioset_epic_sounds", "1wsRhPqtHryi3PQz1WPJYkMMOPbmOMXrV", "base Fo-Bi, AudioSet init", "acc 48.31"),
)


def _aum_release(name: str, file_id: str, what: str, score: str) -> Pretrained:
    task = next(t for t in _TASKS if name.endswith("_" + t))
    features, labels, classes, extra = _TASKS[task]
    size = name.split("_")[1]
    return Pretrained(name, "aum", size, classes, f"AuM {what}, fine-tuned on {task} ({score}, official)",
                      url=_gdrive(file_id), filename=f"{name}.pth",
                      arch=(("mixer", "v1" if size == "base" else "v2"),) + extra, features=features,
                      labels=labels, note=_AUM_NOTE)


_DASS_NOTE = ("Hugging Face port of Saurabhbhati/DASS (transformers-DASS layout); the weights file name is not "
              "published in the model card, so model.safetensors, then pytorch_model.bin, is tried; no checksum "
              "is published. The original .pth files are on the DASS GitHub releases page")
# (name, Hub repository, teacher, AudioSet-2M mAP)
_DASS_RELEASES = (
    ("dass_small_ast", "saurabhati/DASS_small_AudioSet_47.2", "AST", "47.2"),
    ("dass_small_ast_htsat", "saurabhati/DASS_small_AudioSet_48.6", "AST + HTS-AT", "48.6"),
    ("dass_small_sslam", "saurabhati/DASS_small_AudioSet_50.1", "SSLAM", "50.1"),
    ("dass_medium_ast", "saurabhati/DASS_medium_AudioSet_47.6", "AST", "47.6"),
    ("dass_medium_ast_htsat", "saurabhati/DASS_medium_AudioSet_48.9", "AST + HTS-AT", "48.9"),
    ("dass_medium_sslam", "saurabhati/DASS_medium_AudioSet_50.2", "SSLAM", "50.2"),
)


def _dass_release(name: str, repo: str, teacher: str, score: str) -> Pretrained:
    preset = "_".join(name.split("_")[:2])
    return Pretrained(name, "dass", preset, 527, f"DASS {preset.split('_')[1]}, AudioSet-2M, distilled from "
                                               f"{teacher} (mAP {score})",
                      hub=repo, features="audioset", labels="audioset", extra_files=("config.json",),
                      note=_DASS_NOTE)


PRETRAINED: dict[str, Pretrained] = {e.name: e for e in (
    Pretrained("vim_small_imagenet", "aum", "small", 1000,
               "Vision Mamba small, ImageNet-1k (80.5% top-1, middle class token): the AuM-S initialisation",
               hub="hustvl/Vim-small-midclstok", filename="vim_s_midclstok_80p5acc.pth",
               revision="babc4440f5fab6e08d97e371afa639c8cf98bf2c",
               sha256="aae4583e2def6389b66cfaf292cfade47a873182a39adbec19ec55b730ea9fe3",
               arch=(("mixer", "v2"),), labels="imagenet1k", init="imagenet",
               note="image weights: loading converts them (RGB patches averaged, position grid resized, head "
                    "dropped); sha256 as the Hub's LFS record states it"),
    Pretrained("aum_base_audioset_vggsound_hf", "aum", "base", 309,
               "AuM base Fo-Bi, AudioSet init, fine-tuned on VGGSound: a Hugging Face re-upload",
               hub="Robzy/audiomamba", filename="model.safetensors", extra_files=("config.json",),
               arch=(("mixer", "v1"),), features="vggsound", labels="vggsound",
               note="third-party re-upload (model.safetensors + config.json) of the official "
                    "aum_base_audioset_vggsound; no checksum is published"),
    *(_aum_release(*r) for r in _AUM_RELEASES),
    *(_dass_release(*r) for r in _DASS_RELEASES),
)}

#: The entry ``--init imagenet`` means when no file is given (the AuM-S initialisation of the paper).
IMAGENET = "vim_small_imagenet"


def list_pretrained(family: str | None = None) -> list[str]:
    """The registered names (of one ``family``, ``aum`` or ``dass``, when given), in registry order."""
    return [n for n, e in PRETRAINED.items() if family in (None, e.family)]


def lookup(ref) -> Pretrained | None:
    """The entry named ``ref``, or None (for a path, a URL, anything not a registered name)."""
    return PRETRAINED.get(ref) if isinstance(ref, str) else None


def get_pretrained(name: str) -> Pretrained:
    """The entry ``name``; an unknown name raises :class:`aum.config.UnknownPresetError` (a ``KeyError`` and a
    ``ValueError``) listing the registered ones."""
    entry = lookup(name)
    if entry is None:
        raise UnknownPresetError(f"no released weights named {name!r}; registered: {', '.join(PRETRAINED)} "
                                 f"(aum-models lists them)")
    return entry

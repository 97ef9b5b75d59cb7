"""Turning a checkpoint reference into a local file: a registered name (:mod:`aum.checkpoint.pretrained`),
``hf://org/repo[@revision][/file]``, an ``https://`` / ``http://`` / ``file://`` URL, or a plain path.

- Hugging Face files go through ``huggingface_hub.hf_hub_download``: its cache (``HF_HOME``, ``HF_HUB_CACHE``),
  its resumable downloads and progress bar, and offline mode (``HF_HUB_OFFLINE=1``: only the cache is read). A
  reference without a file takes the entry's, else ``model.safetensors`` (then ``pytorch_model.bin``);
  ``config.json`` is fetched beside it when the repository has one.
- Other URLs are downloaded into ``$AUM_CACHE/pretrained/<name>/<file>`` (default ``~/.cache/aum``; the root that
  the fused scan's kernel cache uses too): streamed into a temporary file beside the target, its sha256 checked
  (when the entry has one) and its first bytes checked to be a checkpoint, then renamed into place
  (:func:`aum.atomic.atomic_write`), so a half or wrong download is never used. Offline mode applies to them too.
- A plain path is returned as it is; an existing path wins over a registered name of the same spelling.

A sha256 mismatch is a :class:`~aum.checkpoint.CheckpointError` naming the file; a file that cannot be had
(offline, or no connection) is ONE error naming the entry, the file it needs and where to put it.
"""
from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from aum.atomic import atomic_write
from aum.checkpoint.files import head_format
from aum.checkpoint.pretrained import HF_DEFAULT_FILES, Pretrained, lookup
from aum.checkpoint.state_dict import CheckpointError
from aum.ops.scan_fused import cache_root as _kernel_cache

__all__ = ["cache_root", "resolve", "cached", "is_reference", "check_reference", "parse_hf", "url_target",
           "offline"]

URL_SCHEMES = ("https://", "http://", "file://")
HF_SCHEME = "hf://"
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CHUNK = 1 << 20


def cache_root() -> Path:
    """``$AUM_CACHE`` when set, else ``~/.cache/aum``: the one cache root of aum (kernels, downloads)."""
    return _kernel_cache().parent


def offline() -> bool:
    """Whether downloads are off: ``HF_HUB_OFFLINE`` set to a true value (1, true, yes, on), read at call time."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def is_reference(ref) -> bool:
    """Whether ``ref`` is a registered name, an ``hf://`` reference or a URL rather than a plain path (an
    existing file or folder of that spelling counts as a path)."""
    if not isinstance(ref, str) or Path(ref).exists():
        return False
    return lookup(ref) is not None or ref.startswith((HF_SCHEME,) + URL_SCHEMES)


def parse_hf(ref: str) -> tuple[str, str | None, str | None]:
    """``hf://org/repo[@revision][/path/in/repo]`` -> ``(repo_id, revision or None, filename or None)``;
    a malformed reference raises ``ValueError`` saying the form."""
    rest = ref[len(HF_SCHEME):] if ref.startswith(HF_SCHEME) else ref
    parts = [p for p in rest.split("/") if p]
    if len(parts) < 2:
        raise ValueError(f"{ref!r}: a Hugging Face reference is hf://org/repo[@revision][/file]")
    name, _, revision = parts[1].partition("@")
    repo = f"{parts[0]}/{name}"
    if not _REPO.match(repo) or (_ and not revision):
        raise ValueError(f"{ref!r}: {repo!r} is not a Hub repository id (hf://org/repo[@revision][/file])")
    return repo, revision or None, "/".join(parts[2:]) or None


def url_target(url: str, entry: Pretrained | None = None) -> Path:
    """Where a URL's file is cached: ``<cache>/pretrained/<entry name>/<entry filename>`` for a registered
    entry, else ``<cache>/downloads/<16 hex of the URL's sha256>/<the URL's file name>``."""
    if entry is not None:
        return cache_root() / "pretrained" / entry.name / (entry.filename or f"{entry.name}.bin")
    name = Path(urllib.parse.urlparse(url).path).name or "checkpoint"
    return cache_root() / "downloads" / hashlib.sha256(url.encode()).hexdigest()[:16] / name


def check_reference(ref) -> str:
    """Check ``ref`` without downloading anything and return what it is (``"name"``, ``"hf"``, ``"url"``,
    ``"path"``): a registered name, a well-formed ``hf://`` reference or URL, or an existing path. Anything else
    raises ``FileNotFoundError`` (a missing path: with the hint that names are listed by ``aum-models``) or
    ``ValueError`` (a malformed reference)."""
    if not is_reference(ref):
        if not Path(ref).exists():
            raise FileNotFoundError(f"no checkpoint at {ref} (neither a file nor a registered name: aum-models "
                                    f"lists the names)")
        return "path"
    if lookup(ref) is not None:
        return "name"
    if ref.startswith(HF_SCHEME):
        parse_hf(ref)
        return "hf"
    if not urllib.parse.urlparse(ref).path.strip("/"):
        raise ValueError(f"{ref!r}: a URL needs a file path")
    return "url"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _verify(path: Path, sha256: str | None, what: str) -> Path:
    """``path`` when its sha256 is ``sha256`` (or none is known); a Hub blob named by its sha256 is trusted by
    name. A mismatch raises :class:`CheckpointError` naming the file."""
    if sha256 is None or Path(os.path.realpath(path)).name == sha256:
        return path
    digest = _sha256(path)
    if digest != sha256:
        raise CheckpointError(f"{path}: sha256 {digest} is not the {sha256} that {what} expects; the file is "
                              f"damaged or another release: delete it and fetch it again")
    return path


def _unavailable(what: str, file: str, where: str, reason: str) -> CheckpointError:
    return CheckpointError(f"{what} needs {file}, which is not cached and cannot be downloaded ({reason}). "
                           f"{where}, or pass the path of a copy instead of the name")


def _hf(repo: str, revision: str | None, filename: str | None, extra: tuple, sha256: str | None,
        what: str) -> Path:
    """A Hub file through ``hf_hub_download`` (the cache only when :func:`offline`), plus the ``extra`` files it
    has; the one clear error when none of the candidate names can be had."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)
    local_only = offline() or constants.HF_HUB_OFFLINE
    names = (filename,) if filename else HF_DEFAULT_FILES
    reasons = []
    for name in names:
        try:
            path = Path(hf_hub_download(repo, name, revision=revision, local_files_only=local_only))
            break
        except (RepositoryNotFoundError, RevisionNotFoundError) as e:
            raise CheckpointError(f"{what}: the Hub has no {repo}{'@' + revision if revision else ''} "
                                  f"({type(e).__name__})") from None
        except LocalEntryNotFoundError as e:         # not cached, and offline or no connection
            reasons.append("HF_HUB_OFFLINE is set" if local_only else f"no connection: {str(e).splitlines()[0]}")
        except EntryNotFoundError:                   # the repository exists but has no such file
            reasons.append(f"the repository has no {name}")
        except (HfHubHTTPError, OSError) as e:
            reasons.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    else:
        files = " or ".join(names)
        rev = f" --revision {revision}" if revision else ""
        raise _unavailable(what, f"{files} of the Hugging Face repository {repo}", (
            f"Fetch it where there is a network (`hf download {repo} {names[0]}{rev}`) and copy the folder "
            f"models--{repo.replace('/', '--')} of that Hub cache into {constants.HF_HUB_CACHE} (the Hub cache here: "
            f"HF_HOME / HF_HUB_CACHE)"), "; ".join(dict.fromkeys(reasons)))
    for name in extra:
        try:
            hf_hub_download(repo, name, revision=revision, local_files_only=local_only)
        except (EntryNotFoundError, HfHubHTTPError, OSError):
            pass                                     # optional: a repository without it still loads
    return _verify(path, sha256, what)


def _fetch(url: str, target: Path, sha256: str | None, what: str) -> Path:
    """``url`` into ``target`` through a temporary file: renamed into place only when complete, of the
    expected sha256 and starting like a checkpoint."""
    if offline():
        raise _unavailable(what, f"{target.name} from {url}", f"Download it by hand and put it at {target}",
                           "HF_HUB_OFFLINE is set")
    from tqdm import tqdm
    target.parent.mkdir(parents=True, exist_ok=True)

    def write(fh) -> None:
        try:
            response = urllib.request.urlopen(url, timeout=60)   # noqa: S310 - http(s) and file URLs by design
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise _unavailable(what, f"{target.name} from {url}", f"Download it by hand and put it at {target}",
                               f"{type(e).__name__}: {e}") from None
        h, head = hashlib.sha256(), b""
        size = response.headers.get("Content-Length")
        with response, tqdm(total=int(size) if size and size.isdigit() else None, unit="B", unit_scale=True,
                            desc=target.name, disable=None) as bar:
            while block := response.read(_CHUNK):
                head = head if len(head) >= 9 else (head + block)[:9]
                h.update(block)
                fh.write(block)
                bar.update(len(block))
        if sha256 is not None and h.hexdigest() != sha256:
            raise CheckpointError(f"{target}: the download from {url} has sha256 {h.hexdigest()}, not the "
                                  f"{sha256} that {what} expects; it was discarded (nothing kept in the cache)")
        if head_format(head) is None:
            raise CheckpointError(f"{target}: the download from {url} is not a checkpoint (it starts with "
                                  f"{head!r}; a web page?); it was discarded. Download the file by hand and put "
                                  f"it at {target}")

    atomic_write(target, write)
    return target


def cached(ref) -> Path | None:
    """The local file of ``ref`` if it is already there (a path that exists, a cached Hub or URL file), else
    None; never downloads."""
    if not is_reference(ref):
        return Path(ref) if Path(ref).exists() else None
    entry = lookup(ref)
    url = entry.url if entry else (ref if ref.startswith(URL_SCHEMES) else None)
    if url is not None:
        target = url_target(url, entry)
        return target if target.is_file() else None
    from huggingface_hub import try_to_load_from_cache
    repo, revision, filename = (entry.hub, entry.revision, entry.filename) if entry else parse_hf(ref)
    for name in (filename,) if filename else HF_DEFAULT_FILES:
        hit = try_to_load_from_cache(repo, name, revision=revision)
        if isinstance(hit, str):
            return Path(hit)
    return None


def resolve(ref) -> Path:
    """The local file (or folder) ``ref`` stands for, downloading it when needed (see the module docstring).
    A plain path is returned unchanged, existing or not (the reader says when it is missing)."""
    if not is_reference(ref):
        return Path(ref)
    entry = lookup(ref)
    if entry is not None:
        what = f"registry entry {entry.name!r}"
        if entry.hub:
            return _hf(entry.hub, entry.revision, entry.filename, entry.extra_files, entry.sha256, what)
        target = url_target(entry.url, entry)
        if target.is_file():
            return _verify(target, entry.sha256, what)
        return _fetch(entry.url, target, entry.sha256, what)
    if ref.startswith(HF_SCHEME):
        repo, revision, filename = parse_hf(ref)
        return _hf(repo, revision, filename, () if filename else ("config.json",), None, ref)
    target = url_target(ref)
    return target if target.is_file() else _fetch(ref, target, None, ref)

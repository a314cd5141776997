"""Model weights on disk: found in a cache folder, or downloaded once into it and checked, as ``clip.load`` does.

`clip_weights` resolves an OpenAI CLIP name (``ViT-B/32``) to its file in ``~/.cache/clip`` (or
``--clip-cache`` / ``VTR_CLIP_CACHE``). A missing file is downloaded from OpenAI's URL, whose
second-to-last path component is the file's SHA256, unless downloads are off (``vtr extract --offline``
or ``VTR_OFFLINE=1``): then the error says which file to copy where, as it does when the network cannot
be reached.

`open_clip_weights` does the same for an open_clip pretrained tag (docs/backbones.md): open_clip's own
caches first, then a download checked against the checksum the hub or the URL publishes.

`download` is the generic part (any URL, an optional SHA256 or its prefix, a destination): a progress
bar, a ``.part`` file that a later run resumes with an HTTP Range request when the server supports it, the checksum verified before an atomic rename (a partial or wrong download never passes for
the file), and a lock so that two processes (Ray shards on one machine) do not write one file.

It uses the standard library's urllib: one GET with a Range header is all it needs, and it adds no
dependency to a package that must install on a stock Python.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

from vtr.core.files import sha256_file

# OpenAI's CLIP weight files (the names clip.available_models() lists). The SHA256 of each file is the
# second-to-last component of its URL.
_OPENAI = "https://openaipublic.azureedge.net/clip/models"
OPENAI_CLIP_URLS = {
    "RN50": f"{_OPENAI}/afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
    "RN101": f"{_OPENAI}/8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599/RN101.pt",
    "RN50x4": f"{_OPENAI}/7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd/RN50x4.pt",
    "RN50x16": f"{_OPENAI}/52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa/RN50x16.pt",
    "RN50x64": f"{_OPENAI}/be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c/RN50x64.pt",
    "ViT-B/32": f"{_OPENAI}/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
    "ViT-B/16": f"{_OPENAI}/5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
    "ViT-L/14": f"{_OPENAI}/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
    "ViT-L/14@336px": f"{_OPENAI}/3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
}

# For tests only: a JSON file {name: url} whose entries replace or extend OPENAI_CLIP_URLS, so the tests can
# serve a small checkpoint from 127.0.0.1. Not a user setting.
TEST_URLS_ENV = "VTR_TEST_MODEL_URLS"
OFFLINE_ENV = "VTR_OFFLINE"
CACHE_ENV = "VTR_CLIP_CACHE"

CHUNK = 1 << 20
TIMEOUT_S = 30.0  # seconds without a byte before a connection counts as stalled


class WeightsError(RuntimeError):
    """Weights that could not be found or fetched; the message is one line naming the file or URL."""


class ClipWeightsMissing(WeightsError):
    """The named CLIP weights are not on this machine and cannot be downloaded now (offline or unreachable)."""


class DownloadError(WeightsError):
    """A download failed (HTTP error, interrupted transfer, wrong checksum)."""


class NetworkUnreachable(DownloadError):
    """The server could not be reached at all (no route, no DNS, refused, timed out)."""


def default_clip_cache() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "clip"))


def offline_requested(offline: bool | None = None) -> bool:
    """``offline`` when given; else whether ``VTR_OFFLINE`` is set to 1/true/yes/on."""
    if offline is not None:
        return bool(offline)
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def clip_model_urls() -> dict[str, str]:
    """OpenAI's name -> URL table, with the test-only overrides of ``VTR_TEST_MODEL_URLS`` applied."""
    table = dict(OPENAI_CLIP_URLS)
    override = os.environ.get(TEST_URLS_ENV)
    if override:
        table.update(json.loads(Path(override).read_text()))
    return table


def url_sha256(url: str) -> str:
    """The SHA256 OpenAI put in a weights URL (its second-to-last path component)."""
    return urllib.parse.urlsplit(url).path.split("/")[-2]




def clip_weights(name: str, root=None, *, offline: bool | None = None, progress: bool = True,
                 log: Callable[[str], None] | None = None) -> tuple[Path, str]:
    """(path, SHA256) of OpenAI's weights file for ``name`` in ``root`` (default `default_clip_cache`),
    downloaded first when missing and downloads are allowed. Raises `ClipWeightsMissing` or
    `DownloadError` with one line saying what to do."""
    url = clip_model_urls()[name]
    root = Path(root) if root else default_clip_cache()
    path = root / os.path.basename(urllib.parse.urlsplit(url).path)
    expected = url_sha256(url)
    copy_it = (f"Copy OpenAI's file {path.name} ({url}) to {root} (or set --clip-cache / {CACHE_ENV} to the folder "
               f"holding it), or pass --clip /path/to/checkpoint.pt. For an offline run whose numbers mean nothing "
               f"for real retrieval, use --clip random:tiny.")
    if path.is_file():
        digest = sha256_file(path)
        if digest != expected:
            raise ClipWeightsMissing(f"{path}: SHA256 {digest[:12]}... does not match OpenAI's {expected[:12]}... "
                                     f"for {name}; the file is damaged or another model (delete it to download "
                                     "it again)")
        return path, digest
    if offline_requested(offline):
        why = "--offline" if offline else f"{OFFLINE_ENV}=1"
        raise ClipWeightsMissing(f"CLIP weights for {name} are not on this machine (looked for {path}), and "
                                 f"downloads are off ({why}). {copy_it}")
    try:
        download(url, path, expected, progress=progress, log=log)
    except NetworkUnreachable as e:
        raise ClipWeightsMissing(f"CLIP weights for {name} are not on this machine (looked for {path}), and the "
                                 f"network is unreachable: {e}. {copy_it}") from None
    return path, expected


# ----------------------------------------------------------------------------- downloading


class _Stopped(Exception):
    """The transfer ended before the whole file arrived; the .part file holds what did."""


def _open(url: str, have: int, timeout: float):
    headers = {"User-Agent": "vtr (urllib)"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:
            return None  # the .part is not a prefix this server can continue: the caller starts over
        raise DownloadError(f"{url}: the server answered HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        host = urllib.parse.urlsplit(url).netloc
        raise NetworkUnreachable(f"cannot reach {host} ({reason})") from None


def _fetch(url: str, part: Path, hasher, progress: bool, timeout: float) -> None:
    """Append the rest of ``url`` to ``part`` (all of it when ``part`` is empty or the server ignores Range),
    feeding ``hasher`` every byte of the file. Raises `_Stopped` if the body ends early."""
    from tqdm.auto import tqdm

    have = part.stat().st_size if part.is_file() else 0
    resp = _open(url, have, timeout)
    if resp is None:
        part.unlink()
        have, resp = 0, _open(url, 0, timeout)
    with resp:
        resumed = have > 0 and resp.status == 206 and resp.headers.get("Content-Range", "").startswith(f"bytes {have}-")
        if resumed:
            with open(part, "rb") as f:  # the bytes already here count toward the checksum
                for block in iter(lambda: f.read(CHUNK), b""):
                    hasher.update(block)
        else:
            have = 0
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        size = have
        with open(part, "ab" if resumed else "wb") as f, \
                tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                     desc=part.name[:-len(".part")], disable=not progress, leave=False) as bar:
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except (OSError, http.client.HTTPException) as e:  # reset, timeout, IncompleteRead
                    raise _Stopped(f"{size} of {total or '?'} bytes ({e})") from None
                if not chunk:
                    break
                f.write(chunk)
                hasher.update(chunk)
                size += len(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
    if total is not None and size != total:
        raise _Stopped(f"{size} of {total} bytes")


def download(url: str, dest, sha256: str | None = None, *, progress: bool = True, attempts: int = 3,
             timeout: float = TIMEOUT_S, log: Callable[[str], None] | None = None) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``; returns ``dest``.

    A transfer that stops partway is resumed from the .part (an HTTP Range request; a server that ignores
    it sends the whole file again), up to ``attempts`` times here and again by any later call. With
    ``sha256`` (the full hex digest, or the prefix of it that open_clip's release file names carry), the
    file must match it before it is renamed into place: a mismatch removes the .part and
    raises `DownloadError` naming the URL, the expected and the received checksum. An unreachable server
    raises `NetworkUnreachable`. Two processes downloading one ``dest`` take turns (a lock beside it).
    """
    from filelock import FileLock, Timeout

    log = log or (lambda msg: None)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    lock = FileLock(str(dest.with_name(f".{dest.name}.lock")))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"waiting for another process downloading {dest}")
        lock.acquire()
    try:
        if dest.is_file():  # the other process finished it
            return dest
        log(f"downloading {url} -> {dest}" + (f" (resuming {part.stat().st_size} bytes)" if part.is_file() else ""))
        for attempt in range(1, attempts + 1):
            hasher = hashlib.sha256()
            try:
                _fetch(url, part, hasher, progress, timeout)
                break
            except _Stopped as e:
                if attempt == attempts:
                    raise DownloadError(f"{url}: the transfer stopped after {e}; {part} keeps what arrived and the "
                                        "next run resumes it") from None
                log(f"{url}: the transfer stopped after {e}; resuming")
        got = hasher.hexdigest()
        if sha256 and not got.startswith(sha256.lower()):  # a full SHA256, or the prefix a file name carries
            part.unlink()
            raise DownloadError(f"{url}: SHA256 mismatch: expected {sha256}, got {got}; the download was removed")
        os.replace(part, dest)
        return dest
    finally:
        lock.release()


# ----------------------------------------------------------------------------- open_clip's weights

# huggingface_hub's own setting for a mirror of the hub; the tests point it at a server on 127.0.0.1.
HF_ENDPOINT_ENV = "HF_ENDPOINT"
# open_clip's weight file names on the hub (open_clip.constants); the safetensors one is tried first, as
# open_clip does.
HF_SAFE_WEIGHTS, HF_WEIGHTS = "open_clip_model.safetensors", "open_clip_pytorch_model.bin"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def published_sha256(url: str) -> str | None:
    """The checksum a weights URL publishes, as open_clip reads it: OpenAI's SHA256 (second-to-last path
    component), or the SHA256 prefix ending the name of open_clip's release files on GitHub
    (``.../mlfoundations/...-d867053b.pt``); None when it publishes none."""
    parts = urllib.parse.urlsplit(url).path.split("/")
    if len(parts) >= 2 and _SHA256.fullmatch(parts[-2]):
        return parts[-2]
    m = re.search(r"-([0-9a-f]{8,64})\.[A-Za-z]+$", parts[-1])
    return m.group(1) if m and "mlfoundations" in url else None


def _hf_files(hf_hub: str) -> tuple[str, list[str]]:
    """(repo id, file names to try, best first) of an open_clip ``hf_hub`` entry: ``org/repo/`` (open_clip's
    default file) or ``org/repo/file``."""
    repo, name = os.path.split(hf_hub)
    name = name or HF_WEIGHTS
    safe = [HF_SAFE_WEIGHTS] if name == HF_WEIGHTS else [name[:-4] + ".safetensors"] if name.endswith((".bin", ".pth")) else []
    return repo, safe + [name]


def _hf_cached(repo: str, name: str) -> Path | None:
    """The file in huggingface_hub's cache, where open_clip's own downloads go; None if it is not there."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # open_clip without the hub client: nothing can be in its cache
        return None
    found = try_to_load_from_cache(repo, name)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # the hub's first answer (a redirect to its CDN) is the one that carries the SHA256


def hub_file_sha256(url: str, timeout: float = TIMEOUT_S) -> tuple[bool, str | None]:
    """Whether the hub holds the file at ``url``, and the SHA256 it publishes for it: the ``X-Linked-Etag``
    header of a file stored with Git LFS, as weight files are (None when absent). One HEAD request."""
    req = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "vtr (urllib)"})
    try:
        with urllib.request.build_opener(_NoRedirect).open(req, timeout=timeout) as resp:
            headers = resp.headers
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return False, None
        if e.code not in (301, 302, 303, 307, 308):
            raise DownloadError(f"{url}: the server answered HTTP {e.code} {e.reason}") from None
        headers = e.headers
    except (urllib.error.URLError, OSError) as e:
        raise NetworkUnreachable(f"cannot reach {urllib.parse.urlsplit(url).netloc} "
                                 f"({getattr(e, 'reason', e)})") from None
    tag = (headers.get("X-Linked-Etag") or "").removeprefix("W/").strip('"').lower()
    return True, tag if _SHA256.fullmatch(tag) else None


def _checked(path: Path, expected: str | None, label: str) -> str:
    """``path``'s SHA256, refused (`ClipWeightsMissing`) when it does not start with ``expected``."""
    digest = sha256_file(path)
    if expected and not digest.startswith(expected):
        raise ClipWeightsMissing(f"{path}: SHA256 {digest[:12]}... does not match the published {expected[:12]}... "
                                 f"for {label}; the file is damaged or another model (delete it to download it again)")
    return digest


def open_clip_weights(label: str, cfg: dict, root=None, *, offline: bool | None = None, progress: bool = True,
                      log: Callable[[str], None] | None = None) -> tuple[Path, str]:
    """(path, SHA256) of the weights that open_clip's pretrained entry ``cfg`` (its ``hf_hub`` and ``url``)
    names; ``label`` (``ARCH:TAG``) is for messages.

    Looked for first where open_clip keeps them: huggingface_hub's cache (checked against the SHA256 its
    blob is named by) and, for a URL, ``root/<file name>``; then in vtr's own download folder
    ``root/open_clip/<org>--<repo>/``. Missing: downloaded there with `download` (progress, resume, the
    published checksum, atomic rename, lock) unless downloads are off, which raises `ClipWeightsMissing`."""
    root = Path(root) if root else default_clip_cache()
    wanted: list[tuple[str, Path, bool]] = []  # (url, destination, on the hub)
    if cfg.get("hf_hub"):
        repo, names = _hf_files(cfg["hf_hub"])
        for name in names:
            cached = _hf_cached(repo, name)
            if cached is not None:
                blob = cached.resolve().name
                return cached, _checked(cached, blob if _SHA256.fullmatch(blob) else None, label)
        endpoint = os.environ.get(HF_ENDPOINT_ENV, "https://huggingface.co").rstrip("/")
        wanted += [(f"{endpoint}/{repo}/resolve/main/{name}", root / "open_clip" / repo.replace("/", "--") / name, True)
                   for name in names]
    if cfg.get("url"):
        url = cfg["url"]
        wanted.append((url, root / os.path.basename(urllib.parse.urlsplit(url).path), False))
    if not wanted:
        raise ClipWeightsMissing(f"open_clip {label}: its pretrained entry names no file to load")
    for url, dest, on_hub in wanted:
        if dest.is_file():
            return dest, _checked(dest, None if on_hub else published_sha256(url), label)
    first = wanted[0]
    if offline_requested(offline):
        why = "--offline" if offline else f"{OFFLINE_ENV}=1"
        raise ClipWeightsMissing(f"open_clip weights {label} are not on this machine (looked for {first[1]}), and "
                                 f"downloads are off ({why}). Copy {first[0]} to {first[1]}, or pass --clip "
                                 f"open_clip:ARCH:/path/to/weights.safetensors.")
    try:
        for url, dest, on_hub in wanted:
            if on_hub:
                exists, sha256 = hub_file_sha256(url)
                if not exists:
                    continue
                if sha256 is None:
                    log and log(f"{url}: the hub publishes no SHA256 for it; it is downloaded unchecked")
            else:
                sha256 = published_sha256(url)
            download(url, dest, sha256, progress=progress, log=log)
            return dest, sha256 if sha256 and len(sha256) == 64 else sha256_file(dest)
    except NetworkUnreachable as e:
        raise ClipWeightsMissing(f"open_clip weights {label} are not on this machine (looked for {first[1]}), and "
                                 f"the network is unreachable: {e}. Copy {first[0]} there.") from None
    raise DownloadError(f"open_clip weights {label}: the hub has none of " + ", ".join(u for u, _, _ in wanted))

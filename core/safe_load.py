"""The one way vtr reads a checkpoint, a run file or a state file: tensors and plain data only.

A pickle can name any Python callable, and unpickling calls it: a ``best.pt`` from a colleague or a
download could run any code on load. So nothing here unpickles freely:

- torch files go through ``torch.load(weights_only=True)``, torch's own unpickler that builds tensors,
  numbers, strings and containers and refuses every other global (`load_torch`);
- safetensors files are a JSON header plus raw tensor bytes, with no code path at all (`load_safetensors`);
- nested training state (optimizer, scheduler, history) is stored as safetensors with a JSON skeleton of
  the non-tensor values (`dump_state` / `load_state`), so a run folder is plain data end to end;
- OpenAI's CLIP JIT archives are TorchScript, which ``torch.jit.load`` reads into the TorchScript
  interpreter (`load_torchscript_state`); only their weights are kept. TorchScript is code of its own, so
  vtr reads only OpenAI's published archives this way, known by their SHA256 (`vtr.extract.clip_encoder`).

Every refusal or damaged file raises `LoadError`: one line naming the file and what was wrong.
"""
from __future__ import annotations

import json
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch

__all__ = ["LoadError", "load_torch", "load_safetensors", "dump_state", "load_state", "load_json",
           "is_torchscript", "load_torchscript_state"]

# The skeleton of a state file sits in the safetensors header under this key.
STATE_KEY = "vtr_state"
STATE_FORMAT = 1


class LoadError(ValueError):
    """A file vtr was asked to load was refused (it holds more than tensors and plain data) or is damaged.

    The message is one line that names the file; the CLI prints it as ``Error: ...``.
    """


def _reason(e: BaseException) -> str:
    """The first sentence of an error, without torch's advice to retry with unpickling switched back on."""
    text = " ".join(str(e).split())
    text = re.split(r"(?<=[a-z0-9)])\. ", text, maxsplit=1)[0]
    return (text[:160] + "...") if len(text) > 160 else (text or type(e).__name__)


def _refused(path, what: str) -> LoadError:
    return LoadError(f"{path}: refused: it holds Python objects ({what}), not only tensors and plain data")


def _damaged(path, e: BaseException | None = None) -> LoadError:
    why = f" ({_reason(e)})" if e is not None else ""
    return LoadError(f"{path} is truncated or not a checkpoint{why}")


def _check_readable(path) -> None:
    """A file that cannot be opened is named as such; any error after this one is the content's."""
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise LoadError(f"{path}: cannot read it ({e.strerror or e})") from None


def load_torch(path, map_location="cpu"):
    """A ``torch.save`` file read with ``weights_only=True``: tensors, numbers, strings and containers.

    A pickle that names any other global (a function or class: the way a pickle runs code) is refused
    before anything it names is called.
    """
    _check_readable(path)
    try:
        with warnings.catch_warnings():
            # "Detected pickle protocol N": noise for a file that is either fine or refused below
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message names the first global it blocked, e.g. "unsupported GLOBAL posix.system"
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise _refused(path, found.group(1)) from None
        raise _damaged(path, e) from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError,
            zipfile.BadZipFile) as e:  # an OSError here is a seek or read past a truncated end
        raise _damaged(path, e) from None


def load_safetensors(path, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, header metadata) of a safetensors file."""
    from safetensors import SafetensorError, safe_open

    _check_readable(path)
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _damaged(path, e) from None


# ----------------------------------------------------------------------------- nested state as plain data


def _join(name: str, key) -> str:
    return f"{name}/{key}" if name else str(key)


def _encode(obj, name: str, tensors: dict):
    """``obj`` as JSON-able values, its tensors moved to ``tensors`` under path-like names.

    Tuples and dicts with non-string keys (an optimizer's state is keyed by parameter index) keep their
    types, so the state loads back exactly as it was saved.
    """
    if isinstance(obj, torch.Tensor):
        key = name
        while key in tensors:
            key += "'"
        # a copy: safetensors refuses tensors that share memory, and the file must not alias the model
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()
        return {"$tensor": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: _encode(v, _join(name, k), tensors) for k, v in obj.items()}
        return {"$items": [[_encode(k, name, {}), _encode(v, _join(name, k), tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(v, _join(name, i), tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, _join(name, i), tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"{name or 'state'}: a {type(obj).__name__} is not plain data; state files hold tensors "
                    "and plain data")


def _decode(obj, tensors: dict):
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "$tensor" in obj:
            return tensors[obj["$tensor"]]
        if "$tuple" in obj:
            return tuple(_decode(v, tensors) for v in obj["$tuple"])
        if "$items" in obj:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["$items"]}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    return obj


def dump_state(obj) -> bytes:
    """Nested state (dicts, lists, tuples, tensors, numbers, strings, None) as safetensors bytes."""
    from safetensors.torch import save

    tensors: dict = {}
    skeleton = _encode(obj, "", tensors)
    return save(tensors, metadata={STATE_KEY: json.dumps({"format": STATE_FORMAT, "state": skeleton})})


def load_state(path, device: str = "cpu"):
    """What `dump_state` wrote to ``path``, exactly (tensor bits, tuples, integer keys included)."""
    tensors, meta = load_safetensors(path, device)
    if STATE_KEY not in meta:
        raise LoadError(f"{path} is not a vtr state file (its header has no {STATE_KEY})")
    try:
        record = json.loads(meta[STATE_KEY])
        return _decode(record["state"], tensors)
    except (ValueError, KeyError, TypeError) as e:
        raise _damaged(path, e) from None


def load_json(path):
    """A JSON file; a damaged one is one line naming it."""
    _check_readable(path)
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise LoadError(f"{path} is not valid JSON ({_reason(e)})") from None


# ----------------------------------------------------------------------------- TorchScript (OpenAI's CLIP files)


def is_torchscript(path) -> bool:
    """True for a TorchScript archive (``torch.jit.save``): a zip whose one top folder holds ``constants.pkl``
    and ``code/``. A ``torch.save`` zip has neither."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def load_torchscript_state(path) -> dict[str, torch.Tensor]:
    """The weights of a TorchScript archive (as ``clip.load(jit=False)`` takes them).

    ``torch.jit.load`` reads the archive's code into the TorchScript interpreter, which runs no Python, but
    TorchScript is code all the same: callers pass only archives they trust (OpenAI's, by SHA256).
    """
    _check_readable(path)
    try:
        with warnings.catch_warnings():  # "torch.jit.load is deprecated": noise for a reader of old archives
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu")
        return {k: v.detach() for k, v in module.state_dict().items()}
    except (RuntimeError, OSError, ValueError, KeyError, IndexError) as e:
        # TorchScript's unpickler knows no Python globals: a pickled callable fails as an unknown type
        found = re.search(r"Unknown type name '([\w.]+)'", str(e))
        raise (_refused(path, found.group(1)) if found else _damaged(path, e)) from None

"""CLIP weights that download like clip.load: end to end against an HTTP server on 127.0.0.1.

The server serves a small random CLIP's state dict under an OpenAI-style URL (``/<sha256>/ViT-B-32.pt``);
the URL table points "ViT-B/32" at it through the test-only ``VTR_TEST_MODEL_URLS``.
"""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import socket
import threading

import clip
import pytest
import torch
from click.testing import CliRunner

from vtr.cli import main
from vtr.extract.clip_loader import load_clip
from vtr.extract.weights import ClipWeightsMissing, DownloadError, clip_weights, download

SMALL = dict(embed_dim=64, image_resolution=32, vision_layers=1, vision_width=64, vision_patch_size=16,
             context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=1)


@pytest.fixture(scope="module")
def checkpoint():
    """(bytes, sha256, the model) of a small random CLIP's state dict, as torch.save writes it."""
    torch.manual_seed(0)
    model = clip.model.CLIP(**SMALL).eval()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    payload = buf.getvalue()
    return payload, hashlib.sha256(payload).hexdigest(), model


class Server:
    """A threaded HTTP server on 127.0.0.1 serving ``payload`` at any path, recording every request.

    ``cut_next``: the next response announces the whole length and closes after half of the bytes;
    ``ranges``: whether Range requests are answered with 206. As the Hugging Face hub does, a HEAD request
    is answered with a redirect carrying ``etag`` (when set) as ``X-Linked-Etag``; paths in ``missing`` 404.
    """

    def __init__(self, payload: bytes):
        self.payload, self.requests, self.cut_next, self.ranges = payload, [], False, True
        self.etag, self.missing = None, set()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self):
                server.requests.append({"path": self.path, "range": None, "method": "HEAD"})
                self.send_response(404 if self.path in server.missing else 302)
                if server.etag:
                    self.send_header("X-Linked-Etag", f'"{server.etag}"')
                self.send_header("Location", "http://127.0.0.1:9/cdn")  # never followed
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self):
                server.requests.append({"path": self.path, "range": self.headers.get("Range"), "method": "GET"})
                if self.path in server.missing:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data, start = server.payload, 0
                rng = self.headers.get("Range")
                if rng and server.ranges:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_next:
                    server.cut_next = False
                    body = body[: len(body) // 2]
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, sha256: str) -> str:
        return f"http://127.0.0.1:{self.port}/clip/models/{sha256}/ViT-B-32.pt"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server(checkpoint):
    s = Server(checkpoint[0])
    yield s
    s.close()


@pytest.fixture()
def online(monkeypatch, tmp_path):
    """Downloads allowed (conftest turns them off), and a helper that points ViT-B/32 at a URL."""
    monkeypatch.delenv("VTR_OFFLINE", raising=False)
    table = tmp_path / "urls.json"

    def point(url: str):
        table.write_text(json.dumps({"ViT-B/32": url}))
        monkeypatch.setenv("VTR_TEST_MODEL_URLS", str(table))

    return point


def test_right_checksum_downloads_once_and_loads(server, checkpoint, online, tmp_path):
    payload, sha, model = checkpoint
    online(server.url(sha))
    cache = tmp_path / "clip"
    enc = load_clip("ViT-B/32", device="cpu", download_root=cache, precision="fp32", progress=False)
    path = cache / "ViT-B-32.pt"
    assert path.read_bytes() == payload and enc.sha256 == sha and not enc.is_random
    assert not (cache / "ViT-B-32.pt.part").exists()
    tokens = clip.tokenize(["a dog runs"])
    with torch.no_grad():
        want = clip.model.build_model(model.state_dict()).float().eval().encode_text(tokens)
        assert torch.equal(enc.model.encode_text(tokens), want)
    assert len(server.requests) == 1
    load_clip("ViT-B/32", device="cpu", download_root=cache, precision="fp32", progress=False)
    assert len(server.requests) == 1  # found in the cache folder: not downloaded again


def test_wrong_checksum_is_refused_and_leaves_nothing(server, checkpoint, online, tmp_path):
    payload, sha, _ = checkpoint
    wrong = "0" * 64
    online(server.url(wrong))
    cache = tmp_path / "clip"
    with pytest.raises(DownloadError) as e:
        load_clip("ViT-B/32", device="cpu", download_root=cache, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and server.url(wrong) in msg and f"expected {wrong}" in msg and f"got {sha}" in msg
    assert not (cache / "ViT-B-32.pt").exists() and not (cache / "ViT-B-32.pt.part").exists()


def test_an_interrupted_transfer_never_passes_and_resumes_with_range(server, checkpoint, online, tmp_path):
    payload, sha, _ = checkpoint
    url = server.url(sha)
    dest = tmp_path / "clip" / "ViT-B-32.pt"
    part = dest.with_name("ViT-B-32.pt.part")
    server.cut_next = True
    with pytest.raises(DownloadError, match=r"stopped after \d+ of \d+ bytes.*next run resumes"):
        download(url, dest, sha, progress=False, attempts=1)
    assert not dest.exists() and 0 < part.stat().st_size < len(payload)
    assert server.requests[-1]["range"] is None

    online(url)  # the next run (through the model name, as vtr extract does) resumes the .part
    path, digest = clip_weights("ViT-B/32", dest.parent, progress=False)
    assert server.requests[-1]["range"] == f"bytes={len(payload) // 2}-"
    assert path == dest and dest.read_bytes() == payload and digest == sha and not part.exists()


def test_a_transfer_cut_midway_is_resumed_within_one_call(server, checkpoint, tmp_path):
    payload, sha, _ = checkpoint
    server.cut_next = True
    dest = download(server.url(sha), tmp_path / "w.pt", sha, progress=False)
    assert dest.read_bytes() == payload
    assert [r["range"] for r in server.requests] == [None, f"bytes={len(payload) // 2}-"]


def test_a_server_without_ranges_sends_the_whole_file_again(server, checkpoint, tmp_path):
    payload, sha, _ = checkpoint
    server.ranges, server.cut_next = False, True
    dest = download(server.url(sha), tmp_path / "w.pt", sha, progress=False)
    assert dest.read_bytes() == payload and len(server.requests) == 2


def test_offline_refuses_without_a_request(server, checkpoint, online, tmp_path, monkeypatch):
    _, sha, _ = checkpoint
    online(server.url(sha))
    root = tmp_path / "byo"
    (root / "videos").mkdir(parents=True)
    (root / "videos" / "a.mp4").write_bytes(b"")
    (root / "annotations.csv").write_text("video,caption\na.mp4,a caption\n")
    cache = tmp_path / "clip"
    r = CliRunner().invoke(main, ["extract", "--dataset", "byo", "--root", str(root), "--out", str(root / "c.h5"),
                                  "--clip", "ViT-B/32", "--clip-cache", str(cache), "--offline", "--quiet"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    error = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "downloads are off (--offline)" in error[0]
    assert f"Copy OpenAI's file ViT-B-32.pt ({server.url(sha)}) to {cache}" in error[0]
    monkeypatch.setenv("VTR_OFFLINE", "1")
    with pytest.raises(ClipWeightsMissing, match=r"downloads are off \(VTR_OFFLINE=1\)"):
        load_clip("ViT-B/32", download_root=cache, progress=False)
    assert server.requests == [] and not (cache / "ViT-B-32.pt").exists()


def test_an_unreachable_network_is_one_line_naming_the_file_to_copy(online, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/clip/models/{'a' * 64}/ViT-B-32.pt"
    online(url)
    cache = tmp_path / "clip"
    with pytest.raises(ClipWeightsMissing) as e:
        load_clip("ViT-B/32", download_root=cache, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "the network is unreachable" in msg and f"cannot reach 127.0.0.1:{port}" in msg
    assert f"Copy OpenAI's file ViT-B-32.pt ({url}) to {cache}" in msg
    assert not (cache / "ViT-B-32.pt").exists()


def test_a_complete_part_left_by_a_kill_before_the_rename_is_fetched_again(server, checkpoint, tmp_path):
    """A .part as long as the file (killed between the last byte and the rename): the server answers the
    Range request with 416, and the download starts over rather than trusting the .part unverified."""
    payload, sha, _ = checkpoint
    dest = tmp_path / "w.pt"
    dest.with_name("w.pt.part").write_bytes(b"x" * len(payload))
    assert download(server.url(sha), dest, sha, progress=False).read_bytes() == payload
    assert [r["range"] for r in server.requests] == [f"bytes={len(payload)}-", None]


# ----------------------------------------------------------------------------- open_clip's weights

HUB_FILE = "/vtr/tiny-clip/resolve/main/open_clip_model.safetensors"


@pytest.fixture(scope="module")
def tiny_open_clip():
    """(safetensors bytes, torch.save bytes, the model) of vtr's tiny CLIP-style open_clip model, seed 1."""
    from safetensors.torch import save
    from vtr.extract.open_clip_encoder import _create, _import_open_clip

    model = _create(_import_open_clip(), "vtr-tiny-clip", True, {}, 1).eval().requires_grad_(False)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    return save(state), buf.getvalue(), model


@pytest.fixture()
def hub(server, monkeypatch, tmp_path):
    """Downloads on, the hub (HF_ENDPOINT) at the test server, an empty hub cache, and two pretrained tags of
    vtr-tiny-clip: "hubtest" (on the hub, repo vtr/tiny-clip) and "urltest" (a URL as open_clip's GitHub
    releases name them, the SHA256 prefix in the file name; set by the test)."""
    import huggingface_hub
    import open_clip

    monkeypatch.delenv("VTR_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.port}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    tags = {"hubtest": {"hf_hub": "vtr/tiny-clip/", "quick_gelu": True, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
                        "interpolation": "bilinear", "resize_mode": "squash"},
            "urltest": {"url": ""}}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "vtr-tiny-clip", tags)
    return tags


def same_text_tower(enc, model) -> bool:
    tokens = enc.tokenize(["a dog runs"])
    with torch.no_grad():
        return torch.equal(enc.model.encode_text(tokens), model.encode_text(tokens))


def test_open_clip_weights_come_from_the_hub_checked_and_once(server, hub, tiny_open_clip, tmp_path):
    st, _, model = tiny_open_clip
    server.payload, server.etag = st, hashlib.sha256(st).hexdigest()
    kw = dict(device="cpu", download_root=tmp_path / "clip", precision="fp32", progress=False)
    enc = load_clip("open_clip:vtr-tiny-clip:hubtest", **kw)
    path = tmp_path / "clip" / "open_clip" / "vtr--tiny-clip" / "open_clip_model.safetensors"
    assert path.read_bytes() == st and enc.sha256 == server.etag and enc.pretrained == "hubtest"
    assert [(r["method"], r["path"]) for r in server.requests] == [("HEAD", HUB_FILE), ("GET", HUB_FILE)]
    assert same_text_tower(enc, model) and not path.with_name(path.name + ".part").exists()
    # the tag's preprocessing is the model's: ffmpeg squashes (bilinear), the frames are normalised with 0.5
    assert (enc.resize_mode, enc.interpolation, enc.image_mean, enc.image_std) == ("squash", "bilinear", (0.5,) * 3,
                                                                                    (0.5,) * 3)
    assert "squashed to 64x64 (bilinear)" in enc.extra_settings()["preprocessing"]
    load_clip("open_clip:vtr-tiny-clip:hubtest", **kw)
    assert len(server.requests) == 2  # found: not downloaded again


def test_open_clip_hub_checksum_mismatch_is_refused(server, hub, tiny_open_clip, tmp_path):
    server.payload, server.etag = tiny_open_clip[0], "0" * 64
    with pytest.raises(DownloadError, match=f"SHA256 mismatch: expected {'0' * 64}"):
        load_clip("open_clip:vtr-tiny-clip:hubtest", download_root=tmp_path / "clip", progress=False)
    folder = tmp_path / "clip" / "open_clip" / "vtr--tiny-clip"
    assert not (folder / "open_clip_model.safetensors").exists()
    assert not (folder / "open_clip_model.safetensors.part").exists()


def test_open_clip_falls_back_to_the_pytorch_file_when_the_hub_has_no_safetensors(server, hub, tiny_open_clip,
                                                                                  tmp_path):
    _, pt, model = tiny_open_clip
    server.payload, server.etag, server.missing = pt, hashlib.sha256(pt).hexdigest(), {HUB_FILE}
    enc = load_clip("open_clip:vtr-tiny-clip:hubtest", device="cpu", download_root=tmp_path / "clip",
                    precision="fp32", progress=False)
    assert enc.sha256 == server.etag and same_text_tower(enc, model)
    assert (tmp_path / "clip" / "open_clip" / "vtr--tiny-clip" / "open_clip_pytorch_model.bin").read_bytes() == pt


def test_open_clip_offline_refuses_in_one_line_without_a_request(server, hub, tmp_path, monkeypatch):
    monkeypatch.setenv("VTR_OFFLINE", "1")
    with pytest.raises(ClipWeightsMissing) as e:
        load_clip("open_clip:vtr-tiny-clip:hubtest", download_root=tmp_path / "clip", progress=False)
    msg = str(e.value)
    want = tmp_path / "clip" / "open_clip" / "vtr--tiny-clip" / "open_clip_model.safetensors"
    assert "\n" not in msg and "downloads are off (VTR_OFFLINE=1)" in msg and str(want) in msg
    assert server.requests == []


def test_open_clip_reads_open_clips_own_hub_cache_offline(server, hub, tiny_open_clip, tmp_path, monkeypatch):
    st, _, model = tiny_open_clip
    sha = hashlib.sha256(st).hexdigest()
    repo = tmp_path / "hf" / "models--vtr--tiny-clip"  # huggingface_hub's layout: blobs named by SHA256
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / sha).write_bytes(st)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c0ffee")
    (repo / "snapshots" / "c0ffee").mkdir(parents=True)
    (repo / "snapshots" / "c0ffee" / "open_clip_model.safetensors").symlink_to(f"../../blobs/{sha}")
    monkeypatch.setenv("VTR_OFFLINE", "1")
    enc = load_clip("open_clip:vtr-tiny-clip:hubtest", device="cpu", precision="fp32", download_root=tmp_path / "c")
    assert enc.sha256 == sha and same_text_tower(enc, model) and server.requests == []
    (repo / "blobs" / sha).write_bytes(st[:-1] + b"x")  # damaged in place
    with pytest.raises(ClipWeightsMissing, match="does not match the published"):
        load_clip("open_clip:vtr-tiny-clip:hubtest", device="cpu", download_root=tmp_path / "c")


def test_open_clip_release_urls_are_checked_against_their_name(server, hub, tiny_open_clip, tmp_path):
    _, pt, model = tiny_open_clip
    server.payload = pt
    base = f"http://127.0.0.1:{server.port}/mlfoundations/open_clip/releases/download/v0"
    hub["urltest"]["url"] = f"{base}/tiny-clip-{'0' * 8}.pt"
    with pytest.raises(DownloadError, match=f"expected {'0' * 8}, got {hashlib.sha256(pt).hexdigest()}"):
        load_clip("open_clip:vtr-tiny-clip:urltest", download_root=tmp_path / "clip", progress=False)
    name = f"tiny-clip-{hashlib.sha256(pt).hexdigest()[:8]}.pt"
    hub["urltest"]["url"] = f"{base}/{name}"
    enc = load_clip("open_clip:vtr-tiny-clip:urltest", device="cpu", precision="fp32",
                    download_root=tmp_path / "clip", progress=False)
    assert (tmp_path / "clip" / name).read_bytes() == pt and same_text_tower(enc, model)


def test_open_clip_unreachable_hub_is_one_line_naming_the_file(hub, tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(ClipWeightsMissing) as e:
        load_clip("open_clip:vtr-tiny-clip:hubtest", download_root=tmp_path / "clip", progress=False)
    msg = str(e.value)
    assert "\n" not in msg and f"the network is unreachable: cannot reach 127.0.0.1:{port}" in msg
    assert f"http://127.0.0.1:{port}/vtr/tiny-clip/resolve/main/open_clip_model.safetensors" in msg

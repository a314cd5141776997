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
from vtr.extract.clip_encoder import load_clip
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
    ``ranges``: whether Range requests are answered with 206.
    """

    def __init__(self, payload: bytes):
        self.payload, self.requests, self.cut_next, self.ranges = payload, [], False, True
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append({"path": self.path, "range": self.headers.get("Range")})
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

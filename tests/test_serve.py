"""`vtr serve`'s web layer: the JSON API, range requests, path safety and thumbnails, over real video files.

The first tests drive the app over a small object with SearchIndex's interface (`WebIndex`), so each
web-layer rule is tested on its own; the last ones run it over a real index that `build_index` made from a
synthetic cache.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from vtr.search.serve import LOCAL_HOSTS, create_app
from vtr.search.thumbnails import ThumbnailCache


@dataclass
class WebHit:  # the fields of vtr.search.index.Hit
    rank: int
    video_id: str
    score: float
    path: str
    moment: float | None
    captions: list[str]
    gate: dict[str, float] | None


class WebIndex:
    """SearchIndex's interface over fixed paths, for the web layer's tests only: ``search`` ranks the
    videos by id and records what it was asked."""

    def __init__(self, root: Path | None, paths: dict[str, str], folder: Path, gate: bool = True):
        self.video_root, self.folder, self.gate = root, folder, gate
        self.ids, self.paths = sorted(paths), [paths[v] for v in sorted(paths)]
        self.info = {"model": "camoe", "n_videos": len(paths), "engine": "Flat", "qbnorm": True,
                     "cache": Path("/somewhere/c.h5"), "recall@10": float("nan")}
        self.asked: list[tuple] = []

    def search(self, query: str, k: int = 10, qbnorm: bool = False) -> list[WebHit]:
        if query == "boom":
            raise ValueError("the query bank is missing")
        self.asked.append((query, k, qbnorm))
        gate = {"global": 0.5, "action": 0.25, "entity": 0.15, "scene": 0.1} if self.gate else None
        return [WebHit(r + 1, vid, np.float32(10.0 - r), p, 2.5, [f"caption of {vid}", "another"], gate)
                for r, (vid, p) in enumerate(zip(self.ids[:k], self.paths[:k]))]


@pytest.fixture(scope="module")
def root(synthetic_root, tmp_path_factory) -> Path:
    """A dataset folder of its own (a copy of the synthetic videos), beside a file that lies outside it."""
    base = tmp_path_factory.mktemp("serve")
    root = base / "dataset"
    shutil.copytree(synthetic_root / "videos", root / "videos")
    (base / "secret.mp4").write_bytes(b"not yours")
    (root / "videos" / "link_out.mp4").symlink_to(base / "secret.mp4")
    (root / "linked_dir").symlink_to(base)  # a folder link that leads out
    (root / "videos" / "link_in.mp4").symlink_to(root / "videos" / "synth_00001.mp4")  # stays inside
    shutil.copy(root / "videos" / "synth_00001.mp4", root / "videos" / "clip.vtrunknown")
    return root


def _paths(root: Path) -> dict[str, str]:
    paths = {p.stem: str(p.relative_to(root)) for p in sorted((root / "videos").glob("synth_*.mp4"))}
    paths["abs_inside"] = str((root / "videos" / "synth_00002.mp4").resolve())  # absolute, inside: fine
    paths["dotdot"] = "../secret.mp4"
    paths["abs_outside"] = str(root.parent / "secret.mp4")
    paths["link_out"] = "videos/link_out.mp4"
    paths["via_dir_link"] = "linked_dir/secret.mp4"
    paths["link_in"] = "videos/link_in.mp4"
    paths["gone"] = "videos/not_there.mp4"
    paths["folder"] = "videos"
    paths["odd id/with slash & ü"] = "videos/synth_00003.mp4"
    paths["odd_ext"] = "videos/clip.vtrunknown"
    return paths


@pytest.fixture()
def web(root, tmp_path):
    index = WebIndex(root, _paths(root), tmp_path / "index")
    return index, TestClient(create_app(index))


def test_search_answers_hits_with_urls(web):
    index, client = web
    r = client.get("/api/search", params={"q": " a red circle spins ", "k": 3, "qbnorm": 1})
    assert r.status_code == 200, r.text
    body = r.json()
    assert index.asked == [("a red circle spins", 3, True)]
    assert (body["query"], body["k"], body["qbnorm"]) == ("a red circle spins", 3, True)
    assert [h["rank"] for h in body["hits"]] == [1, 2, 3]
    first = body["hits"][0]
    assert first["video_id"] == "abs_inside" and first["score"] == 10.0 and first["moment"] == 2.5
    assert first["captions"] == ["caption of abs_inside", "another"]
    assert first["gate"] == {"global": 0.5, "action": 0.25, "entity": 0.15, "scene": 0.1}
    assert first["thumb"] == "/thumb/abs_inside?t=2.500" and first["video"] == "/video/abs_inside"

    ids = [h["video_id"] for h in client.get("/api/search", params={"q": "x", "k": 50}).json()["hits"]]
    odd = next(h for h in client.get("/api/search", params={"q": "x", "k": 50}).json()["hits"]
               if h["video_id"] == "odd id/with slash & ü")
    assert len(ids) == len(index.paths)
    assert odd["video"] == "/video/odd%20id%2Fwith%20slash%20%26%20%C3%BC"
    assert client.get(odd["video"]).content == (index.video_root / "videos/synth_00003.mp4").read_bytes()


def test_bad_queries_are_refused_with_a_reason(web):
    index, client = web
    assert client.get("/api/search", params={"q": ""}).status_code == 422
    assert client.get("/api/search", params={"q": "   "}).status_code == 422
    assert client.get("/api/search", params={"q": "x", "k": 0}).status_code == 422
    assert client.get("/api/search", params={"q": "x", "k": 100000}).status_code == 422
    r = client.get("/api/search", params={"q": "boom"})
    assert r.status_code == 400 and r.json()["detail"] == "the query bank is missing"
    assert index.asked == []


def test_info_is_json_and_says_what_is_served(web, root):
    _, client = web
    info = client.get("/api/info").json()
    assert info["index"]["model"] == "camoe" and info["index"]["cache"] == "/somewhere/c.h5"
    assert info["index"]["recall@10"] is None  # NaN is not JSON
    assert info["serves_videos"] is True and info["video_root"] == str(root.resolve())


def test_video_range_requests(web, root):
    _, client = web
    data = (root / "videos/synth_00000.mp4").read_bytes()
    full = client.get("/video/synth_00000")
    assert full.status_code == 200 and full.content == data
    assert full.headers["accept-ranges"] == "bytes" and full.headers["content-type"] == "video/mp4"

    part = client.get("/video/synth_00000", headers={"Range": "bytes=100-1099"})
    assert part.status_code == 206 and part.content == data[100:1100]
    assert part.headers["content-range"] == f"bytes 100-1099/{len(data)}"
    tail = client.get("/video/synth_00000", headers={"Range": "bytes=-64"})
    assert tail.status_code == 206 and tail.content == data[-64:]
    opened = client.get("/video/synth_00000", headers={"Range": f"bytes={len(data) - 10}-"})
    assert opened.status_code == 206 and opened.content == data[-10:]
    beyond = client.get("/video/synth_00000", headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416
    two = client.get("/video/synth_00000", headers={"Range": "bytes=0-9,200-209"})
    assert two.status_code == 206 and two.headers["content-type"].startswith("multipart/byteranges")
    assert data[:10] in two.content and data[200:210] in two.content
    # If-Range: a range only while the file is the one the client saw, else the whole file
    same = client.get("/video/synth_00000", headers={"Range": "bytes=0-9", "If-Range": full.headers["etag"]})
    changed = client.get("/video/synth_00000", headers={"Range": "bytes=0-9", "If-Range": '"another"'})
    assert (same.status_code, same.content) == (206, data[:10])
    assert (changed.status_code, changed.content) == (200, data)


@pytest.mark.parametrize("video_id", ["dotdot", "abs_outside", "link_out", "via_dir_link"])
def test_files_outside_the_root_are_refused(web, video_id):
    index, client = web
    for url in (f"/video/{video_id}", f"/thumb/{video_id}?t=0"):
        r = client.get(url)
        assert r.status_code == 403, (url, r.status_code)
        assert b"not yours" not in r.content and "outside the video folder" in r.json()["detail"]
    assert not index.folder.exists()  # no ffmpeg ran: no thumbnail folder was even made


def test_paths_inside_the_root_are_served(web, root):
    _, client = web
    assert client.get("/video/abs_inside").content == (root / "videos/synth_00002.mp4").read_bytes()
    assert client.get("/video/link_in").content == (root / "videos/synth_00001.mp4").read_bytes()
    # a type the server cannot name is sent as bytes, not as text
    assert client.get("/video/odd_ext").headers["content-type"] == "application/octet-stream"


@pytest.mark.parametrize("url", ["/video/nope", "/thumb/nope?t=1", "/video/gone", "/video/folder",
                                 "/video/../../etc/passwd", "/video/..%2F..%2Fetc%2Fpasswd",
                                 "/video/%2Fetc%2Fpasswd", "/thumb/..%2Fsecret.mp4"])
def test_unknown_ids_and_missing_files_are_404(web, url):
    _, client = web
    r = client.get(url)
    assert r.status_code == 404, (url, r.status_code, r.text)
    assert b"not yours" not in r.content and b"root:" not in r.content


def test_no_video_root_serves_no_files(root, tmp_path):
    index = WebIndex(None, _paths(root), tmp_path / "index")
    client = TestClient(create_app(index))
    hit = client.get("/api/search", params={"q": "x", "k": 1}).json()["hits"][0]
    assert hit["thumb"] is None and hit["video"] is None
    r = client.get("/video/synth_00000")
    assert r.status_code == 404 and "--video-root" in r.json()["detail"]
    assert client.get("/api/info").json()["serves_videos"] is False

    # --video-root fills the gap
    client = TestClient(create_app(index, video_root=root))
    assert client.get("/video/synth_00000").content == (root / "videos/synth_00000.mp4").read_bytes()


def _decode_all_frames(path: Path, w: int = 128, h: int = 96) -> np.ndarray:
    """Every frame of ``path`` as [F, H, W, 3] uint8, decoded in order (no seeking)."""
    raw = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(path), "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "pipe:"], capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3).astype(np.float32)


def test_thumbnail_is_the_frame_at_the_moment(web, root):
    _, client = web
    # the clip whose picture changes most over time, so that a wrong moment would show
    frames = {vid: _decode_all_frames(root / f"videos/{vid}.mp4") for vid in ("synth_00000", "synth_00001",
                                                                            "synth_00002", "synth_00003")}
    vid = max(frames, key=lambda v: np.abs(frames[v][0] - frames[v][-1]).mean())
    fr = frames[vid]
    assert len(fr) == 60  # 6 s at 10 fps: frame n is shown from n / 10 s
    for t, n in ((2.5, 25), (0.0, 0), (4.1, 41), (5.9, 59)):
        r = client.get(f"/thumb/{vid}", params={"t": t})
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        img = Image.open(BytesIO(r.content))
        assert img.format == "JPEG" and img.size == (128, 96)  # never scaled up
        diffs = np.abs(fr - np.asarray(img.convert("RGB"), np.float32)).mean(axis=(1, 2, 3))
        assert int(diffs.argmin()) == n, (t, diffs.argmin(), diffs[n])
        far = np.r_[diffs[:max(0, n - 5)], diffs[n + 6:]]  # frames half a second or more away
        assert diffs[n] < 0.7 * far.min(), (t, diffs[n], far.min())
    # past the end: the last frame, not an error
    r = client.get(f"/thumb/{vid}", params={"t": 60})
    diffs = np.abs(fr - np.asarray(Image.open(BytesIO(r.content)).convert("RGB"), np.float32)).mean(axis=(1, 2, 3))
    assert r.status_code == 200 and int(diffs.argmin()) >= 54
    for bad in ("-1", "nan", "inf", "soon"):
        assert client.get(f"/thumb/{vid}", params={"t": bad}).status_code == 422


def test_thumbnails_are_cached_and_made_once(web, root, monkeypatch):
    index, client = web
    made = []
    grab = ThumbnailCache._grab

    def counting_grab(self, video, t, out):
        made.append((video.name, t))
        grab(self, video, t, out)

    monkeypatch.setattr(ThumbnailCache, "_grab", counting_grab)
    first = client.get("/thumb/synth_00004", params={"t": 1.5})
    again = client.get("/thumb/synth_00004", params={"t": 1.5000001})  # same millisecond: same file
    assert first.content == again.content and made == [("synth_00004.mp4", 1.5)]
    files = sorted(p.name for p in (index.folder / "thumbs").iterdir())
    assert len(files) == 1 and files[0].endswith("-1500ms-w320.jpg")

    # many requests at once for a new thumbnail: one ffmpeg, every answer whole
    answers = []
    barrier = threading.Barrier(6)

    def fetch():
        barrier.wait()
        answers.append(client.get("/thumb/synth_00005", params={"t": 3}).content)

    threads = [threading.Thread(target=fetch) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert made.count(("synth_00005.mp4", 3.0)) == 1
    assert len(answers) == 6 and len(set(answers)) == 1 and answers[0][:2] == b"\xff\xd8"
    assert not [p for p in (index.folder / "thumbs").iterdir() if p.name.startswith(".tmp")]

    # a new app (a restarted server) over the same folder makes nothing again
    client2 = TestClient(create_app(index))
    assert client2.get("/thumb/synth_00004", params={"t": 1.5}).content == first.content
    assert len(made) == 2


def test_a_broken_video_gets_a_clear_thumbnail_error(root, tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "broken.mp4").write_bytes(b"\x00" * 1000)
    index = WebIndex(tmp_path / "v", {"broken": "broken.mp4"}, tmp_path / "index")
    r = TestClient(create_app(index)).get("/thumb/broken", params={"t": 1})
    assert r.status_code == 422 and "broken.mp4: ffmpeg made no frame" in r.json()["detail"]
    assert not list((tmp_path / "index" / "thumbs").iterdir())  # no half-written file left


def test_page_and_static_files(web):
    _, client = web
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<script src="/static/app.js"' in page.text and 'id="q"' in page.text
    # nothing is loaded from another origin, and the browser is told so
    assert "http://" not in page.text and "https://" not in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
        assert "https://" not in r.text
    assert client.get("/static/../serve.py").status_code == 404
    assert client.get("/openapi.json").json()["paths"].keys() >= {"/api/search", "/api/info"}


def test_bound_to_localhost_it_answers_only_localhost_names(root, tmp_path):
    index = WebIndex(root, _paths(root), tmp_path / "index")
    app = create_app(index, allowed_hosts=LOCAL_HOSTS)
    assert TestClient(app, base_url="http://127.0.0.1:8080").get("/api/info").status_code == 200
    assert TestClient(app, base_url="http://localhost:8080").get("/api/info").status_code == 200
    assert TestClient(app, base_url="http://evil.example:8080").get("/api/info").status_code == 400


# ---------------------------------------------------------------------------------------- over a real index


@pytest.fixture(scope="module")
def real(tiny_clip, tmp_path_factory):
    """A real zero-shot index (`build_index`) over 8 synthetic clips of its own, and their folder."""
    from vtr.extract.synthetic import generate, read_synthetic
    from vtr.extract.stage import run_extract
    from vtr.search.index import SearchIndex, build_index

    base = tmp_path_factory.mktemp("serve-real")
    root = generate(base / "dataset", n_videos=8, seed=3, progress=False)
    cache = base / "synthetic.h5"
    run_extract(read_synthetic(root), tiny_clip, cache, progress=False, log=lambda m: None)
    index = SearchIndex.open(build_index(cache, base / "index", zero_shot=True, progress=False))
    yield index, root
    index.close()


def test_real_index_api_answers_as_the_index_does(real):
    index, root = real
    client = TestClient(create_app(index))
    assert index.video_root is not None and (root / "videos").resolve() == index.video_root.resolve()
    query = "a red circle spins on the grass"
    for qbnorm in (False, True):
        want = index.search(query, k=5, qbnorm=qbnorm)
        body = client.get("/api/search", params={"q": query, "k": 5, "qbnorm": int(qbnorm)}).json()
        got = [(h["rank"], h["video_id"], h["score"], h["path"], h["moment"], h["captions"], h["gate"])
               for h in body["hits"]]
        assert got == [(h.rank, h.video_id, pytest.approx(h.score), h.path, h.moment, h.captions, h.gate)
                       for h in want]
        assert all(h["moment"] is not None for h in body["hits"])
    info = client.get("/api/info").json()
    assert info["index"]["n_videos"] == 8 and info["video_root"] == str(index.video_root.resolve())

    # the video of every hit is served whole, and its thumbnail is the frame at its moment
    hit = body["hits"][0]
    path = root / "videos" / f"{hit['video_id']}.mp4"
    assert client.get(hit["video"]).content == path.read_bytes()
    frames = _decode_all_frames(path)
    jpeg = np.asarray(Image.open(BytesIO(client.get(hit["thumb"]).content)).convert("RGB"), np.float32)
    diffs = np.abs(frames - jpeg).mean(axis=(1, 2, 3))
    assert int(diffs.argmin()) == round(hit["moment"] * 10)  # 10 fps
    assert (index.folder / "thumbs").is_dir()  # cached under the index folder


def test_real_index_refuses_a_video_replaced_by_a_link_out_of_the_root(real, tmp_path):
    index, root = real
    client = TestClient(create_app(index))
    victim = root / "videos" / f"{index.ids[-1]}.mp4"
    original = victim.read_bytes()
    outside = tmp_path / "private.mp4"
    outside.write_bytes(b"private bytes")
    victim.unlink()
    victim.symlink_to(outside)
    try:
        for url in (f"/video/{index.ids[-1]}", f"/thumb/{index.ids[-1]}?t=1"):
            r = client.get(url)
            assert r.status_code == 403 and b"private bytes" not in r.content
        assert client.get(f"/video/{index.ids[0]}").status_code == 200
        assert client.get("/video/synth_99999").status_code == 404
    finally:
        victim.unlink()
        victim.write_bytes(original)


def test_vtr_serve_command_serves_the_index(real):
    index, root = real
    proc = subprocess.Popen([str(Path(sys.executable).with_name("vtr")), "serve", "--index", str(index.folder),
                             "--port", "0"], stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stderr:  # uvicorn names the port it took
            lines.append(line)
            if "Uvicorn running on" in line:
                break
        url = re.search(r"http://127\.0\.0\.1:\d+", "".join(lines))
        assert url, "".join(lines)
        import httpx

        hits = httpx.get(url[0] + "/api/search", params={"q": "a blue square", "k": 3}).json()["hits"]
        assert [h["video_id"] for h in hits] == [h.video_id for h in index.search("a blue square", k=3)]
        assert httpx.get(url[0] + hits[0]["video"], headers={"Range": "bytes=0-9"}).status_code == 206
        # bound to 127.0.0.1, it answers only requests addressed to this machine's names
        assert httpx.get(url[0] + "/api/info", headers={"Host": "rebound.example"}).status_code == 400
        assert f"{index.info['n_videos']} videos from {index.folder}" in "".join(lines)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_vtr_serve_refuses_a_folder_that_is_no_index(tmp_path):
    r = subprocess.run([str(Path(sys.executable).with_name("vtr")), "serve", "--index", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("Error: ") and str(tmp_path) in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr

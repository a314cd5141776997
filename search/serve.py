"""`vtr serve`: a search page and a JSON API over a search index, for one person on their own machine.

    GET /                          the page (search/static: plain HTML, CSS and JS, no CDN)
    GET /api/search?q=..&k=10&qbnorm=0   the ranked videos, as `vtr search --json` gives them, plus URLs
    GET /api/info                  the index's model, run, cache, size, engine, and what the page may offer
    GET /thumb/{video_id}?t=S      a JPEG of the video at S seconds (ffmpeg, cached under the index folder)
    GET /video/{video_id}          the video file, with HTTP range requests (the player seeks with them)
    GET /openapi.json              the API's OpenAPI schema

Why FastAPI (on Starlette and uvicorn): the API is typed (pydantic models validate the query's
parameters and describe the answers), its OpenAPI schema comes for free (the /docs page is off: it
loads Swagger from a CDN), and Starlette's FileResponse answers HTTP Range requests itself (206 with
Content-Range, several ranges, If-Range, 416), which a <video> element needs to seek; so vtr has no
HTTP or range code of its own.

What is served. Only files inside the dataset's root (the index's ``video_root``, or ``--video-root``):
a video's path is resolved, symlinks followed, and refused with 403 unless the real file lies inside the
real root; an id the index does not hold is 404. The server binds 127.0.0.1 by default and, bound there,
answers only requests addressed to localhost names, so a web page cannot reach it by DNS rebinding.
"""
from __future__ import annotations

import math
import mimetypes
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from vtr.search.thumbnails import ThumbnailCache, ThumbnailError

STATIC = Path(__file__).resolve().parent / "static"
MAX_K = 200  # a page of results, not a dump of the index
LOCAL_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]


class HitOut(BaseModel):
    rank: int
    video_id: str
    score: float
    path: str
    moment: float | None  # seconds: the best-matching frame's time
    captions: list[str]
    gate: dict[str, float] | None  # CAMoE's gate weight per stream; None for single-stream heads
    thumb: str | None  # URL of the thumbnail at `moment`; None when no video file can be served
    video: str | None  # URL of the video file; None when it cannot be served


class SearchOut(BaseModel):
    query: str
    k: int
    qbnorm: bool
    seconds: float  # time the index took to answer, query encoding included
    hits: list[HitOut]


class VideoFiles:
    """The files the server may hand out: each indexed video's stored path, if it lies inside ``root``."""

    def __init__(self, root: Path | None, stored: Callable[[str], str | None]):
        self.root = Path(root).resolve() if root is not None else None
        self._stored = stored  # video id -> its path as the index stores it; None for an unknown id

    def resolve(self, video_id: str) -> Path:
        """The real file of ``video_id``; HTTPException 404 (unknown, missing) or 403 (outside the root)."""
        stored = self._stored(video_id)
        if stored is None:
            raise HTTPException(404, f"no video {video_id!r} in this index")
        if self.root is None:
            raise HTTPException(404, "this index records no video folder: start `vtr serve` with --video-root")
        p = Path(stored)
        p = p if p.is_absolute() else self.root / p
        try:
            real = p.resolve(strict=True)  # follows every symlink, in the file's name and in its folders
        except (OSError, RuntimeError):  # missing, or a symlink loop
            raise HTTPException(404, f"video {video_id!r}: its file is missing") from None
        if not real.is_relative_to(self.root):
            raise HTTPException(403, f"video {video_id!r}: its file lies outside the video folder")
        if not real.is_file():
            raise HTTPException(404, f"video {video_id!r}: not a file")
        return real


def _stored_path_lookup(index) -> Callable[[str], str | None]:
    """video id -> its path as stored (SearchIndex keeps ids and paths as two lists in index order)."""
    paths: Mapping[str, str] = dict(zip(index.ids, index.paths))
    return paths.get


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    if hasattr(x, "item"):  # numpy scalars
        return _jsonable(x.item())
    return str(x)  # paths and the like


def create_app(index, *, video_root: Path | None = None, thumbs_dir: Path | None = None,
               allowed_hosts: list[str] | None = None, search_errors: tuple[type[Exception], ...] = (ValueError,)
               ) -> FastAPI:
    """The web app over ``index`` (a `SearchIndex`, or any object with its interface).

    ``video_root`` overrides the index's own; ``thumbs_dir`` holds the thumbnails (default: the
    index folder's ``thumbs``); ``allowed_hosts`` limits the Host header the app answers (None: any);
    ``search_errors`` are the exceptions of a bad query, answered 400 with their message.
    """
    root = video_root if video_root is not None else getattr(index, "video_root", None)
    files = VideoFiles(root, _stored_path_lookup(index))
    if thumbs_dir is None:
        folder = getattr(index, "folder", None)
        if folder is None:
            raise ValueError("create_app: pass thumbs_dir (the index has no folder to keep thumbnails in)")
        thumbs_dir = Path(folder) / "thumbs"
    thumbs = ThumbnailCache(thumbs_dir)
    # One query at a time: the text encoder and the index are not promised to be thread-safe, and a
    # single user's queries are short; thumbnails and video bytes are served in parallel.
    search_lock = threading.Lock()

    app = FastAPI(title="vtr search", version="1", docs_url=None, redoc_url=None,
                  description="Search videos by sentence over a vtr search index.")
    if allowed_hosts is not None:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)

    @app.middleware("http")
    async def security_headers(request, call_next):
        response = await call_next(request)
        # The page loads nothing from elsewhere; say so, so an injected URL could not load either.
        response.headers.setdefault("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; "
                                    "media-src 'self'; style-src 'self'; script-src 'self'; frame-ancestors 'none'")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    def urls(video_id: str, moment: float | None) -> tuple[str | None, str | None]:
        if files.root is None:
            return None, None
        q = quote(video_id, safe="")
        t = 0.0 if moment is None or not math.isfinite(moment) else max(0.0, moment)
        return f"/thumb/{q}?t={t:.3f}", f"/video/{q}"

    @app.get("/api/search", response_model=SearchOut, summary="Rank the indexed videos for a sentence")
    def api_search(q: str = Query(..., min_length=1, max_length=1000, description="the sentence to search for"),
                   k: int = Query(10, ge=1, le=MAX_K, description="how many videos to return"),
                   qbnorm: bool = Query(False, description="rank with QB-Norm (the index's query bank)")):
        query = q.strip()
        if not query:
            raise HTTPException(422, "the query is empty")
        started = time.perf_counter()
        try:
            with search_lock:
                hits = index.search(query, k=k, qbnorm=qbnorm)
        except search_errors as e:
            raise HTTPException(400, str(e)) from None
        took = time.perf_counter() - started
        out = []
        for h in hits:
            thumb, video = urls(h.video_id, h.moment)
            moment = h.moment if h.moment is not None and math.isfinite(h.moment) else None
            out.append(HitOut(rank=h.rank, video_id=h.video_id, score=float(h.score), path=str(h.path),
                              moment=moment, captions=list(h.captions),
                              gate=None if h.gate is None else {s: float(w) for s, w in h.gate.items()},
                              thumb=thumb, video=video))
        return SearchOut(query=query, k=k, qbnorm=qbnorm, seconds=took, hits=out)

    @app.get("/api/info", summary="What the index holds and what the page may offer")
    def api_info() -> dict:
        return {"index": _jsonable(dict(index.info)), "video_root": None if files.root is None else str(files.root),
                "serves_videos": files.root is not None, "max_k": MAX_K}

    @app.get("/video/{video_id:path}", summary="The video file (HTTP range requests)")
    def video(video_id: str):
        # FileResponse answers Range and If-Range itself (206 / 416), and sends Accept-Ranges: bytes.
        path = files.resolve(video_id)
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"  # not FileResponse's text/plain
        return FileResponse(path, media_type=kind, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/thumb/{video_id:path}", summary="A JPEG of the video at t seconds")
    def thumb(video_id: str, t: float = Query(0.0, ge=0.0, le=1e7, description="seconds into the video")):
        path = files.resolve(video_id)
        try:
            jpeg = thumbs.get(video_id, path, t)
        except (ThumbnailError, ValueError) as e:
            raise HTTPException(422, str(e)) from None
        except OSError as e:  # e.g. a read-only index folder
            raise HTTPException(500, f"cannot write thumbnails to {thumbs.folder}: {e.strerror or e}") from None
        return FileResponse(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def allowed_hosts_for(host: str) -> list[str] | None:
    """The Host headers to answer when bound to ``host``: localhost names on a loopback address, else any."""
    return LOCAL_HOSTS if host in ("127.0.0.1", "localhost", "::1") else None


def start_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0):
    """Run ``app`` on uvicorn in a daemon thread; returns (server, url). ``port=0`` takes a free port.

    Stop it with ``server.should_exit = True``. Used by the browser test and handy in a notebook.
    """
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="vtr-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.05)
    bound = server.servers[0].sockets[0].getsockname()
    return server, f"http://{host}:{bound[1]}"


def serve(index_dir: Path, *, host: str = "127.0.0.1", port: int = 8080, video_root: Path | None = None,
          clip_cache: Path | None = None, log: Callable[[str], None] = print) -> None:
    """Open the index in ``index_dir`` and serve it until interrupted (what `vtr serve` runs)."""
    import uvicorn

    from vtr.search.index import SearchIndex

    index = SearchIndex.open(Path(index_dir), clip_cache=clip_cache)
    # One query now loads CLIP and the parser: missing weights are reported here, not on the first search.
    index.search("a video", k=1)
    app = create_app(index, video_root=video_root, thumbs_dir=Path(index_dir) / "thumbs",
                     allowed_hosts=allowed_hosts_for(host))
    root = video_root if video_root is not None else index.video_root
    if root is None:
        log(f"{index_dir}: the index records no video folder, so the page shows no thumbnails or videos "
            "(pass --video-root DIR)")
    elif not Path(root).is_dir():
        log(f"{index_dir}: its video folder {root} is not there, so the page shows no thumbnails or videos "
            "(pass --video-root DIR)")
    if allowed_hosts_for(host) is None:
        log(f"vtr serve: listening on {host}: anyone who can reach this machine can search the index and "
            "download its videos")
    log(f"vtr serve: {index.info.get('n_videos', '?')} videos from {index_dir}")
    # uvicorn's own start line gives the address (the real port when --port 0); no line per request.
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)

"""``manage.py serve``: a JSON HTTP API and a web page over a store (FastAPI; the ``serve`` extra).

    GET  /api/search?text=...|clip_text=...|person=ID [&k &offset &collection &path &kind &where... &per_media
                     &min_score &weights &group=track &moment_frames]  -> the ``search --json`` object
    POST /api/search/image  (multipart: image, optional box "x1,y1,x2,y2", person_index; same query parameters)
    GET  /api/persons/{id}                                     -> every PaSta, verb and part, box, media, time
    GET  /api/persons/{id}/thumbnail?size=256                  -> JPEG: the person with context, box drawn
    GET  /api/media/{id}/image?size=1024[&t=SECONDS]           -> JPEG: the image (or video frame), scaled
    GET  /api/stats                                            -> the ``stats --json`` object
    GET  /                                                     -> the page; /docs and /openapi.json: the API

Every search goes through :class:`A2VSearch`, exactly as the CLI's. Files are found through ids in SQLite; nothing
in a request is used as a path. Errors are JSON ``{"error": "..."}`` with a 4xx status for bad input.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import math
import os
import threading
from collections import OrderedDict
from importlib import resources
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from .. import pictures as th
from ..api import A2VSearch
from ..errors import A2VError, InputError, ModelError, NotFoundError, StoreError
from ..media import DEFAULT_MAX_PIXELS, load_image
from ..models.language import is_structured
from ..search import SearchOptions
from .shared import Shared

log = logging.getLogger("a2v_search.serve.server")

TOKEN_COOKIE = "a2v_token"
DEFAULT_MAX_UPLOAD_MB = 20
MAX_K = 1000
MAX_OFFSET = 100_000
UPLOAD_PATH = "/api/search/image"


# ------------------------------------------------------------------ guard: token and upload size


class _TooLarge(Exception):
    pass


class Guard:
    """ASGI middleware: the bearer token (header, or the cookie the page gets from ``/?token=``) on every path, and
    the upload size limit (Content-Length, or the bytes actually received)."""

    def __init__(self, app, token: str | None, max_upload_bytes: int):
        self.app = app
        self.token = token
        self.max_body = max_upload_bytes + 64 * 1024  # multipart headers and the other fields

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.token is not None:
            request = Request(scope)
            if request.url.path == "/" and _same(request.query_params.get("token"), self.token):
                response = RedirectResponse("/", status_code=303)
                response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
                return await response(scope, receive, send)
            if not self._authorized(request):
                return await _error(401, "missing or wrong token: send 'Authorization: Bearer TOKEN', or open the "
                                         "URL that `manage.py serve` printed", {"WWW-Authenticate": "Bearer"}
                                    )(scope, receive, send)
        if scope["path"] != UPLOAD_PATH:
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await self._too_large(scope, receive, send)
        received = 0
        started = False

        async def counting_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise _TooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._too_large(scope, receive, send)

    async def _too_large(self, scope, receive, send):
        mb = (self.max_body - 64 * 1024) / 2**20
        await _error(413, f"upload too large: the limit is {mb:g} MB (serve --max-upload-mb)")(scope, receive, send)

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and _same(value.strip(), self.token):
            return True
        return _same(request.cookies.get(TOKEN_COOKIE), self.token)


def _same(given: str | None, token: str | None) -> bool:
    return given is not None and token is not None and hmac.compare_digest(given.encode(), token.encode())


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


# ------------------------------------------------------------------ image cache


class _JpegCache:
    """The last few hundred JPEGs made, by key (a small LRU; the browser caches by ETag too)."""

    def __init__(self, size: int = 512):
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: tuple) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: tuple, data: bytes) -> None:
        with self._lock:
            self._items[key] = data
            while len(self._items) > self._size:
                self._items.popitem(last=False)


def _file_etag(path: str, *parts) -> str:
    """An ETag from what the picture depends on: the file's size and mtime, and the request's parameters."""
    try:
        st = os.stat(path)
    except OSError:
        raise NotFoundError(f"the file of this media is missing or unreadable: {path}") from None
    key = "|".join(map(str, (st.st_size, st.st_mtime_ns, *parts)))
    return '"' + hashlib.sha1(key.encode()).hexdigest()[:20] + '"'


# ------------------------------------------------------------------ the app


def search_options(
    k: Annotated[int, Query(ge=1, le=MAX_K, description="Number of results.")] = 10,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Skip this many (paging).")] = 0,
    collection: Annotated[str | None, Query(description="Only this collection.")] = None,
    path: Annotated[str | None, Query(description="Only media whose path matches this glob.")] = None,
    kind: Annotated[str | None, Query(description="image or video.")] = None,
    where: Annotated[list[str] | None, Query(description="PaSta or verb filter such as 'hand: hold>=0.5' "
                                                         "(repeatable).")] = None,
    per_media: Annotated[bool, Query(description="At most one person per image or video.")] = False,
    min_score: Annotated[float | None, Query(description="Drop results scoring below.")] = None,
    group: Annotated[str | None, Query(description="'track': one result per video moment (a tracked person) "
                                                   "instead of one per frame.")] = None,
    moment_frames: Annotated[int, Query(ge=1, le=1000, description="With group=track: a moment scores the mean "
                                                                   "of its best N frame scores (1 = the max).")] = 3,
) -> SearchOptions:
    """The options every search endpoint takes (those of A2VSearch.search; SearchOptions checks them)."""
    return SearchOptions(k=k, offset=offset, collection=collection or None, path=path or None, kind=kind or None,
                         where=[w for w in where or [] if w.strip()] or None, per_media=per_media,
                         min_score=min_score, group=group or None, moment_frames=moment_frames)


Options = Annotated[SearchOptions, Depends(search_options)]
Weights = Annotated[str, Query(description="VISUAL,LANGUAGE[,ACTIVITY] weights of image and person queries "
                                           "(ACTIVITY: A2V's classifier feature, trained heads only).")]


def create_app(api: A2VSearch, token: str | None = None, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> FastAPI:
    """The FastAPI app over one store. ``token``: require it as a bearer token everywhere. Uploads over
    ``max_upload_mb`` get 413; query images over ``max_pixels`` (the ingest guard) get 400."""
    shared = Shared(api)
    cache = _JpegCache()
    app = FastAPI(title="a2v-search", version=__version__,
                  description="Search people in images and videos by activity (HAKE PaSta, verbs), text or example. "
                              "Search results have the schema of `manage.py search --json`.")
    app.state.shared = shared
    app.add_middleware(Guard, token=token, max_upload_bytes=int(max_upload_mb * 2**20))

    @app.exception_handler(A2VError)
    async def _a2v_error(_request: Request, e: A2VError):
        if isinstance(e, NotFoundError):
            status = 404
        elif isinstance(e, _TooLargeUpload):
            status = 413
        elif isinstance(e, (StoreError, ModelError)):
            status = 503
        else:
            status = 400
        return _error(status, str(e))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, e: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg')}" for err in e.errors())
        return _error(422, f"invalid request: {problems}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, e: StarletteHTTPException):
        return _error(e.status_code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, e: Exception):
        log.exception("unexpected error")
        return _error(500, f"internal error ({type(e).__name__}); see the server's log")

    # -------------------------------------------------------------- search

    @app.get("/api/search", summary="Search by text, CLIP text or a stored person")
    def search(opts: Options,
               text: Annotated[str | None, Query(description="PaSta text ('hand: hold; head: drink with') or free "
                                                             "text ('drinking from a cup').")] = None,
               clip_text: Annotated[str | None, Query(description="Free text through CLIP's text tower.")] = None,
               person: Annotated[int | None, Query(description="More like this stored person id.")] = None,
               weights: Weights = "0.5,0.5") -> JSONResponse:
        given = [n for n, v in (("text", text), ("clip_text", clip_text), ("person", person)) if v is not None]
        if len(given) != 1:  # the image is the upload endpoint's
            raise InputError("give exactly one of text, clip_text, person" + (f" (got {', '.join(given)})"
                                                                              if given else ""))
        # the first query of a kind that may load a model runs alone (Shared.first_alone)
        kind = ("person" if person is not None else "clip_text" if clip_text is not None
                else "text" if is_structured(text) else "free_text")
        with shared.reading() as a:
            result = shared.first_alone(kind, lambda: a.search(text=text, clip_text=clip_text, person=person,
                                                               weights=weights, options=opts))
        return JSONResponse(result.as_dict())

    @app.post(UPLOAD_PATH, summary="Search by an example image (upload)")
    def search_image(opts: Options,
                     image: Annotated[UploadFile, File(description="The query image (JPEG, PNG, ...).")],
                     box: Annotated[str | None, Form(description="The query person's box x1,y1,x2,y2.")] = None,
                     person_index: Annotated[int | None, Form(description="Which detected person (default: the "
                                                                           "largest).")] = None,
                     weights: Weights = "0.5,0.5") -> JSONResponse:
        limit = int(max_upload_mb * 2**20)
        data = image.file.read(limit + 1)
        if len(data) > limit:
            raise _TooLargeUpload(max_upload_mb)
        if not data:
            raise InputError("the uploaded image is empty")
        try:
            img = load_image(io.BytesIO(data), max_pixels=max_pixels)
        except InputError as e:
            raise InputError(f"cannot read the uploaded image: {e}") from None
        with shared.reading() as a:
            result = shared.first_alone("image", lambda: a.search(
                image=img, box=box, person_index=person_index, weights=weights, options=opts))
        result.query["image"] = image.filename or "upload"
        return JSONResponse(result.as_dict())

    # -------------------------------------------------------------- persons, media, stats

    @app.get("/api/persons/{person_id}", summary="One stored person: every PaSta, verb and part, box, media")
    def person(person_id: int) -> JSONResponse:
        with shared.reading() as a:
            return JSONResponse(a.person(person_id))

    def _jpeg(request: Request, key: tuple, etag: str, make) -> Response:
        headers = {"ETag": etag, "Cache-Control": "private, max-age=3600"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        data = cache.get((*key, etag))
        if data is None:
            try:
                data = th.jpeg_bytes(make())
            except InputError as e:  # the stored file changed into something unreadable
                raise NotFoundError(f"the file of this media cannot be read any more: {e}") from None
            cache.put((*key, etag), data)
        return Response(data, media_type="image/jpeg", headers=headers)

    @app.get("/api/persons/{person_id}/thumbnail", summary="JPEG of a person: crop with context, box drawn")
    def thumbnail(request: Request, person_id: int,
                  size: Annotated[int, Query(ge=32, le=1024, description="Side in pixels.")] = 256) -> Response:
        with shared.reading() as a:
            p = a.person(person_id)
        m = p["media"]
        etag = _file_etag(m["path"], "person", person_id, size, p["box"], p["t_sec"])
        return _jpeg(request, ("person", person_id, size), etag,
                     lambda: th.person_thumbnail(m["path"], m["kind"], p["box"], p["t_sec"], size))

    @app.get("/api/media/{media_id}/image", summary="JPEG of an image or video frame, scaled down")
    def media_image(request: Request, media_id: int,
                    size: Annotated[int, Query(ge=32, le=4096, description="Longer side in pixels.")] = 1024,
                    t: Annotated[float | None, Query(ge=0, description="Video: the frame at t seconds.")] = None
                    ) -> Response:
        with shared.reading() as a:
            m = a.media(media_id)
        if t is not None and not math.isfinite(t):
            raise InputError("t must be a finite number of seconds")
        etag = _file_etag(m["path"], "media", media_id, size, t)
        return _jpeg(request, ("media", media_id, size, t), etag,
                     lambda: th.scaled_image(m["path"], m["kind"], m["width"], m["height"], size, t))

    @app.get("/api/stats", summary="Counts of media, persons, failures; collections; indexes; the vector space")
    def stats() -> JSONResponse:
        with shared.reading() as a:
            return JSONResponse(a.stats())

    # -------------------------------------------------------------- the page

    page = resources.files("a2v_search.serve").joinpath("web/index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    return app


class _TooLargeUpload(A2VError):
    def __init__(self, mb: float):
        super().__init__(f"upload too large: the limit is {mb:g} MB (serve --max-upload-mb)")


"""``manage.py serve``: a JSON HTTP API and a web page over a store (FastAPI; the ``serve`` extra).

    GET  /api/search?text=...|clip_text=...|person=ID [&k &offset &collection &path &kind &where... &cluster
                     &per_media &min_score &weights &group=track &moment_frames]  -> the ``search --json`` object
    POST /api/search/image  (multipart: image, optional box "x1,y1,x2,y2", person_index; same query parameters)
    GET  /api/persons/{id}                                     -> every PaSta, verb and part, box, media, time
    GET  /api/persons/{id}/thumbnail?size=256                  -> JPEG: the person with context, box drawn
    GET  /api/media/{id}/image?size=1024[&t=SECONDS]           -> JPEG: the image (or video frame), scaled
    GET  /api/stats                                            -> the ``stats --json`` object
    GET  /api/activities[?collection &path &kind &where &cluster &min_p &top &examples] -> ``activities --json``
    GET  /api/clusterings, /api/clusterings/{name}             -> ``clusters --json`` (all; one)
    GET  /api/clusterings/{name}/{id}?k&offset                 -> a cluster's persons, closest to its centre first
    GET  /                                                     -> the page; /docs and /openapi.json: the API

Every search goes through :class:`A2VSearch`, exactly as the CLI's. Files are found through ids in SQLite; nothing
in a request is used as a path. Errors are JSON ``{"error": "..."}`` with a 4xx status for bad input.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import hmac
import io
import ipaddress
import logging
import math
import os
import sqlite3
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from importlib import resources
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, Path, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from .. import pictures as th
from ..api import A2VSearch
from ..errors import A2VError, FileChangedError, InputError, ModelError, NotFoundError, StoreError
from ..media import DEFAULT_MAX_PIXELS, open_image
from ..models.language import is_structured
from ..search import SearchOptions, parse_box
from .shared import Shared

log = logging.getLogger("a2v_search.serve.server")

DEFAULT_MAX_UPLOAD_MB = 20
MAX_K = 1000
MAX_OFFSET = 100_000
MAX_ID = 2**63 - 1  # SQLite's integers
MAX_T = 10_000_000.0  # seconds (115 days): later video times are refused, not overflowed
UPLOAD_PATH = "/api/search/image"
#: Host names a server bound to loopback answers to (with any port); any other Host is a DNS-rebinding attempt
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
#: on every response: no sniffing, no embedding in other sites' pages or frames
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"cross-origin-resource-policy", b"same-origin"),
                    (b"content-security-policy", b"frame-ancestors 'none'"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer")]
FREE_WRONG_TOKENS = 3  # wrong tokens from one address before each further one is answered more slowly
MAX_PENALTY_S = 5.0
DECODE_THREADS = 2  # images and video frames decoded at once (each may take up to ~600 MB)
DECODE_TIMEOUT_S = 60.0
HEADER_TIMEOUT_S = 10.0  # a connection must send a request's headers within this time of opening or of the last answer
KEEP_ALIVE_S = 5  # an idle kept-alive connection is closed after this
MAX_CONNECTIONS = 100  # at once; more get 503 (and at most half the process's file descriptors)
JPEG_CACHE_BYTES = 32 << 20
JPEG_CACHE_ENTRY = 256 << 10  # larger pictures (full-size images) are not kept


# ------------------------------------------------------------------ guard: hosts, sites, token and upload size


class _TooLarge(Exception):
    pass


def _pause(seconds: float):
    """How the guard waits before answering a repeated wrong token (tests replace it)."""
    return asyncio.sleep(seconds)


def host_name(host: str) -> str:
    """The name of a ``Host`` header without its port, lower case, IPv6 without brackets: ``[::1]:80`` -> ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    if host.count(":") > 1:  # IPv6 without brackets (an allow-list entry)
        return host
    name, colon, port = host.rpartition(":")
    return name.rstrip(".") if colon and port.isdigit() else host.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class Guard:
    """ASGI middleware in front of every request:

    - the ``Host`` must be one this server answers to (DNS rebinding: a page on another domain that resolves to
      this machine sends its own name): ``allowed_hosts`` (by default loopback's names), or, with ``any_ip``, any
      IP address (a rebinding page always sends a name);
    - requests from other sites (``Sec-Fetch-Site: cross-site``/``same-site``, or an ``Origin`` that is not this
      host) are refused, except a plain link to the page;
    - the bearer token (header, or the cookie that ``/?token=`` sets, bound to this server's port and useless to
      anything else); repeated wrong tokens are answered ever more slowly;
    - the upload size limit (Content-Length, or the bytes actually received: 413 either way);
    - security headers on every response."""

    def __init__(self, app, token: str | None, max_upload_bytes: int,
                 allowed_hosts: tuple[str, ...] | list[str] = LOOPBACK_HOSTS, any_ip: bool = False):
        self.app = app
        self.token = token
        self.max_body = max_upload_bytes + 64 * 1024  # multipart headers and the other fields
        self.allowed = {host_name(h) for h in allowed_hosts}
        self.any_host = "*" in self.allowed
        self.any_ip = any_ip
        self.wrong: dict[str, int] = {}  # client address -> wrong tokens in a row

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_secured(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        headers = dict(scope["headers"])
        refused = self._refused(scope, headers)
        if refused:
            return await _error(403, refused)(scope, receive, send_secured)
        if self.token is not None:
            request = Request(scope)
            given = request.query_params.get("token") if request.url.path == "/" else None
            if given is not None and _same(given, self.token):
                return await self._set_cookie(scope, receive, send_secured)
            if not self._authorized(request):
                if given is not None or "authorization" in request.headers or self._cookie_name(scope) in \
                        request.cookies:
                    await self._slow_down(scope)
                return await _error(401, "missing or wrong token: send 'Authorization: Bearer TOKEN', or open the "
                                         "URL that `manage.py serve` printed", {"WWW-Authenticate": "Bearer"}
                                    )(scope, receive, send_secured)
            self.wrong.pop(_client(scope), None)
        if scope["path"] != UPLOAD_PATH:
            return await self.app(scope, receive, send_secured)
        return await self._limit_upload(scope, receive, send_secured, headers)

    def _refused(self, scope, headers: dict) -> str | None:
        """Why a request is refused (wrong Host, another site), or None."""
        host = headers.get(b"host", b"").decode("latin-1")
        name = host_name(host)
        if not (self.any_host or name in self.allowed or self.any_ip and _is_ip(name)):
            return (f"this server does not answer to the host {host!r} (a page of another site that resolves its "
                    "name to this machine?); use the address serve printed, or start serve with --allowed-host NAME")
        site = headers.get(b"sec-fetch-site", b"").decode("latin-1")
        link = scope["method"] == "GET" and scope["path"] == "/" and headers.get(b"sec-fetch-mode") == b"navigate"
        if site in ("cross-site", "same-site") and not link:
            return f"requests from other sites are refused (Sec-Fetch-Site: {site})"
        origin = headers.get(b"origin")
        if origin is not None:
            origin_host = origin.decode("latin-1").partition("://")[2].lower()
            if origin_host != host.lower():
                return f"requests from other sites are refused (Origin: {origin.decode('latin-1')})"
        return None

    # -------------------------------------------------------------- the token

    @staticmethod
    def _port(scope) -> int:
        server = scope.get("server") or ("", 0)
        return int(server[1] or 0)

    def _cookie_name(self, scope) -> str:
        prefix = "__Host-" if scope.get("scheme") == "https" else ""
        return f"{prefix}a2v_session_{self._port(scope)}"

    def _cookie_value(self, scope) -> str:
        """What the page's cookie holds: an HMAC of the token and this server's port (never the token itself)."""
        return hmac.new(self.token.encode(), f"a2v-serve-cookie|{self._port(scope)}".encode(),
                        hashlib.sha256).hexdigest()

    async def _set_cookie(self, scope, receive, send):
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(self._cookie_name(scope), self._cookie_value(scope), httponly=True, samesite="strict",
                            secure=scope.get("scheme") == "https", path="/")
        self.wrong.pop(_client(scope), None)
        await response(scope, receive, send)

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and _same(value.strip(), self.token):
            return True
        return _same(request.cookies.get(self._cookie_name(request.scope)), self._cookie_value(request.scope))

    async def _slow_down(self, scope) -> None:
        """The n-th wrong token in a row from one address waits 0.25 s x 2^(n - 4), at most MAX_PENALTY_S."""
        client = _client(scope)
        if len(self.wrong) > 10_000:
            self.wrong.clear()
        n = self.wrong[client] = self.wrong.get(client, 0) + 1
        if n > FREE_WRONG_TOKENS:
            await _pause(min(MAX_PENALTY_S, 0.25 * 2 ** min(n - FREE_WRONG_TOKENS - 1, 8)))

    # -------------------------------------------------------------- uploads

    async def _limit_upload(self, scope, receive, send, headers: dict):
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await self._too_large(scope, receive, send)
        received = 0
        over = started = False

        async def counting_receive():
            nonlocal received, over
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                over = True
                raise _TooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            if over:  # the app's answer to the cut-off body (a parse error): ours goes instead
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        with contextlib.suppress(_TooLarge):
            await self.app(scope, counting_receive, tracking_send)
        if over and not started:
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope, receive, send):
        mb = (self.max_body - 64 * 1024) / 2**20
        await _error(413, f"upload too large: the limit is {mb:g} MB (serve --max-upload-mb)")(scope, receive, send)


def _client(scope) -> str:
    return (scope.get("client") or ("?",))[0]


def _same(given: str | None, token: str | None) -> bool:
    return given is not None and token is not None and hmac.compare_digest(given.encode(), token.encode())


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


# ------------------------------------------------------------------ pictures: a bounded cache, bounded decoding


class JpegCache:
    """Recently made JPEGs by key, at most ``max_bytes`` in all (an LRU; the browser caches by ETag too). Pictures
    over ``max_entry`` bytes (full-size images) are not kept."""

    def __init__(self, max_bytes: int = JPEG_CACHE_BYTES, max_entry: int = JPEG_CACHE_ENTRY):
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self.max_bytes, self.max_entry = max_bytes, max_entry
        self.bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: tuple, data: bytes) -> None:
        if len(data) > self.max_entry:
            return
        with self._lock:
            old = self._items.pop(key, None)
            self.bytes += len(data) - (len(old) if old is not None else 0)
            self._items[key] = data
            while self.bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self.bytes -= len(dropped)

    def __len__(self) -> int:
        return len(self._items)


class Decoder:
    """Runs decodes (images, video frames) on DECODE_THREADS threads, so that at most that many large images are
    in memory at once; a decode that does not finish within ``timeout`` seconds answers 503."""

    def __init__(self, threads: int = DECODE_THREADS, timeout: float = DECODE_TIMEOUT_S):
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="a2v-decode")
        self.timeout = timeout

    def run(self, fn, *args):
        future = self._pool.submit(_trimmed, fn, *args)
        try:
            return future.result(timeout=self.timeout)
        except FutureTimeout:
            future.cancel()
            raise Busy(f"decoding this picture took longer than {self.timeout:g} s; try again later") from None


def _trimmed(fn, *args):
    """``fn(*args)``, then the memory it freed handed back to the OS: a decode frees a full-size image in blocks
    that the C allocator would otherwise keep in this thread's arena, held while the request goes on elsewhere."""
    try:
        return fn(*args)
    finally:
        _malloc_trim(0)


def _no_trim(_pad: int) -> int:
    return 0


try:  # glibc's; elsewhere nothing to do
    _malloc_trim = ctypes.CDLL(None).malloc_trim
except (OSError, AttributeError):
    _malloc_trim = _no_trim


def _etag(st: os.stat_result, *parts) -> str:
    """An ETag from what the picture depends on: the file's size and mtime, and the request's parameters."""
    key = "|".join(map(str, (st.st_size, st.st_mtime_ns, *parts)))
    return '"' + hashlib.sha1(key.encode()).hexdigest()[:20] + '"'


# ------------------------------------------------------------------ the app


def filter_options(
    collection: Annotated[str | None, Query(description="Only this collection.")] = None,
    path: Annotated[str | None, Query(description="Only media whose path matches this glob.")] = None,
    kind: Annotated[str | None, Query(description="image or video.")] = None,
    where: Annotated[list[str] | None, Query(description="PaSta or verb filter such as 'hand: hold>=0.5', or an "
                                                         "object: 'object: cup', 'object: cup>=0.5' "
                                                         "(repeatable).")] = None,
    cluster: Annotated[str | None, Query(description="Only the persons of one cluster NAME:ID of a stored "
                                                     "clustering.")] = None,
) -> dict:
    """The filters every endpoint that reads persons takes (those of the CLI's --collection, --path, ...)."""
    return {"collection": collection or None, "path": path or None, "kind": kind or None,
            "where": [w for w in where or [] if w.strip()] or None, "cluster": cluster or None}


FilterArgs = Annotated[dict, Depends(filter_options)]


def search_options(
    filters: FilterArgs,
    k: Annotated[int, Query(ge=1, le=MAX_K, description="Number of results.")] = 10,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Skip this many (paging).")] = 0,
    per_media: Annotated[bool, Query(description="At most one person per image or video.")] = False,
    min_score: Annotated[float | None, Query(description="Drop results scoring below.")] = None,
    group: Annotated[str | None, Query(description="'track': one result per video moment (a tracked person) "
                                                   "instead of one per frame.")] = None,
    moment_frames: Annotated[int, Query(ge=1, le=1000, description="With group=track: a moment scores the mean "
                                                                   "of its best N frame scores (1 = the max).")] = 3,
) -> SearchOptions:
    """The options every search endpoint takes (those of A2VSearch.search; SearchOptions checks them)."""
    return SearchOptions(k=k, offset=offset, per_media=per_media, min_score=min_score, group=group or None,
                         moment_frames=moment_frames, **filters)


Options = Annotated[SearchOptions, Depends(search_options)]
Weights = Annotated[str, Query(description="VISUAL,LANGUAGE[,ACTIVITY] weights of image and person queries "
                                           "(ACTIVITY: A2V's classifier feature, trained heads only).")]
PersonId = Annotated[int, Path(ge=0, le=MAX_ID, description="A person id (from search results).")]
MediaId = Annotated[int, Path(ge=0, le=MAX_ID, description="A media id (from /api/persons/{id}).")]


def create_app(api: A2VSearch, token: str | None = None, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
               max_pixels: int = DEFAULT_MAX_PIXELS, allowed_hosts: tuple[str, ...] | list[str] = LOOPBACK_HOSTS,
               any_ip: bool = False) -> FastAPI:
    """The FastAPI app over one store. ``token``: require it as a bearer token everywhere. Uploads over
    ``max_upload_mb`` get 413; query images over ``max_pixels`` (the ingest guard) get 400. Requests whose
    ``Host`` is not in ``allowed_hosts`` (``"*"``: any) or, with ``any_ip``, an IP address, get 403 (see
    :class:`Guard`)."""
    shared = Shared(api)
    cache = JpegCache()
    decoder = Decoder()
    app = FastAPI(title="a2v-search", version=__version__, docs_url=None, redoc_url=None,
                  description="Search people in images and videos by activity (HAKE PaSta, verbs), text or example. "
                              "Search results have the schema of `manage.py search --json`.")
    app.state.shared = shared
    app.state.jpeg_cache = cache
    app.add_middleware(Guard, token=token, max_upload_bytes=int(max_upload_mb * 2**20),
                       allowed_hosts=tuple(allowed_hosts), any_ip=any_ip)

    @app.exception_handler(A2VError)
    async def _a2v_error(_request: Request, e: A2VError):
        if isinstance(e, NotFoundError):
            status = 404
        elif isinstance(e, FileChangedError):
            status = 409
        elif isinstance(e, _TooLargeUpload):
            status = 413
        elif isinstance(e, (StoreError, ModelError, Busy)):
            status = 503
        else:
            status = 400
        return _error(status, str(e))

    @app.exception_handler(SQLAlchemyError)
    @app.exception_handler(sqlite3.Error)
    async def _store_unreadable(_request: Request, e: Exception):
        log.warning("the store cannot be read: %s", e)
        return _error(503, f"the store at {api.data_dir} cannot be read ({type(e).__name__}); was it replaced or "
                           "damaged? `manage.py doctor` says more")

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
               person: Annotated[int | None, Query(ge=0, le=MAX_ID, description="More like this stored person "
                                                                                 "id.")] = None,
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
                     person_index: Annotated[int | None, Form(ge=0, le=10_000, description="Which detected person "
                                                                                           "(default: the "
                                                                                           "largest).")] = None,
                     weights: Weights = "0.5,0.5") -> JSONResponse:
        limit = int(max_upload_mb * 2**20)
        data = image.file.read(limit + 1)
        if len(data) > limit:
            raise _TooLargeUpload(max_upload_mb)
        if not data:
            raise InputError("the uploaded image is empty")
        try:  # images over REDUCE_ABOVE_PIXELS come smaller (bounded memory); boxes are scaled both ways
            img, full = decoder.run(open_image, io.BytesIO(data), max_pixels)
        except InputError as e:
            raise InputError(f"cannot read the uploaded image: {e}") from None
        scale = img.width / full[0]
        qbox = parse_box(box)
        with shared.reading() as a:
            result = shared.first_alone("image", lambda: a.search(
                image=img, box=[v * scale for v in qbox] if qbox else None, person_index=person_index,
                weights=weights, options=opts))
        result.query["image"] = image.filename or "upload"
        if scale != 1 and result.query.get("box"):
            result.query["box"] = [round(v / scale, 2) for v in result.query["box"]]
        return JSONResponse(result.as_dict())

    # -------------------------------------------------------------- persons, media, stats

    @app.get("/api/persons/{person_id}", summary="One stored person: every PaSta, verb and part, box, media")
    def person(person_id: PersonId) -> JSONResponse:
        with shared.reading() as a:
            return JSONResponse(a.person(person_id))

    def _jpeg(request: Request, media: dict, key: tuple, make) -> Response:
        """The JPEG of ``make(file)`` for a stored media file, opened safely (th.open_stored), decoded on the
        decode threads, cached by key and the file's size and time."""
        with th.open_stored(media["path"], media["file_size"], media["file_mtime"]) as f:
            etag = _etag(os.fstat(f.fileno()), *key)
            headers = {"ETag": etag, "Cache-Control": "private, max-age=3600"}
            if request.headers.get("if-none-match") == etag:
                return Response(status_code=304, headers=headers)
            data = cache.get((*key, etag))
            if data is None:
                try:
                    data = decoder.run(lambda: th.jpeg_bytes(make(f)))
                except InputError as e:  # the stored file changed into something unreadable
                    raise NotFoundError(f"the file of this media cannot be read any more: {e}") from None
                cache.put((*key, etag), data)
        return Response(data, media_type="image/jpeg", headers=headers)

    @app.get("/api/persons/{person_id}/thumbnail", summary="JPEG of a person: crop with context, box drawn")
    def thumbnail(request: Request, person_id: PersonId,
                  size: Annotated[int, Query(ge=32, le=1024, description="Side in pixels.")] = 256) -> Response:
        with shared.reading() as a:
            p = a.person(person_id)
            m = a.media(p["media"]["id"])
        return _jpeg(request, m, ("person", person_id, size, tuple(p["box"]), p["t_sec"]),
                     lambda f: th.person_thumbnail(f, m["kind"], p["box"], p["t_sec"], size))

    @app.get("/api/media/{media_id}/image", summary="JPEG of an image or video frame, scaled down")
    def media_image(request: Request, media_id: MediaId,
                    size: Annotated[int, Query(ge=32, le=4096, description="Longer side in pixels.")] = 1024,
                    t: Annotated[float | None, Query(ge=0, le=MAX_T, description="Video: the frame at t "
                                                                                 "seconds.")] = None
                    ) -> Response:
        with shared.reading() as a:
            m = a.media(media_id)
        if t is not None and not math.isfinite(t):
            raise InputError("t must be a finite number of seconds")
        if t is not None and m["kind"] != "video":
            raise InputError("t (a time in seconds) applies to videos only; this media is an image")
        return _jpeg(request, m, ("media", media_id, size, t),
                     lambda f: th.scaled_image(f, m["kind"], m["width"], m["height"], size, t))

    @app.get("/api/stats", summary="Counts of media, persons, failures; collections; indexes; the vector space")
    def stats() -> JSONResponse:
        with shared.reading() as a:
            return JSONResponse(a.stats())

    # -------------------------------------------------------------- activities and clusters

    @app.get("/api/activities", summary="What the persons are doing: verbs, PaSta, objects, pairs, counts, examples")
    def activities(filters: FilterArgs,
                   min_p: Annotated[float, Query(gt=0, le=1, description="A person shows a label at this "
                                                                         "probability or more.")] = 0.5,
                   top: Annotated[int, Query(ge=1, le=250, description="Labels listed per kind.")] = 20,
                   examples: Annotated[int, Query(ge=0, le=50, description="Example persons per label.")] = 4
                   ) -> JSONResponse:
        with shared.reading() as a:
            return JSONResponse(a.activities(min_p=min_p, top=top, examples=examples, **filters))

    @app.get("/api/clusterings", summary="The stored clusterings: name, space, k, persons, staleness")
    def clusterings() -> JSONResponse:
        with shared.reading() as a:
            return JSONResponse(a.clusterings())

    @app.get("/api/clusterings/{name}", summary="One clustering: its clusters, names, sizes, example persons")
    def clustering(name: str) -> JSONResponse:
        with shared.reading() as a:
            return JSONResponse(a.clustering(name))

    @app.get("/api/clusterings/{name}/{cluster}", summary="The persons of a cluster, closest to its centre first")
    def cluster_persons(name: str, cluster: int,
                        k: Annotated[int, Query(ge=1, le=MAX_K, description="Number of results.")] = 10,
                        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Skip this many.")] = 0
                        ) -> JSONResponse:
        with shared.reading() as a:
            return JSONResponse(a.cluster_persons(f"{name}:{cluster}", k=k, offset=offset).as_dict())

    # -------------------------------------------------------------- the page and the API's own page

    page = resources.files("a2v_search.serve").joinpath("web/index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    _add_docs(app)
    return app


SWAGGER_FILES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
                 "favicon-32x32.png": "image/png"}


def _add_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI from the ``swagger-ui-bundle`` package (its files served here, nothing from a CDN);
    without that package there is no ``/docs`` (``/openapi.json`` is always there)."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return
    from fastapi.openapi.docs import get_swagger_ui_html

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="a2v-search API",
                                   swagger_js_url="/docs/swagger-ui-bundle.js", swagger_css_url="/docs/swagger-ui.css",
                                   swagger_favicon_url="/docs/favicon-32x32.png",
                                   swagger_ui_parameters={"validatorUrl": None})

    @app.get("/docs/{name}", include_in_schema=False)
    def docs_file(name: str) -> Response:
        if name not in SWAGGER_FILES:
            raise NotFoundError(f"no such file: /docs/{name}")
        return FileResponse(os.path.join(swagger_ui_path, name), media_type=SWAGGER_FILES[name],
                            headers={"Cache-Control": "public, max-age=86400"})


# ------------------------------------------------------------------ the HTTP server: limits against slow clients


def _header_deadline_protocol(base: type, header_timeout: float) -> type:
    """``base`` (one of uvicorn's HTTP protocols) that closes a connection which has not sent a complete request
    head within ``header_timeout`` seconds of connecting or of its last answer (slowloris: idle or dribbling
    connections would otherwise hold a file descriptor each, for ever)."""

    class HeaderDeadline(base):
        def connection_made(self, transport):
            super().connection_made(transport)
            self._deadline = None
            self._seen = self.cycle
            self._arm()

        def _arm(self):
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(header_timeout, self._expire)

        def _expire(self):
            self._deadline = None
            if self.cycle is self._seen and not self.transport.is_closing():  # no new request head since
                self.transport.close()

        def data_received(self, data):
            super().data_received(data)
            if self.cycle is not self._seen and self._deadline is not None:  # a request head arrived
                self._seen = self.cycle
                self._deadline.cancel()
                self._deadline = None

        def on_response_complete(self):
            super().on_response_complete()
            if not self.transport.is_closing():
                self._seen = self.cycle
                self._arm()

        def connection_lost(self, exc):
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

    return HeaderDeadline


def server_options(header_timeout: float = HEADER_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS) -> dict:
    """uvicorn settings for ``serve``: a header deadline, a keep-alive timeout and a connection limit below the
    process's file descriptor limit (raised to its hard limit, at most 4096, first)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:  # httptools is in the serve extra; h11 is uvicorn's own fallback
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    files = 1024
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, ValueError, OSError):
        pass
    return {"log_level": "warning", "http": _header_deadline_protocol(base, header_timeout),
            "timeout_keep_alive": KEEP_ALIVE_S, "limit_concurrency": max(4, min(max_connections, files // 2))}


class _TooLargeUpload(A2VError):
    def __init__(self, mb: float):
        super().__init__(f"upload too large: the limit is {mb:g} MB (serve --max-upload-mb)")


class Busy(A2VError):
    """Decoding took too long (503)."""

"""The HTTP side: `POST /v1/chat/completions` (streamed as server-sent events or not), `GET /v1/models`,
`GET /health`; OpenAI-shaped errors. Each request's images are read and its anchors found off the event loop, then
its row joins the engine's next batch."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from jinja2 import TemplateError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from .anchors import AnchorFinder, ImageAnchors, given_anchors
from .chat_request import ChatRequest, parse_chat_request
from .engine import Engine, Job
from .errors import RequestError
from .fetch import MediaPolicy
from .images import ImageLimits, fetch_image, image_file, image_pixels, is_remote, read_image
from .request_schema import chat_request_schema

logger = logging.getLogger("fusar_serve")


@dataclass
class ServerSettings:
    model_name: str
    image_root: Path | None = None
    limits: ImageLimits = field(default_factory=ImageLimits)
    media: MediaPolicy = field(default_factory=MediaPolicy)
    max_request_bytes: int = 100 * 2**20  # a few base64 images of the image limit
    max_tokens: int = 512  # the default, and the most a request may ask for
    api_key: str | None = None  # required as `Authorization: Bearer` on /v1 when set


def build_app(engine: Engine, finder: AnchorFinder, settings: ServerSettings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app):
        # The event loop and the threads reading requests (`asyncio.to_thread`) yield the CPU to the model's.
        yield_to_model()
        readers = ThreadPoolExecutor(thread_name_prefix="fusar-read", initializer=yield_to_model)
        asyncio.get_running_loop().set_default_executor(readers)
        yield
        readers.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="fusar-serve", docs_url=None, redoc_url=None, lifespan=lifespan)  # GET /openapi.json
    created = int(time.time())
    anchor_dim = getattr(engine.model.config, "anchor_dim", None)  # None: the model has no anchor module
    context_length = engine.model.config.get_text_config().max_position_embeddings
    # Remote images wait on other servers: their own threads, so that slow ones never hold up a data: image.
    fetchers = ThreadPoolExecutor(settings.media.in_all, thread_name_prefix="fusar-fetch", initializer=yield_to_model)

    @app.exception_handler(RequestError)
    async def request_error(request, error: RequestError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):  # unknown routes and methods, in the same shape
        return JSONResponse(RequestError(str(error.detail), error.status_code).body(), status_code=error.status_code)

    @app.exception_handler(Exception)
    async def server_error(request, error: Exception):
        logger.exception("request failed")
        return JSONResponse({"error": {"message": "internal server error", "type": "server_error", "param": None,
                                       "code": None}}, status_code=500)

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        # As OpenAI and vLLM: the key as a bearer token on the API; /health stays open for load balancers.
        if settings.api_key and request.url.path.startswith("/v1"):
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), settings.api_key.encode()):
                error = RequestError("Incorrect API key provided", status=401, code="invalid_api_key")
                return JSONResponse(error.body(), status_code=401)
        return await call_next(request)

    @app.get("/health")
    async def health():
        if not engine.worker.is_alive():
            return JSONResponse({"status": "engine stopped"}, status_code=503)
        return {"status": "ok", "batches": engine.batches, "requests": engine.rows}

    def model_card() -> dict:
        return {"id": settings.model_name, "object": "model", "created": created, "owned_by": "fusar-gpt"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        check_model(name)
        return model_card()

    def check_model(name: str | None) -> None:
        if name is not None and name != settings.model_name:
            raise RequestError(f"The model `{name}` does not exist; this server serves `{settings.model_name}`",
                               status=404, param="model", code="model_not_found")

    body_schema = {"required": True,
                   "content": {"application/json": {"schema": chat_request_schema(settings.max_tokens)}}}

    @app.post("/v1/chat/completions", openapi_extra={"requestBody": body_schema})
    async def chat_completions(request: Request):
        chat = parse_chat_request(await read_json(request, settings.max_request_bytes))
        check_model(chat.model)
        max_tokens = chat.max_tokens or settings.max_tokens
        if max_tokens > settings.max_tokens:
            raise RequestError(f"max_tokens: at most {settings.max_tokens} on this server", param="max_tokens")
        if not engine.worker.is_alive():  # never queue a request nobody will answer
            raise RequestError("the model's worker has stopped; restart the server", status=503, code="engine_stopped")
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        sources = await fetched(chat)  # outside `preparation`: a batch never waits on another server
        with engine.preparation():
            inputs, anchors = await prepare(chat, sources)
            check_context(inputs["input_ids"].shape[1], max_tokens)
            job = Job(inputs, chat.sampling, max_tokens,
                      lambda event: loop.call_soon_threadsafe(events.put_nowait, event), stop=chat.stop)
            if engine.kv_cache.entries:
                await asyncio.to_thread(lambda: job.images)  # hashed here, not on the engine's thread
            engine.submit(job)
        reports = [a.report(i) for i, a in enumerate(anchors)]
        reply = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": settings.model_name}
        if chat.stream:
            return StreamingResponse(stream(job, events, reply, reports, chat.include_usage),
                                     media_type="text/event-stream")
        text = []
        try:
            while (event := await events.get())[0] == "delta":
                text.append(event[1])
        finally:
            job.cancelled = True  # a client gone mid-wait frees its row
        kind, *details = event
        if kind == "error":
            raise RuntimeError(details[0])
        reason, usage = details
        return reply | {"object": "chat.completion", "usage": usage, "anchors": reports, "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "".join(text)}, "finish_reason": reason}]}

    def check_context(prompt: int, max_tokens: int) -> None:
        """OpenAI's error for a conversation longer than the model reads, before any of it is computed."""
        if prompt + max_tokens > context_length:
            raise RequestError(f"This model's maximum context length is {context_length} tokens. However, you "
                               f"requested {prompt + max_tokens} tokens ({prompt} in the messages, {max_tokens} in "
                               "the completion). Please reduce the length of the messages or completion.",
                               param="messages", code="context_length_exceeded")

    async def image_anchors(image, scene) -> ImageAnchors:
        if anchor_dim is None:
            return ImageAnchors(None, "none", "the model has no anchor module")
        return given_anchors(image.anchors, image.anchors_where, anchor_dim) or await finder.find(scene)

    async def fetched(chat: ChatRequest) -> list[str | bytes]:
        """Each image's source: the bytes of an http(s) image (fetched as the media policy allows), else its URL."""
        fetching, limits = asyncio.Semaphore(settings.media.per_request), settings.limits

        async def fetch_one(image) -> str | bytes:
            if not is_remote(image.url):
                return image.url
            async with fetching:
                return await asyncio.get_running_loop().run_in_executor(
                    fetchers, fetch_image, image.url, image.where, limits, settings.media)

        return await all_of(fetch_one(image) for image in chat.images)

    async def prepare(chat: ChatRequest, sources: list[str | bytes]) -> tuple[dict, list[ImageAnchors]]:
        """The request's model inputs (a batch of one) and each image's anchors."""
        limits = settings.limits
        with tempfile.TemporaryDirectory(prefix="fusar-serve-") as folder:
            files = await all_of(asyncio.to_thread(image_file, source, image.where, settings.image_root, limits,
                                                   Path(folder)) for image, source in zip(chat.images, sources))
            # Every image's size from its header first: many images each within the limits are still one budget.
            pixels = await all_of(asyncio.to_thread(image_pixels, path, image.where, limits)
                                  for image, path in zip(chat.images, files))
            if sum(pixels) > limits.request_pixels:
                raise RequestError(f"messages: the request's images hold {sum(pixels)} pixels together, more than the "
                                   f"server's limit of {limits.request_pixels} per request", status=413,
                                   param="messages", code="image_too_large")
            scenes = await all_of(
                asyncio.to_thread(read_image, path, image.where, limits,
                                  image.where if path.is_relative_to(Path(folder)) else path.name)
                for image, path in zip(chat.images, files))
        anchors = await asyncio.gather(*(image_anchors(image, scene) for image, scene in zip(chat.images, scenes)))
        processor = engine.processor
        options = {}
        if scenes and anchor_dim is not None:
            options = {"anchors": [a.anchors for a in anchors], "acquisition_years": [s.year for s in scenes]}
        try:
            text = processor.apply_chat_template(chat.conversation, add_generation_prompt=True)
            inputs = await asyncio.to_thread(processor, images=[s.image for s in scenes] or None, text=[text],
                                             return_tensors="pt", **options)
        except (ValueError, TemplateError) as error:  # a conversation the chat template or processor cannot take
            raise RequestError(f"messages: {error}", param="messages") from None
        return dict(inputs), anchors

    return app


def yield_to_model() -> None:
    """Lowers the calling thread's priority (Linux sets niceness per thread). Requests are read while a batch
    generates; at equal priority, clients sending costly requests (large JSON, many refused images) slowed every
    `generate` step, and torch's threads wait for their slowest: well-behaved clients' p99 doubled. When the model
    is idle, these threads still get the whole machine."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


async def all_of(awaitables) -> list:
    """Every result, or the first error once all have finished: no image's work outlives the request's folder."""
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


async def read_json(request: Request, max_bytes: int):
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise _too_large(max_bytes)
    try:  # off the event loop: a large body parsed there would hold every other request up meanwhile
        return await asyncio.to_thread(json.loads, body)
    except ValueError:
        raise RequestError("the request body is not valid JSON") from None


def _too_large(max_bytes: int) -> RequestError:
    return RequestError(f"the request body is larger than the server's limit of {max_bytes // 2**20} MiB",
                        status=413, code="request_too_large")


async def stream(job: Job, events: asyncio.Queue, reply: dict, reports: list[dict], include_usage: bool):
    """Server-sent events as OpenAI streams them: the role first (with the anchors used), the text in pieces, the
    finish reason, the usage if asked, then [DONE]."""
    chunk = reply | {"object": "chat.completion.chunk"}

    def event(delta: dict, reason=None, **extra) -> str:
        return f"data: {json.dumps(chunk | {'choices': [{'index': 0, 'delta': delta, 'finish_reason': reason}]} | extra)}\n\n"

    try:
        yield event({"role": "assistant", "content": ""}, anchors=reports)
        while (message := await events.get())[0] == "delta":
            yield event({"content": message[1]})
        if message[0] == "error":
            yield f"data: {json.dumps({'error': {'message': message[1], 'type': 'server_error'}})}\n\n"
            return
        _, reason, usage = message
        yield event({}, reason)
        if include_usage:
            yield f"data: {json.dumps(chunk | {'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled = True

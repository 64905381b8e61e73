"""A chat-completions request body, checked field by field: the conversation for the chat template, its images (in
order, with each one's `anchors` field), and the generation settings. A field the server cannot honour is refused
by name rather than ignored."""

from __future__ import annotations

import json
from dataclasses import dataclass

from .engine import Sampling
from .errors import RequestError

ROLES = ("system", "user", "assistant", "developer")
# OpenAI fields that change nothing here (or only what a client logs) and are accepted as they come.
IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "reasoning_effort"}


@dataclass
class ImagePart:
    url: str
    where: str  # the request field of the image, for errors
    anchors: object = None  # its `anchors` field, as sent
    anchors_where: str = ""


@dataclass
class ChatRequest:
    conversation: list[dict]  # messages with content parts {"type": "text"} / {"type": "image"}, as chat templates take
    images: list[ImagePart]
    sampling: Sampling
    max_tokens: int | None
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    model: str | None = None


def parse_chat_request(body) -> ChatRequest:
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    known = {"messages", "model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop",
             "stream", "stream_options", "n", "anchors", "logprobs", "tools", "tool_choice", "response_format"} | IGNORED
    unknown = sorted(set(body) - known)
    if unknown:
        raise RequestError(f"unrecognized request argument: {unknown[0]}", param=unknown[0])
    if body.get("n", 1) != 1:
        raise RequestError("n: only 1 choice per request is supported", param="n")
    for name in ("tools", "logprobs"):
        if body.get(name):
            raise RequestError(f"{name}: not supported by this server", param=name)
    if body.get("response_format") not in (None, {"type": "text"}):
        raise RequestError("response_format: only text is supported", param="response_format")
    conversation, images = _messages(body.get("messages"))
    _top_level_anchors(body.get("anchors"), images)
    temperature = _number(body, "temperature", 0, 2)
    top_p = _number(body, "top_p", 0, 1, minimum_open=True)
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not -2**63 <= seed < 2**63):
        raise RequestError("seed: expected an integer from -2**63 to 2**63 - 1 (OpenAI's int64)", param="seed")
    do_sample = temperature is not None and temperature > 0
    sampling = Sampling(do_sample, temperature if do_sample else 1.0, top_p if do_sample and top_p else 1.0,
                        seed if do_sample else None)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        raise RequestError("max_tokens: expected a positive integer", param="max_tokens")
    stream, stream_options = _boolean(body, "stream"), body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise RequestError("stream_options: expected an object such as {\"include_usage\": true}",
                           param="stream_options")
    include_usage = _boolean(stream_options, "include_usage", "stream_options.include_usage")
    return ChatRequest(conversation, images, sampling, max_tokens, _stop(body.get("stop")), stream=stream,
                       include_usage=include_usage, model=body.get("model"))


def _boolean(fields: dict, name: str, where: str | None = None) -> bool:
    """A JSON boolean: the string "false" is not one (it would read as true)."""
    value = fields.get(name, False)
    if value is None or isinstance(value, bool):
        return bool(value)
    raise RequestError(f"{where or name}: expected true or false, got {json.dumps(value)}", param=where or name)


def _messages(messages) -> tuple[list[dict], list[ImagePart]]:
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages: expected a non-empty list of messages", param="messages")
    conversation, images = [], []
    for m, message in enumerate(messages):
        where = f"messages[{m}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise RequestError(f"{where}: expected an object with a role in {list(ROLES)}", param=where)
        content = message.get("content")
        if isinstance(content, str):
            parts = [{"type": "text", "text": content}]
        elif isinstance(content, list):
            parts = [_part(part, f"{where}.content[{p}]", images) for p, part in enumerate(content)]
        else:
            raise RequestError(f"{where}.content: expected a string or a list of content parts", param=where)
        role = "system" if message["role"] == "developer" else message["role"]
        conversation.append({"role": role, "content": parts})
    return conversation, images


def _part(part, where: str, images: list[ImagePart]) -> dict:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text" and isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    if kind == "image_url":
        image_url = part.get("image_url")
        url = image_url.get("url") if isinstance(image_url, dict) else image_url
        if not isinstance(url, str):
            raise RequestError(f"{where}.image_url: expected {{\"url\": ...}}", param=where)
        images.append(ImagePart(url, f"{where}.image_url", part.get("anchors"), f"{where}.anchors"))
        return {"type": "image"}
    raise RequestError(f"{where}: expected a text part or an image_url part", param=where)


def _top_level_anchors(anchors, images: list[ImagePart]) -> None:
    """The request's `anchors` list (one entry per image, in order; null leaves an image to its part / the server)."""
    if anchors is None:
        return
    if not isinstance(anchors, list) or len(anchors) != len(images):
        raise RequestError(f"anchors: expected a list with one entry per image ({len(images)})", param="anchors")
    for i, (image, spec) in enumerate(zip(images, anchors)):
        if spec is not None:
            if image.anchors is not None:
                raise RequestError(f"anchors[{i}]: the image part gives anchors too; give them once", param="anchors")
            image.anchors, image.anchors_where = spec, f"anchors[{i}]"


def _number(body: dict, name: str, low: float, high: float, minimum_open: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high or \
            (minimum_open and value == low):
        raise RequestError(f"{name}: expected a number in {'(' if minimum_open else '['}{low}, {high}]", param=name)
    return float(value)


def _stop(stop) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise RequestError("stop: expected a string or a list of up to 4 non-empty strings", param="stop")
    return tuple(stops)

"""The chat-completions request body as a JSON Schema, for the server's OpenAPI document (`GET /openapi.json`): what
`chat_request.parse_chat_request` accepts, so that clients and API fuzzers (the suite runs schemathesis) can read it.
The parser stays the judge: it gives each refusal its field and message."""

from __future__ import annotations

from .anchors import MAX_ANCHORS, MAX_YEARS

NUMBERS = {"type": "array", "items": {"type": "number"}}
ANCHORS = {
    "description": "This image's AlphaEarth anchors; left out or null: found by the server, \"none\": no anchors.",
    "anyOf": [
        {"type": "null"},
        {"const": "none"},
        {"type": "object", "required": ["npz"], "additionalProperties": False, "properties": {
            "npz": {"type": "string", "description": "base64 of the .npz that `fusar-data anchors` writes"}}},
        {"type": "object", "required": ["values", "positions"], "additionalProperties": False, "properties": {
            "values": {"type": "array", "maxItems": MAX_ANCHORS, "description": "[S, D] or [S, T, D]"},
            "positions": {"type": "array", "maxItems": MAX_ANCHORS, "items": {**NUMBERS, "minItems": 2, "maxItems": 2},
                          "description": "(row, col) in [0, 1]"},
            "mask": {"type": "array", "maxItems": MAX_ANCHORS,
                     "items": {"type": "array", "items": {"type": "boolean"}}},
            "years": {"type": "array", "maxItems": MAX_YEARS, "items": {"type": "integer"}}}},
    ],
}
TEXT_PART = {"type": "object", "required": ["type", "text"], "properties": {
    "type": {"const": "text"}, "text": {"type": "string"}}}
IMAGE_PART = {"type": "object", "required": ["type", "image_url"], "properties": {
    "type": {"const": "image_url"},
    "image_url": {"anyOf": [{"type": "string"}, {"type": "object", "required": ["url"], "properties": {
        "url": {"type": "string", "description": "data: URL, http(s) URL, or a path under --image-root"}}}]},
    "anchors": ANCHORS}}
MESSAGE = {"type": "object", "required": ["role", "content"], "properties": {
    "role": {"enum": ["system", "developer", "user", "assistant"]},
    "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"anyOf": [TEXT_PART, IMAGE_PART]}}]}}}
IGNORED = {name: {"description": "accepted and ignored, as OpenAI's"} for name in
           ("user", "metadata", "store", "service_tier", "parallel_tool_calls", "reasoning_effort", "tool_choice")}


def chat_request_schema(max_tokens: int) -> dict:
    tokens = {"type": "integer", "minimum": 1, "maximum": max_tokens}
    return {"type": "object", "required": ["messages"], "additionalProperties": False, "properties": {
        "model": {"type": "string"},
        "messages": {"type": "array", "minItems": 1, "items": MESSAGE},
        "max_tokens": tokens, "max_completion_tokens": tokens,
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "seed": {"type": "integer", "minimum": -2**63, "maximum": 2**63 - 1},
        "stop": {"anyOf": [{"type": "string", "minLength": 1}, {"type": "null"}, {
            "type": "array", "maxItems": 4, "items": {"type": "string", "minLength": 1}}]},
        "stream": {"type": ["boolean", "null"]},
        "stream_options": {"type": ["object", "null"], "properties": {"include_usage": {"type": ["boolean", "null"]}}},
        "n": {"const": 1},
        "anchors": {"type": "array", "items": ANCHORS, "description": "one entry per image, in order"},
        "logprobs": {"enum": [False, None]},
        "tools": {"type": "array", "maxItems": 0},
        "response_format": {"anyOf": [{"type": "null"}, {"const": {"type": "text"}}]},
    } | IGNORED}

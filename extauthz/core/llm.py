"""LLM endpoints, pure (design.md §15): the model an OpenAI-compatible request names in its
JSON body, and model name patterns.

`read_model_request` finds the top-level `"model"` and `"stream"` of a request body without
parsing the rest: a 100 KB prompt is skipped at memchr speed (strings are found by their
closing quote, containers by their brackets outside strings), so reading it costs a few
microseconds, not a full parse. The top level is read strictly (a body the scanner cannot
read is refused), and a second top-level `"model"` is refused too: two parsers must never
disagree about which model was asked for. Nested `"model"` keys never count.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import NamedTuple

MAX_MODEL_NAME = 256
# the largest request body Envoy sends to extauthz on an LLM route (`max_request_bytes`):
# larger ones get 413 from Envoy, never a partial body
MAX_BODY_BYTES = 1 << 20
MODEL_NAME = re.compile(rf"[!-~]{{1,{MAX_MODEL_NAME}}}", re.ASCII)
_MODEL_PATTERN = re.compile(rf"[!-)+-~]{{1,{MAX_MODEL_NAME}}}\*?", re.ASCII)  # `*` last only

# reasons a body gives no model (the decision answers 400 model_required)
NO_BODY = "no_body"
NOT_JSON = "not_json"
NO_MODEL = "no_model"
BAD_MODEL = "bad_model"  # not a string, or not 1-256 visible ASCII characters
DUPLICATE_MODEL = "duplicate_model"

_WS = b" \t\r\n"
_SCALAR = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null")
_STRUCTURE = re.compile(rb'["\[\]{}]')
_MAX_DEPTH = 1000  # (as deep as the C parser of small bodies goes)


class LlmRequest(NamedTuple):
    """What an OpenAI-compatible request asks for: the model (None when the method takes
    none, e.g. GET /v1/models, or the body gives none: then `error` says why) and whether
    it streams."""

    model: str | None
    stream: bool = False
    error: str | None = None
    # the most LLM tokens it may use (what a token limit reserves): the body's length in
    # bytes (a bound on the prompt's tokens: a token covers at least one byte, and the JSON
    # around each message is longer than a chat template's tokens for it) plus its output
    # cap (`max_tokens`, `max_completion_tokens`, `max_output_tokens`) times the choices
    # (`n`, `best_of`); None when it sets no cap, or one that is not a whole number 0-10⁹
    bound: int | None = None
    stream_options: bool = False  # the body has a top-level "stream_options"
    cap_named: bool = False  # it names an output cap (a valid one or not)
    cap_added: bool = False  # it names none: the route's `default_max_tokens` is added
    choices: int = 1  # `n` / `best_of` (the larger; 0: one that is not a whole number 0-10⁹)


NO_MODEL_NEEDED = LlmRequest(None)  # GET, HEAD: listing models, nothing to choose


class _Unreadable(ValueError):
    pass


_CAPS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_CHOICES = ("n", "best_of")
_LIMIT_KEYS = frozenset(_CAPS + _CHOICES)
MAX_CAP = 10**9
_WHOLE = re.compile(rb"-?0|[1-9][0-9]{0,9}")  # (what json.loads reads as such an int)


def _cap_named(pairs: list[tuple[str, object]]) -> bool:
    return any(key in _CAPS for key, _ in pairs)


def _choices(pairs: list[tuple[str, object]]) -> int:
    most = 1
    for key, value in pairs:
        if key in _CHOICES:
            if not isinstance(value, int) or type(value) is bool or not 0 <= value <= MAX_CAP:
                return 0
            most = max(most, value)
    return most


def _output_cap(pairs: list[tuple[str, object]]) -> int | None:
    """The output bound of a body's top-level (key, value) pairs that name one (values are
    Python's: ints, or anything else, which makes the bound unknown)."""
    cap: int | None = None
    choices = 1
    for key, value in pairs:
        if type(value) is not int or not 0 <= value <= MAX_CAP:
            return None  # a cap a server may read otherwise than we do: no bound
        if key in _CAPS:
            cap = value if cap is None else max(cap, value)
        else:
            choices = max(choices, value)
    return None if cap is None else cap * choices


SMALL_BODY = 16 << 10  # below this a full parse (in C) is cheaper than the scan


def read_model_request(
    body: bytes, method: str = "POST", default_cap: int | None = None
) -> LlmRequest:
    """The top-level `model` and `stream` of a JSON object body (see the module docstring).
    The body must be UTF-8 JSON text, without a byte order mark. `default_cap`: the output
    cap a body that names none gets (added to it on its way to the model)."""
    if method in ("GET", "HEAD"):
        return NO_MODEL_NEEDED
    if not body.strip(_WS):
        return LlmRequest(None, error=NO_BODY)
    try:
        text = body.decode("utf-8")  # (C speed: ~5 µs for 100 KB)
        found = _parse(text, len(body)) if len(body) <= SMALL_BODY else _scan(body)
    except (_Unreadable, UnicodeDecodeError):
        return LlmRequest(None, error=NOT_JSON)
    # (choices it names that cannot be read, `choices` 0: no bound, no default either)
    if default_cap is not None and found.model and found.choices and not found.cap_named:
        return found._replace(bound=len(body) + default_cap * found.choices, cap_added=True)
    return found


def _parse(text: str, size: int) -> LlmRequest:
    """A small body, parsed whole: the top-level object's pairs in order (duplicates kept)."""
    try:
        pairs = json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise _Unreadable from None
    if not isinstance(pairs, _Pairs):
        raise _Unreadable  # not an object
    models = [value for key, value in pairs if key == "model"]
    stream = any(key == "stream" and value is True for key, value in pairs)
    options = any(key == "stream_options" for key, _ in pairs)
    limits = [(key, value) for key, value in pairs if key in _LIMIT_KEYS]
    cap = _output_cap(limits)
    if len(models) > 1:
        return LlmRequest(None, stream, DUPLICATE_MODEL)
    if not models:
        return LlmRequest(None, stream, NO_MODEL)
    model = models[0]
    if not isinstance(model, str) or not MODEL_NAME.fullmatch(model):
        return LlmRequest(None, stream, BAD_MODEL)
    bound = None if cap is None else size + cap
    return LlmRequest(
        model, stream, None, bound, options, _cap_named(limits), choices=_choices(limits)
    )


class _Pairs(list[tuple[str, object]]):
    """A JSON object as its pairs (so that a repeated key is seen)."""


def _pairs(items: list[tuple[str, object]]) -> _Pairs:
    return _Pairs(items)


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity: Python's extension, not JSON


def _scan(body: bytes) -> LlmRequest:
    end = len(body)
    i = _skip_ws(body, 0)
    if i >= end or body[i] != 0x7B:  # '{' (a BOM or anything else first: not read)
        raise _Unreadable
    i = _skip_ws(body, i + 1)
    model: str | None = None
    error: str | None = None
    models = 0
    stream = False
    limits: list[tuple[str, object]] = []
    options = False
    if i < end and body[i] == 0x7D:  # '}'
        i += 1
    else:
        while True:
            if i >= end or body[i] != 0x22:  # '"'
                raise _Unreadable
            key_end = _string_end(body, i)
            raw_key = body[i + 1 : key_end - 1]
            key = _text(body[i:key_end]) if 0x5C in raw_key else raw_key.decode()
            i = _skip_ws(body, key_end)
            if i >= end or body[i] != 0x3A:  # ':'
                raise _Unreadable
            i = _skip_ws(body, i + 1)
            value_end = _value_end(body, i)
            if key == "model":
                models += 1
                model, error = _model(body[i:value_end])
            elif key == "stream":
                stream = body[i:value_end] == b"true"
            elif key == "stream_options":
                options = True
            elif key in _LIMIT_KEYS:
                raw = body[i:value_end]
                limits.append((key, int(raw) if _WHOLE.fullmatch(raw) else raw))
            i = _skip_ws(body, value_end)
            if i < end and body[i] == 0x2C:  # ','
                i = _skip_ws(body, i + 1)
                continue
            if i < end and body[i] == 0x7D:  # '}'
                i += 1
                break
            raise _Unreadable
    if _skip_ws(body, i) != end:
        raise _Unreadable  # something after the object
    if models > 1:
        return LlmRequest(None, stream, DUPLICATE_MODEL)
    if models == 0:
        return LlmRequest(None, stream, NO_MODEL)
    if error is not None:
        return LlmRequest(None, stream, error)
    cap = _output_cap(limits)
    bound = None if cap is None else end + cap
    return LlmRequest(
        model, stream, None, bound, options, _cap_named(limits), choices=_choices(limits)
    )


def _model(raw: bytes) -> tuple[str | None, str | None]:
    if not raw.startswith(b'"'):
        return None, BAD_MODEL
    name = _text(raw)
    return (name, None) if MODEL_NAME.fullmatch(name) else (None, BAD_MODEL)


def _text(raw: bytes) -> str:
    """A JSON string token's value (escapes decoded; bytes that are not UTF-8 refused)."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise _Unreadable from None
    if not isinstance(value, str):
        raise _Unreadable
    return value


def _skip_ws(body: bytes, i: int) -> int:
    end = len(body)
    while i < end and body[i] in _WS:
        i += 1
    return i


def _string_end(body: bytes, i: int) -> int:
    """The index after the string token that starts at `i` (its opening quote)."""
    j = i + 1
    while True:
        j = body.find(b'"', j)
        if j < 0:
            raise _Unreadable
        backslashes = 0
        k = j - 1
        while body[k] == 0x5C:  # '\'
            backslashes += 1
            k -= 1
        if backslashes % 2 == 0:
            return j + 1
        j += 1


def _value_end(body: bytes, i: int) -> int:
    """The index after the JSON value that starts at `i` (containers skipped by their
    brackets, strings by their quotes; scalars checked by shape)."""
    if i >= len(body):
        raise _Unreadable
    first = body[i]
    if first == 0x22:  # '"'
        return _string_end(body, i)
    if first in (0x7B, 0x5B):  # '{' '['
        return _container_end(body, i)
    found = _SCALAR.match(body, i)
    if found is None:
        raise _Unreadable
    return found.end()


def _container_end(body: bytes, i: int) -> int:
    closers: list[int] = []
    j = i
    while True:
        found = _STRUCTURE.search(body, j)
        if found is None:
            raise _Unreadable
        j = found.start()
        char = body[j]
        if char == 0x22:
            j = _string_end(body, j)
            continue
        if char in (0x7B, 0x5B):
            closers.append(0x7D if char == 0x7B else 0x5D)
            if len(closers) > _MAX_DEPTH:
                raise _Unreadable
        elif not closers or closers.pop() != char:
            raise _Unreadable
        j += 1
        if not closers:
            return j


def check_model_patterns(items: Iterable[str]) -> tuple[str, ...]:
    """Model names and `prefix*` patterns, checked (ValueError names the first bad one):
    visible ASCII, at most 256 characters, `*` only at the end and after a prefix."""
    patterns = tuple(dict.fromkeys(items))
    for item in patterns:
        if item == "*" or not _MODEL_PATTERN.fullmatch(item):
            raise ValueError(
                f"model {item!r}: a name or a prefix ending in * (visible ASCII, at most "
                f"{MAX_MODEL_NAME} characters, * only at the end)"
            )
    return patterns


def model_allowed(patterns: Iterable[str], model: str) -> bool:
    """Whether `model` is one of `patterns` (exact, case-sensitive) or starts with the
    prefix of a `prefix*` pattern."""
    for pattern in patterns:
        if pattern == model or (pattern.endswith("*") and model.startswith(pattern[:-1])):
            return True
    return False

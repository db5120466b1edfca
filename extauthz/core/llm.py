"""LLM endpoints, pure (docs/llm.md): what an OpenAI-compatible request asks for, read
strictly, and model name patterns.

A limit is a promise about what the model server does, so a request is refused wherever a
server could read it otherwise than extauthz does (docs/llm.md#what-a-limit-promises):
- one place names the model: the top-level string `"model"` of a JSON body (Content-Type
  application/json; a gateway that does not forward the header fails closed), once; never
  a query parameter, never a top-level key that case-folds to one extauthz reads (Go
  servers match JSON keys without case);
- no value a server could coerce: `stream` a boolean, output caps and choices whole numbers
  from 1, a completions `prompt` of its documented shapes; `null` is absent;
- only the endpoints of the shapes table (core/llm_shapes.py).

A small body is parsed whole (in C). A large one is scanned: its top-level keys are found
and every value skipped by its brackets and quotes at memchr speed; only the values
extauthz reads are parsed. Both hand the same (key, value) pairs to one function
(`_request`), so both sizes decide alike by construction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple
from urllib.parse import unquote_plus

from extauthz.core.llm_shapes import ENDPOINTS, MODELS, OUTPUT_CAPS, ApiShape, shape_of

MAX_MODEL_NAME = 256
# the largest request body Envoy sends to extauthz on an LLM route (`max_request_bytes`):
# larger ones get 413 from Envoy, never a partial body
MAX_BODY_BYTES = 1 << 20
# visible ASCII but `,` (LiteLLM takes "a,b" for a batch of two models)
MODEL_NAME = re.compile(rf"[!-+\--~]{{1,{MAX_MODEL_NAME}}}", re.ASCII)
_MODEL_PATTERN = re.compile(rf"[!-)+\--~]{{1,{MAX_MODEL_NAME}}}\*?", re.ASCII)  # `*` last only

# reasons a body gives no model (the decision answers 400 model_required)
NO_BODY = "no_body"
NOT_JSON = "not_json"
NO_MODEL = "no_model"
BAD_MODEL = "bad_model"  # not a string, or not 1-256 visible ASCII characters
DUPLICATE_MODEL = "duplicate_model"
# reasons a request is refused otherwise (the decision's reason; `message` says why)
INVALID = "invalid_request"  # 400: a value or key a server could read otherwise
MEDIA_TYPE = "unsupported_media_type"  # 415: a body that is not JSON
UNKNOWN_ENDPOINT = "unknown_endpoint"  # 404: a path the shapes table does not have

DEFAULT_MAX_TOKENS = 4096  # the output cap added where a limit applies and the route sets none
MAX_CAP = 10**9  # the largest output cap, `n` or `best_of` read

_WS = b" \t\r\n"
_SCALAR = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null")
_STRUCTURE = re.compile(rb'["\[\]{}]')
_MAX_DEPTH = 1000  # (as deep as the C parser of small bodies goes)
_SHOWN = 64  # characters of a client's key shown in a 400


class LlmRequest(NamedTuple):
    """What an OpenAI-compatible request asks for: the model (None when the endpoint takes
    none, e.g. GET /v1/models, or the request is refused: then `error` says why, and
    `message` too for the reasons that are not model_required) and what bounds its tokens."""

    model: str | None
    stream: bool = False
    error: str | None = None
    message: str = ""
    # the body's length in bytes: a bound on the prompt's tokens (a token covers at least
    # one byte, and the JSON around each message is longer than a chat template's tokens)
    size: int = 0
    cap: int | None = None  # the largest output cap the body names (None: none, or null)
    cap_key: str | None = None  # the cap its endpoint reads first; None: it makes no tokens
    # the keys it names null among those extauthz may set (caps, stream_options), with
    # where each value is in the body (a value set there replaces the null)
    nulls: tuple[tuple[str, int, int], ...] = ()
    choices: int = 1  # outputs per cap: the largest of `n`, `best_of`, x prompts of a list
    stream_options: bool = False  # it names a (non-null) top-level "stream_options"
    insert_at: int = 0  # where a pair added first goes (after the object's "{")
    usage_asked: bool = False  # its endpoint's streams report usage only when asked
    api: str = ""  # its endpoint's shape (chat, completions, responses, embeddings)
    # a field asking the server for what a model's prices do not cover (a premium service
    # tier, audio): refused under a budget (docs/llm.md#budgets-in-dollars)
    premium: str = ""
    # a hosted tool the server runs itself (web search, file search, code): its fees and its
    # turns' input tokens are in no bound, so it is refused under any token limit or budget
    hosted_tool: str = ""

    def bound(self, default_cap: int | None) -> int | None:
        """The most tokens it may use when a body naming no cap gets `default_cap`: body
        bytes + cap x choices (None: no cap at all, unbounded)."""
        if self.cap_key is None:
            return self.size
        cap = self.cap if self.cap is not None else default_cap
        return None if cap is None else self.size + cap * self.choices

    def cap_edits(self, default_cap: int | None) -> tuple[tuple[str, int], ...]:
        """The output caps to write into the body on its way to the model: `default_cap`
        when it names none, and the bound's cap wherever it names one null (a server may
        read that key, and null is no cap)."""
        if self.cap_key is None:
            return ()
        null_caps = [key for key, _, _ in self.nulls if key != "stream_options"]
        if self.cap is not None:
            return tuple((key, self.cap) for key in null_caps)
        if default_cap is None:
            return ()
        return tuple((key, default_cap) for key in dict.fromkeys((self.cap_key, *null_caps)))

    def splices(self, pairs: Iterable[tuple[str, object]]) -> str:
        """The edit that sets `pairs` at the top level of the body read, as Envoy's Lua
        filter (and the editing ext_proc filter) apply it: `"<body length>\n"`, then
        `"<start> <end> <text>\n"` per splice in order, offsets into the body. A key it
        names null gets its value in that place; any other is added as a first pair."""
        where = {key: (start, end) for key, start, end in self.nulls}
        cuts: list[tuple[int, int, str]] = []
        added = ""
        for key, value in pairs:
            text = json.dumps(value, separators=(",", ":"))  # (ASCII: never a newline)
            if key in where:
                cuts.append((*where[key], text))
            else:
                added += f"{json.dumps(key)}:{text},"  # (a model follows: never the last)
        if added:
            cuts.append((self.insert_at, self.insert_at, added))
        cuts.sort()
        return f"{self.size}\n" + "".join(f"{start} {end} {text}\n" for start, end, text in cuts)


NO_MODEL_NEEDED = LlmRequest(None)  # GET, HEAD /v1/models: listing models, nothing to choose


class _Unreadable(ValueError):
    pass


_BASE_READS = frozenset(("model", "stream", "stream_options"))
# what a request may ask for that its model's prices do not cover, read where its endpoint
# takes it; and the tool types a server leaves to the client (any other it runs itself)
_PREMIUM = frozenset(("service_tier", "modalities", "audio"))
STANDARD_TIERS = ("default", "flex")  # (`auto` may be the project's priority tier)
CLIENT_TOOLS = ("function", "custom")
_READS: dict[str, frozenset[str]] = {}  # shape name → the top-level keys extauthz reads


def _reads(shape: ApiShape) -> frozenset[str]:
    found = _READS.get(shape.name)
    if found is None:
        found = _BASE_READS
        if shape.produces:
            # (every endpoint's caps and choices: read, and refused where not its own)
            found |= OUTPUT_CAPS | {"n", "best_of"}
        if shape.prompt_list:
            found |= {"prompt"}
        found |= _PREMIUM & shape.fields
        if shape.name == "responses":
            found |= {"tools"}
        _READS[shape.name] = found
    return found


SMALL_BODY = 16 << 10  # below this a full parse (in C) is cheaper than the scan


def read_model_request(
    body: bytes,
    method: str = "POST",
    path: str = "/v1/chat/completions",
    content_type: str | None = "application/json",
) -> LlmRequest:
    """What a request to an `api: openai` route asks for (see the module docstring). The
    body must be UTF-8 JSON text, without a byte order mark; `content_type`: its header
    (None: absent, refused)."""
    shape = shape_of(method, path)
    if shape is None:
        return _refused(UNKNOWN_ENDPOINT, f"an api: openai route serves {ENDPOINTS}")
    query = path.partition("?")[2]
    if query and _query_names_model(query):
        return _refused(INVALID, 'the query names "model": name it in the JSON body only')
    if shape is MODELS:
        if body.strip(_WS):
            return _refused(INVALID, f"{method} {MODELS.path} takes no body")
        return NO_MODEL_NEEDED
    if content_type is None or not _is_json(content_type):  # (absent: a gateway may not say)
        return _refused(MEDIA_TYPE, "send the body as JSON with Content-Type: application/json")
    if not body.strip(_WS):
        return LlmRequest(None, error=NO_BODY)
    reads = _reads(shape)
    try:
        text = body.decode("utf-8")  # (C speed: ~5 µs for 100 KB)
        pairs = _parse(text) if len(body) <= SMALL_BODY else _scan(body, reads)
    except (_Unreadable, UnicodeDecodeError):
        return LlmRequest(None, error=NOT_JSON)
    except _TooManyKeys:
        return _refused(INVALID, f"more than {MAX_TOP_LEVEL_KEYS} top-level keys")
    found = _request(pairs, shape, reads, len(body))
    if found.model is None:
        return found
    insert_at = len(body) - len(body.lstrip(_WS)) + 1
    if not found.nulls:
        return found._replace(insert_at=insert_at)
    named = {key for key, _, _ in found.nulls}  # (rare: where each null is)
    spans = tuple(span for span in _top_level(body) if span[0] in named)
    return found._replace(insert_at=insert_at, nulls=spans)


def _refused(reason: str, message: str) -> LlmRequest:
    return LlmRequest(None, error=reason, message=message)


def _is_json(content_type: str) -> bool:
    """Whether a Content-Type names JSON in UTF-8: `application/json`, no parameter but
    `charset=utf-8` (a server may decode another charset: `utf-7` hides a second model).
    Two headers (Envoy joins them with a comma) are not JSON."""
    media, *parameters = content_type.split(";")
    if media.strip(" \t").lower() != "application/json":
        return False
    for parameter in parameters:
        name, _, value = parameter.strip(" \t").partition("=")
        if name.lower() != "charset" or value.strip('"').lower() not in ("utf-8", "utf8"):
            return False
    return True


_QUERY_PARTS = re.compile(r"[&;]")
_NOT_ALNUM = re.compile(r"[^0-9a-z]")


def _query_names_model(query: str) -> bool:
    """Whether a query string has a parameter a server could take for `model`: its name,
    percent-decoded and case-folded, is "model" once punctuation is dropped (`Model`,
    `%6Dodel`, `model[]`)."""
    for part in _QUERY_PARTS.split(query):
        name = unquote_plus(part.partition("=")[0])
        if _NOT_ALNUM.sub("", name.casefold()) == "model":
            return True
    return False


def _shown(key: str) -> str:
    return json.dumps(key if len(key) <= _SHOWN else key[:_SHOWN] + "…")


def _request(
    pairs: Sequence[tuple[str, object]], shape: ApiShape, reads: frozenset[str], size: int
) -> LlmRequest:
    """The one function that turns a body's top-level pairs (values of the keys in `reads`
    parsed, the rest not) into the request."""
    values: dict[str, object] = {}
    seen: set[str] = set()
    for key, value in pairs:
        folded = key.casefold()
        if folded not in reads:
            if key not in shape.fields:
                return _refused(
                    INVALID,
                    f"top-level key {_shown(key)}: {shape.path} takes no such field here (a "
                    "server could act on it otherwise than extauthz bounds it)",
                )
            if key in seen:
                return _refused(INVALID, f"the body names {_shown(key)} more than once")
            seen.add(key)
            continue
        if key != folded:  # (every key read is lower-case ASCII, its own case fold)
            return _refused(
                INVALID,
                f"top-level key {_shown(key)} is {folded!r} spelled otherwise (a server "
                f"that ignores case would read it): spell it {folded!r}",
            )
        if key in values:
            if key == "model":
                return LlmRequest(None, error=DUPLICATE_MODEL)
            return _refused(INVALID, f"the body names {key!r} more than once")
        values[key] = value
    if "model" not in values:
        return LlmRequest(None, error=NO_MODEL)
    model = values["model"]
    if type(model) is not str or not MODEL_NAME.fullmatch(model):
        return LlmRequest(None, error=BAD_MODEL)
    stream = values.get("stream")
    if stream is not None and type(stream) is not bool:
        return _refused(INVALID, '"stream" must be true, false or null')
    cap: int | None = None
    nulls: list[tuple[str, int, int]] = []
    choices = 1
    if shape.produces:
        elsewhere = sorted(OUTPUT_CAPS.difference(shape.cap_keys).intersection(values))
        if elsewhere:
            return _refused(
                INVALID, f"{elsewhere[0]!r} is not read by {shape.path}: use {shape.cap_keys[0]!r}"
            )
        for key in (*shape.cap_keys, *shape.choice_keys):
            value = values.get(key)
            if value is None:
                if key in values and key in shape.cap_keys:
                    nulls.append((key, 0, 0))  # (where: read_model_request finds it)
                continue
            if type(value) is not int or not 1 <= value <= MAX_CAP:
                return _refused(INVALID, f"{key!r} must be a whole number from 1 to {MAX_CAP}")
            if key in shape.cap_keys:
                cap = value if cap is None else max(cap, value)
            else:
                choices = max(choices, value)
        other = sorted({"n", "best_of"}.difference(shape.choice_keys).intersection(values))
        if other:
            return _refused(INVALID, f"{other[0]!r} is not read by {shape.path}")
        if shape.prompt_list and values.get("prompt") is not None:
            prompts = _prompts(values["prompt"])
            if prompts == 0:
                return _refused(
                    INVALID,
                    '"prompt" must be a string, a list of strings, a list of token ids or a '
                    "list of lists of token ids",
                )
            choices *= prompts
    null_options = "stream_options" in values and values["stream_options"] is None
    return LlmRequest(
        model,
        stream is True,
        size=size,
        cap=cap,
        cap_key=shape.cap_keys[0] if shape.produces else None,
        choices=choices,
        stream_options=values.get("stream_options") is not None,
        usage_asked=shape.usage_asked,
        api=shape.name,
        nulls=tuple(nulls) + ((("stream_options", 0, 0),) if null_options else ()),
        premium=_premium(values),
        hosted_tool=_hosted_tool(values.get("tools")) if shape.name == "responses" else "",
    )


def _premium(values: dict[str, object]) -> str:
    """The first field asking for what standard prices do not cover, as the 400 names it."""
    tier = values.get("service_tier")
    if tier is not None and tier not in STANDARD_TIERS:
        return f'"service_tier" {_shown(str(tier))} (only {" or ".join(STANDARD_TIERS)})'
    modalities = values.get("modalities")
    if modalities is not None and modalities != ["text"]:
        return '"modalities" other than ["text"]'
    if values.get("audio") is not None:
        return '"audio"'
    return ""


def _hosted_tool(tools: object) -> str:
    """The type of the first tool in a Responses API `tools` list that the server runs
    itself (anything but a function or custom tool); "" when none."""
    if tools is None:
        return ""
    if type(tools) is not list:
        return "tools that are not a list"
    for tool in tools:  # (each an object: its pairs; "type" once, or it is not read)
        kinds = [v for k, v in tool if k == "type"] if isinstance(tool, _Pairs) else []
        if len(kinds) != 1 or kinds[0] not in CLIENT_TOOLS:
            return _shown(str(kinds[0] if len(kinds) == 1 else tool))
    return ""


def _prompts(value: object) -> int:
    """How many prompts a completions `prompt` holds (0: not one of its shapes)."""
    if type(value) is str:
        return 1
    if type(value) is not list or not value or len(value) > MAX_PROMPTS:
        return 0
    if all(type(item) is str for item in value):
        return len(value)
    if all(type(item) is int for item in value):
        return 1  # one prompt as token ids
    if all(type(item) is list and item and all(type(t) is int for t in item) for item in value):
        return len(value)
    return 0


def _parse(text: str) -> list[tuple[str, object]]:
    """A small body, parsed whole: the top-level object's pairs in order (duplicates kept)."""
    pairs = _loads(text)
    if not isinstance(pairs, _Pairs):
        raise _Unreadable  # not an object
    return pairs


def _loads(text: str | bytes) -> object:
    try:
        return json.loads(text, object_pairs_hook=_Pairs, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise _Unreadable from None


class _Pairs(list[tuple[str, object]]):
    """A JSON object as its pairs (so that a repeated key is seen)."""


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity: Python's extension, not JSON


_NOT_READ = object()  # the value of a key extauthz does not read (never parsed)


def _scan(body: bytes, reads: frozenset[str]) -> list[tuple[str, object]]:
    """A large body's top-level pairs: the values of the keys `reads` (case-folded) parsed,
    the others not."""
    return [
        (key, _loads(body[start:end]) if key.casefold() in reads else _NOT_READ)
        for key, start, end in _top_level(body, MAX_TOP_LEVEL_KEYS)
    ]


class _TooManyKeys(ValueError):
    pass


MAX_TOP_LEVEL_KEYS = 64  # (more than any endpoint takes: the scan stops there)
MAX_PROMPTS = 2048  # prompts in one completions `prompt` list


def _top_level(body: bytes, max_keys: int = 1 << 30) -> list[tuple[str, int, int]]:
    """The top-level object's keys, each with where its value starts and ends in `body`;
    _Unreadable unless the body is one JSON object (values checked by shape only);
    _TooManyKeys past `max_keys`."""
    end = len(body)
    i = _skip_ws(body, 0)
    if i >= end or body[i] != 0x7B:  # '{' (a BOM or anything else first: not read)
        raise _Unreadable
    i = _skip_ws(body, i + 1)
    spans: list[tuple[str, int, int]] = []
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
            spans.append((key, i, value_end))
            if len(spans) > max_keys:
                raise _TooManyKeys
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
    return spans


_SPLICE = re.compile(rb"([0-9]+) ([0-9]+) ([^\n]*)\n")


def apply_splices(body: bytes, spec: str) -> bytes | None:
    """The body with `LlmRequest.splices` applied (what Envoy's Lua filter does); None when
    the spec does not fit this body (another length, splices out of order or bounds)."""
    head, _, rest = spec.encode().partition(b"\n")
    if not head.isdigit() or int(head) != len(body):
        return None
    out = bytearray()
    at = 0
    for found in _SPLICE.finditer(rest):
        start, end = int(found[1]), int(found[2])
        if start < at or end < start or end > len(body):
            return None
        out += body[at:start] + found[3]
        at = end
    return bytes(out + body[at:])


def _text(raw: bytes) -> str:
    """A JSON string token's value (escapes decoded; bytes that are not UTF-8 refused)."""
    value = _loads(raw)
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

"""The OpenAI-compatible endpoints an `api: openai` route serves, pure (docs/llm.md): one row
per endpoint says which body fields bound what the model may produce.

A request to any other path of such a route is refused (404 `unknown_endpoint`): a server
may read a model from a path (`/engines/<model>/…`, `/openai/deployments/<model>/…`), and
extauthz decides on the body's model alone. Paths are compared exactly, query stripped, so a
path that a server would normalize (`//`, `%2F`, `/./`) is refused as well.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ApiShape:
    """What one endpoint's request body means to the bound extauthz reserves."""

    name: str
    path: str
    # output caps the endpoint's servers read (the first is the one extauthz adds when the
    # body names none); () for an endpoint that produces no tokens (embeddings)
    cap_keys: tuple[str, ...] = ()
    # how many outputs it asks for; the largest counts
    choice_keys: tuple[str, ...] = ()
    # a completions `prompt` list: every prompt gets its own choices
    prompt_list: bool = False
    # the top-level keys it takes; any other is refused (a server may act on it: LiteLLM
    # reads `fallbacks`, `extra_body`, `num_retries`, `additional_drop_params`...)
    fields: frozenset[str] = frozenset()
    # a stream reports its usage only when asked (`stream_options.include_usage`)
    usage_asked: bool = False

    @property
    def produces(self) -> bool:
        """Whether it generates tokens (and so has an output cap)."""
        return bool(self.cap_keys)


# sampling parameters (OpenAI's, and vLLM's that bound nothing more)
_SAMPLING = {
    "temperature", "top_p", "stop", "presence_penalty", "frequency_penalty", "logit_bias",
    "logprobs", "user", "seed", "top_k", "min_p", "repetition_penalty", "min_tokens",
}  # fmt: skip
_STREAMING = {"model", "stream", "stream_options"}
CHAT = ApiShape(
    "chat", "/v1/chat/completions", ("max_tokens", "max_completion_tokens"), ("n",),
    fields=frozenset(_SAMPLING | _STREAMING | {
        "messages", "max_tokens", "max_completion_tokens", "n", "top_logprobs", "tools",
        "tool_choice", "parallel_tool_calls", "response_format", "functions", "function_call",
        "service_tier", "store", "modalities", "audio", "reasoning_effort", "verbosity",
        "prompt_cache_key", "safety_identifier",
    }),
    usage_asked=True,
)  # fmt: skip
COMPLETIONS = ApiShape(
    "completions", "/v1/completions", ("max_tokens",), ("n", "best_of"), True,
    fields=frozenset(_SAMPLING | _STREAMING | {
        "prompt", "suffix", "max_tokens", "n", "best_of", "echo",
    }),
    usage_asked=True,
)  # fmt: skip
# (no `previous_response_id`, `conversation` or stored `prompt`: they bring in input that is
# not in the body, which a bound of body bytes cannot cover)
RESPONSES = ApiShape(
    "responses", "/v1/responses", ("max_output_tokens",),
    fields=frozenset(_STREAMING | {
        "input", "instructions", "max_output_tokens", "temperature", "top_p", "tools",
        "tool_choice", "parallel_tool_calls", "text", "reasoning", "user", "store",
        "truncation", "include", "service_tier", "prompt_cache_key", "safety_identifier",
        "top_logprobs", "max_tool_calls",
    }),
)  # fmt: skip
EMBEDDINGS = ApiShape(
    "embeddings", "/v1/embeddings",
    fields=frozenset({"model", "input", "encoding_format", "dimensions", "user"}),
)  # fmt: skip
MODELS = ApiShape("models", "/v1/models")  # GET, HEAD: listing, no model chosen

SHAPES = {shape.path: shape for shape in (CHAT, COMPLETIONS, RESPONSES, EMBEDDINGS)}
# output caps any server is known to read (llama.cpp `n_predict`, TGI `max_new_tokens`,
# Ollama `num_predict`): at the top level of an endpoint that does not read one of them,
# they are refused, never taken for a cap nor left for a server to read
OUTPUT_CAPS = frozenset(
    {"max_tokens", "max_completion_tokens", "max_output_tokens"}
    | {"n_predict", "max_new_tokens", "num_predict"}
)
ENDPOINTS = "POST " + ", ".join(SHAPES) + "; GET /v1/models"


def shape_of(method: str, path: str) -> ApiShape | None:
    """The endpoint a request goes to (its path's query ignored), or None: not one an
    `api: openai` route serves."""
    bare = path.partition("?")[0]
    if method in ("GET", "HEAD"):
        if bare == MODELS.path or bare.startswith("/v1/models/"):
            return MODELS
        return None
    if method == "POST":
        return SHAPES.get(bare)
    return None

"""Model prices and what a request costs, pure (docs/llm.md#budgets-in-dollars).

A price is USD per million tokens, kept as whole pico-dollars per token (USD per million
tokens x 10^6: at most 6 decimal places, so `0.075` is 75,000), for input, output and cached
input tokens (reasoning tokens are output tokens). Costs are whole micro-dollars, rounded
up, so that two ways of counting the same request never differ by a fraction:
- what a request reserves: its bound, priced (prompt bytes at the dearer of the input
  prices, the output cap x choices at the output price);
- what a response is charged: (prompt - cached) x input + cached x cached_input +
  completion x output (a server's prompt tokens include the cached ones: never twice).
While the model server keeps to the cap it was sent, the charge never exceeds the
reservation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from extauthz.core.llm import check_model_patterns, model_allowed

PICO_PER_MICRO = 10**6  # pico-dollars in a micro-dollar
MAX_PRICE = 10**6  # USD per million tokens: dearer is a mistake, not a price
_DECIMAL = re.compile(r"[0-9]{1,12}(\.[0-9]{1,6})?", re.ASCII)
PRICE_RULE = (
    f"USD per million tokens: a number from 0 to {MAX_PRICE} with at most 6 decimal places "
    "(e.g. 0.15)"
)
UNPRICED = ("deny", "free")
MAX_REMEMBERED = 10_000  # model names whose price a table remembers


def parse_usd(text: str, maximum: int, rule: str) -> int:
    """A decimal amount of USD (at most 6 decimal places, from 0 to `maximum`) in millionths:
    `0.15` → 150000; ValueError (message `rule`) otherwise."""
    if not _DECIMAL.fullmatch(text):
        raise ValueError(rule)
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(rule) from None
    if value > maximum:
        raise ValueError(rule)
    return int(value * PICO_PER_MICRO)


def usd_text(millionths: int) -> str:
    """Millionths of a USD amount as its shortest decimal text: 150000 → `0.15`."""
    whole, fraction = divmod(millionths, PICO_PER_MICRO)
    if not fraction:
        return str(whole)
    return f"{whole}.{fraction:06d}".rstrip("0")


@dataclass(frozen=True, slots=True)
class Price:
    """One model's prices, in pico-dollars per token."""

    input: int
    output: int
    cached_input: int

    def reserve(self, prompt_bound: int, output_bound: int) -> int:
        """Micro-dollars a request may cost: `prompt_bound` tokens at the dearer input price
        and `output_bound` at the output price (rounded up)."""
        pico = prompt_bound * max(self.input, self.cached_input) + output_bound * self.output
        return -(-pico // PICO_PER_MICRO)

    def cost(self, prompt: int, completion: int, cached: int = 0) -> int:
        """Micro-dollars a response cost (rounded up): its cached prompt tokens (at most all of
        them) at the cached-input price, the rest at the input price."""
        cached = min(max(cached, 0), prompt)
        pico = (prompt - cached) * self.input + cached * self.cached_input
        pico += completion * self.output
        return -(-pico // PICO_PER_MICRO)

    def to_json(self) -> dict[str, str]:
        return {
            "input": usd_text(self.input),
            "output": usd_text(self.output),
            "cached_input": usd_text(self.cached_input),
        }

    def to_metadata(self) -> list[int]:
        return [self.input, self.output, self.cached_input]

    @classmethod
    def from_metadata(cls, value: object) -> Price:
        """The price settle metadata carries; ValueError unless three whole numbers in range."""
        if not isinstance(value, list) or len(value) != 3:
            raise ValueError(value)
        limit = MAX_PRICE * PICO_PER_MICRO
        if not all(type(v) is int and 0 <= v <= limit for v in value):
            raise ValueError(value)
        return cls(*value)


FREE = Price(0, 0, 0)


@dataclass(frozen=True, slots=True)
class PriceTable:
    """The policy's `prices:` (model names and `prefix*` patterns) and `unpriced:`."""

    prices: Mapping[str, Price]
    unpriced: str = "deny"  # under a budget, a model without a price: "deny" (403) or "free"
    # model → its price (None: none), as found: the warm path's one lookup
    _found: dict[str, Price | None] = field(default_factory=dict, compare=False, repr=False)

    def of(self, model: str) -> Price | None:
        """The price of `model`: its own entry, else the longest `prefix*` it starts with."""
        found = self._found
        if model in found:
            return found[model]
        price = self.prices.get(model)
        if price is None:
            best = ""
            for pattern in self.prices:
                if pattern.endswith("*") and model.startswith(pattern[:-1]):
                    best = max(best, pattern, key=len)
            price = self.prices[best] if best else None
        if len(found) < MAX_REMEMBERED:  # (names come from clients: a bounded memo)
            found[model] = price
        return price

    def to_json(self) -> dict[str, object]:
        return {
            "prices": {m: p.to_json() for m, p in sorted(self.prices.items())},
            "unpriced": self.unpriced,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> PriceTable:
        prices = data.get("prices") or {}
        if not isinstance(prices, Mapping):
            raise ValueError("prices")
        check_model_patterns(prices)
        unpriced = str(data.get("unpriced", "deny"))
        if unpriced not in UNPRICED:
            raise ValueError(unpriced)
        return cls({str(m): _price(p) for m, p in prices.items()}, unpriced)


def _price(data: object) -> Price:
    if not isinstance(data, Mapping):
        raise ValueError(data)
    given = [data.get(key, data["input"]) for key in ("input", "output", "cached_input")]
    read = [parse_usd(str(value), MAX_PRICE, PRICE_RULE) for value in given]
    return Price(read[0], read[1], read[2])


NO_PRICES = PriceTable({})


def litellm_prices(
    table: Mapping[str, object], patterns: Iterable[str] = ()
) -> dict[str, dict[str, str]]:
    """The `prices:` entries of LiteLLM's model cost map (`model_prices_and_context_window.json`:
    USD per token in `input_cost_per_token`, `output_cost_per_token`,
    `cache_read_input_token_cost`) for the models matching `patterns` (none: every model with
    both token prices), as USD per million tokens, rounded up to 6 decimal places. Entries
    without both prices, and names extauthz cannot match, are left out."""
    wanted = check_model_patterns(patterns)
    out: dict[str, dict[str, str]] = {}
    for model, entry in table.items():
        if not isinstance(entry, Mapping) or model == "sample_spec":
            continue
        try:
            check_model_patterns([model])
        except ValueError:
            continue
        if "*" in model or (wanted and not model_allowed(wanted, model)):
            continue
        found = [_per_million(entry.get(k)) for k in _LITELLM_KEYS]
        if found[0] is None or found[1] is None:
            continue
        price = {"input": found[0], "output": found[1]}
        if found[2] is not None:
            price["cached_input"] = found[2]
        out[model] = price
    return dict(sorted(out.items()))


_LITELLM_KEYS = ("input_cost_per_token", "output_cost_per_token", "cache_read_input_token_cost")


def _per_million(value: object) -> str | None:
    """USD per token (a JSON number) as USD per million tokens, rounded up to 6 places."""
    if type(value) not in (int, float) or isinstance(value, bool):
        return None
    try:
        per_million = Decimal(repr(value)) * PICO_PER_MICRO
    except InvalidOperation:
        return None
    if not per_million.is_finite() or not 0 <= per_million <= MAX_PRICE:
        return None
    millionths = int((per_million * PICO_PER_MICRO).to_integral_value(rounding="ROUND_CEILING"))
    return usd_text(millionths)

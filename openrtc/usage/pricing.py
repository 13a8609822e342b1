"""What an LLM call cost: reported by the provider (or the caller), else the user's pricing file, else
`genai-prices` (the price at the call's time), else unknown. Unknown is `None`, never 0, never a guess.

The pricing file is TOML, US dollars per million tokens; a model's key may name its provider:

    [models."gpt-4o-mini"]
    input = 0.15
    output = 0.60
    cache_read = 0.075     # optional: the input price when absent
    cache_write = 0.15     # optional: the input price when absent

    [models."anthropic/claude-haiku-4-5"]
    input = 1.0
    output = 5.0

`genai-prices` takes about 60 µs per call to price one; a call of the worker's loop must cost a few.
So each (provider, model, day) is priced once at four unit usages and the per-token rates kept: exact
while the price is linear in the counts. A model whose price has tiers (by context length) is priced
by `genai-prices` on every call instead.
"""

from __future__ import annotations

import datetime
import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openrtc.errors import ConfigError
from openrtc.usage.calls import Tokens
from openrtc.usage.totals import COST_DIGITS

log = logging.getLogger("openrtc.usage")

MILLION = 1_000_000


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens of each kind."""

    input: float
    """Input tokens not read from or written to the cache."""
    output: float
    """Output tokens (reasoning included)."""
    cache_read: float
    """Input tokens read from the cache."""
    cache_write: float
    """Input tokens written to the cache."""

    def cost(self, tokens: Tokens) -> float | None:
        if tokens.input is None or tokens.output is None:
            return None
        plain = tokens.input - tokens.cache_read - tokens.cache_write
        return (
            plain * self.input
            + tokens.cache_read * self.cache_read
            + tokens.cache_write * self.cache_write
            + tokens.output * self.output
        ) / MILLION


class PricingFile:
    """The user's prices (see the module)."""

    def __init__(self, prices: dict[str, Price], path: Path | None = None) -> None:
        self.prices = prices
        self.path = path

    @classmethod
    def load(cls, path: str | Path) -> PricingFile:
        path = Path(path)
        try:
            doc = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"pricing file {path}: {exc.strerror or exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"pricing file {path}: {exc}") from exc
        models = doc.get("models")
        if not isinstance(models, dict) or not models:
            raise ConfigError(f'pricing file {path}: no [models."NAME"] table')
        prices = {}
        for name, table in models.items():
            prices[name] = _price(path, name, table)
        return cls(prices, path)

    def price(self, provider: str | None, model: str) -> Price | None:
        if provider and (found := self.prices.get(f"{provider}/{model}")) is not None:
            return found
        return self.prices.get(model)


def _price(path: Path, name: str, table: Any) -> Price:
    where = f'pricing file {path}: [models."{name}"]'
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = set(table) - {"input", "output", "cache_read", "cache_write"}
    if unknown:
        raise ConfigError(f"{where} has unknown keys: {', '.join(sorted(unknown))}")
    values: dict[str, float] = {}
    for key in ("input", "output", "cache_read", "cache_write"):
        value = table.get(key)
        if value is None:
            if key in ("input", "output"):
                raise ConfigError(f"{where} lacks {key} (US dollars per million tokens)")
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"{where}: {key} must be a number >= 0 (US dollars per million tokens)")
        values[key] = float(value)
    return Price(
        values["input"],
        values["output"],
        values.get("cache_read", values["input"]),
        values.get("cache_write", values["input"]),
    )


class Pricing:
    """Resolves each call's cost (see the module). One per process; `cost` is called on the loop."""

    def __init__(self, file: PricingFile | None = None, use_genai_prices: bool = True) -> None:
        self.file = file
        self.use_genai_prices = use_genai_prices
        self._rates: dict[tuple[str | None, str, int], Price | bool | None] = {}
        """(provider, model, UTC day number) -> per-token rates; None: unknown; True: tiered (priced
        each call)."""
        self._unknown_logged: set[tuple[str | None, str]] = set()

    def cost(
        self, provider: str | None, model: str, tokens: Tokens, reported: float | None, at: float
    ) -> tuple[float | None, str]:
        """(cost in US dollars or None, its source). On the loop for every call: the common case (a
        genai-prices model, priced already today) is a dict look-up and the arithmetic."""
        if reported is not None:
            return reported, "reported"
        tokens_in, tokens_out, read, write, _ = tokens
        if tokens_in is None or tokens_out is None:
            return None, "unknown"
        price = self.file.price(provider, model) if self.file is not None else None
        if price is not None:
            return _rounded(price.cost(tokens)), "pricing_file"
        if self.use_genai_prices:
            day = (provider, model, int(at // 86400))  # the UTC day: prices change by the day, at most
            rates = self._rates.get(day, False)
            if rates is False:
                rates = self._rates[day] = _genai_rates(provider, model, _utc(at))
            if type(rates) is Price:
                plain = tokens_in - read - write
                total = (
                    plain * rates.input + read * rates.cache_read + write * rates.cache_write
                ) + tokens_out * rates.output
                return round(total / MILLION, COST_DIGITS), "genai_prices"
            if rates is True:  # tiered: only genai-prices itself knows
                cost = _genai_calc(provider, model, tokens, _utc(at))
                if cost is not None:
                    return _rounded(cost), "genai_prices"
        key = (provider, model)
        if key not in self._unknown_logged:  # once per model, not on every call
            self._unknown_logged.add(key)
            log.warning(
                "no price known for model %r%s: its cost stays unknown (add it to a --pricing file)",
                model,
                f" of {provider}" if provider else "",
            )
        return None, "unknown"


def _utc(at: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(at, datetime.UTC)


def _rounded(cost: float | None) -> float | None:
    """To the digits totals keep: the float noise of tokens times a per-million price goes."""
    return round(cost, COST_DIGITS) if cost is not None else None


def _genai_calc(provider: str | None, model: str, tokens: Tokens, when: datetime.datetime) -> float | None:
    from genai_prices import Usage, calc_price

    usage = Usage(
        input_tokens=tokens.input,
        output_tokens=tokens.output,
        cache_read_tokens=tokens.cache_read or None,
        cache_write_tokens=tokens.cache_write or None,
    )
    try:
        found = calc_price(usage, model, provider_id=provider, genai_request_timestamp=when)
    except LookupError:
        return None
    except Exception as exc:  # a library bug must not fail a session's record
        log.warning("genai-prices could not price model %r: %s: %s", model, type(exc).__name__, exc)
        return None
    return float(found.total_price)


def _genai_rates(provider: str | None, model: str, when: datetime.datetime) -> Price | bool | None:
    """Per-token rates read off genai-prices at four unit usages; True when the price has tiers."""
    try:
        from genai_prices import Usage, calc_price
        from genai_prices.types import TieredPrices
    except ImportError:  # not installed: no third source
        return None
    try:
        found = calc_price(
            Usage(input_tokens=MILLION, output_tokens=0),
            model,
            provider_id=provider,
            genai_request_timestamp=when,
        )
    except LookupError:
        return None
    except Exception as exc:
        log.warning("genai-prices could not price model %r: %s: %s", model, type(exc).__name__, exc)
        return None
    if any(isinstance(v, TieredPrices) for v in vars(found.model_price).values()):
        return True

    def unit(**counts: int) -> float:
        return float(
            calc_price(Usage(**counts), model, provider_id=provider, genai_request_timestamp=when).total_price
        )

    return Price(
        input=float(found.total_price),
        output=unit(input_tokens=0, output_tokens=MILLION),
        cache_read=unit(input_tokens=MILLION, cache_read_tokens=MILLION, output_tokens=0),
        cache_write=unit(input_tokens=MILLION, cache_write_tokens=MILLION, output_tokens=0),
    )

"""Token and cost accounting: prices per model from a dict or a TOML file.

A model without a configured price has cost ``None`` ("unknown"), never a silent 0: a search that
reports "$0.00" while spending money is worse than one that says it does not know. The one price
known without being configured is that of a model served on this machine: an endpoint on a loopback
address (127.0.0.0/8, ``localhost``, ``::1``) costs 0 (:func:`endpoint_prices`; tokens are still
counted). A loopback port that forwards to a paid API (an SSH tunnel, a local proxy) needs its
price stated, with ``--price`` / ``WORKFLOW_RL_LLM_PRICE`` or the price file.

TOML format (prices in USD per million tokens)::

    [models."gpt-4o-mini"]
    prompt_per_million = 0.15
    completion_per_million = 0.60

    [models."Qwen/Qwen2.5-7B-Instruct"]   # a local vLLM server: free
    prompt_per_million = 0
    completion_per_million = 0
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from workflow_rl.errors import WorkflowRLError


@dataclass(frozen=True)
class ModelPrice:
    """Price of one model in USD per million prompt / completion tokens."""

    prompt_per_million: float
    completion_per_million: float

    def __post_init__(self) -> None:
        if self.prompt_per_million < 0 or self.completion_per_million < 0:
            raise WorkflowRLError(
                f"negative price {self.prompt_per_million}/{self.completion_per_million}; prices are >= 0"
            )

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """USD cost of this many tokens."""
        return (prompt_tokens * self.prompt_per_million + completion_tokens * self.completion_per_million) / 1e6


@dataclass(frozen=True)
class PriceTable:
    """Prices by model name; ``cost`` returns None for a model that is not listed (and no default)."""

    prices: Mapping[str, ModelPrice] = field(default_factory=dict)
    default: ModelPrice | None = None  # price of every model not listed (e.g. 0 on a loopback endpoint)

    def price(self, model: str) -> ModelPrice | None:
        """The price of ``model``, or None when it is unknown."""
        return self.prices.get(model, self.default)

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        """USD cost of a call, or None when the model's price is unknown."""
        price = self.price(model)
        return None if price is None else price.cost(prompt_tokens, completion_tokens)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PriceTable:
        """Build from ``{model: {"prompt_per_million": x, "completion_per_million": y}}``.

        A ``{"models": {...}}`` wrapper (the TOML layout) is accepted too.
        """
        if "models" in data and isinstance(data["models"], Mapping):
            data = data["models"]
        prices: dict[str, ModelPrice] = {}
        for model, entry in data.items():
            if not isinstance(entry, Mapping):
                raise WorkflowRLError(f"price of {model!r} must be a table, got {entry!r}")
            missing = {"prompt_per_million", "completion_per_million"} - set(entry)
            if missing:
                raise WorkflowRLError(f"price of {model!r} is missing {sorted(missing)}")
            try:
                prices[model] = ModelPrice(float(entry["prompt_per_million"]), float(entry["completion_per_million"]))
            except (TypeError, ValueError) as exc:
                raise WorkflowRLError(f"price of {model!r} is not a number: {exc}") from None
        return cls(prices)

    @classmethod
    def from_toml(cls, path: str | Path) -> PriceTable:
        """Load a TOML price file (see the module docstring for the layout)."""
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise WorkflowRLError(f"price file {p} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise WorkflowRLError(f"price file {p} is not valid TOML: {exc}") from None
        return cls.from_dict(data)


def parse_price(text: str, source: str = "--price") -> ModelPrice:
    """A price written ``IN,OUT``: USD per million prompt (input) and completion (output) tokens."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [float(p) for p in parts]
        if len(values) != 2 or not all(math.isfinite(v) and v >= 0 for v in values):
            raise ValueError(text)
        return ModelPrice(values[0], values[1])
    except ValueError:
        raise WorkflowRLError(f"{source} {text!r}: write USD per million input,output tokens, e.g. 0.15,0.60 "
                              "(0,0 for a free model)") from None


def is_loopback(url: str) -> bool:
    """True when ``url``'s host is this machine: ``localhost`` or a loopback IP (127.0.0.0/8, ::1)."""
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):  # RFC 6761: always loopback
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name: it may resolve anywhere, so nothing is assumed
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def endpoint_prices(url: str, model: str, table: PriceTable | None = None,
                    price: ModelPrice | None = None) -> PriceTable:
    """The prices an endpoint's client charges: ``price`` (stated by the user) for ``model`` first,
    then ``table`` (the price file), then 0 for any model when ``url`` is a loopback address."""
    table = table or PriceTable()
    if price is not None:
        return replace(table, prices={**table.prices, model: price})
    if table.default is None and is_loopback(url):
        return replace(table, default=ModelPrice(0.0, 0.0))
    return table

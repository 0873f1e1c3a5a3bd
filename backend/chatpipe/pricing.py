"""What an answer cost, from its usage and model, with ``genai-prices``.

``genai-prices`` (https://github.com/pydantic/genai-prices) keeps the
providers' prices up to date; chatpipe only asks it.  A model or provider
it does not know gives no price (``None``), never a guess.  The library
takes about 250 ms to import, so it is imported on first use: pricing is
done only when asked for (``send --usage``, serve's ``"price": true``),
after the answer's text has streamed.
"""

from __future__ import annotations

from typing import Any

from chatpipe import protocol


def cost(usage: dict, model: str | None, urls: list[str]) -> float | None:
    """The price in US dollars of USAGE (a protocol ``usage`` event) for
    MODEL, or None when unknown (model, provider or token counts).

    The provider is the one ``genai-prices`` knows at the first of URLS:
    the endpoint the request went to, then the template's own (a template
    for OpenAI sent through ``--url`` to a local proxy is priced as OpenAI).
    """
    if not model or usage.get("input_tokens") is None or usage.get("output_tokens") is None:
        return None
    try:
        from genai_prices import Usage, calc_price
    except ImportError:
        return None
    tokens: dict[str, Any] = {"input_tokens": usage["input_tokens"],
                              "output_tokens": usage["output_tokens"]}
    if usage.get("cached_tokens"):
        tokens["cache_read_tokens"] = usage["cached_tokens"]
    for url in urls:
        try:
            price = calc_price(Usage(**tokens), model_ref=model, provider_api_url=url)
        except Exception:  # LookupError: unknown provider or model; anything else too
            continue
        return float(price.total_price)
    return None


class Priced:
    """Passes events on to SINK, adding ``cost`` (US dollars) to ``usage``
    events when the price of MODEL is known (see :func:`cost` for URLS)."""

    def __init__(self, sink: protocol.Sink, model: str | None, urls: list[str]) -> None:
        self._sink = sink
        self._model = model
        self._urls = [u for u in urls if u and "${" not in u]

    def emit(self, event: dict) -> None:
        """Pass EVENT on, priced if it is a ``usage`` event."""
        if event["type"] == "usage":
            price = cost(event, self._model, self._urls)
            if price is not None:
                event = {**event, "cost": round(price, 8)}
        self._sink.emit(event)

    def flush(self) -> None:
        """Flush the sink passed on to."""
        self._sink.flush()

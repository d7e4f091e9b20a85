"""LLM providers: `@provider("name")` on `def call(**request) -> dict`.

A provider returns {"content": ..., "input_tokens": int, "output_tokens": int, "cost_usd": float}.
ctx.llm journals the response, so a replay never calls the model again. Real providers (the
OpenAI and Anthropic SDKs) arrive with their own issue; a scripted provider stands in offline.
"""

from dataclasses import dataclass
from typing import Callable

from runs.retries import LLM_POLICY, RetryPolicy

PROVIDERS = {}


@dataclass(frozen=True)
class Provider:
    name: str
    fn: Callable
    # How a failed call is tried again, and how long one may take (runs/retries.py).
    retry: RetryPolicy = LLM_POLICY


class UnknownProvider(LookupError):
    pass


def provider(name, *, retry=LLM_POLICY):
    """Register `fn(**request) -> response` as LLM provider `name`. Its calls are retried in the
    harness on transient errors (never by prompting the model again), as `retry` says."""
    policy = retry.checked(f"LLM provider {name!r}") if isinstance(retry, RetryPolicy) else None
    if policy is None:
        raise TypeError(f"LLM provider {name!r}: retry must be a runs.retries.RetryPolicy, not {retry!r}")

    def register(fn):
        PROVIDERS[name] = Provider(name, fn, policy)
        return fn

    return register


def get_provider(name) -> Provider:
    try:
        return PROVIDERS[name]
    except KeyError:
        raise UnknownProvider(f"unknown LLM provider {name!r} (known: {', '.join(sorted(PROVIDERS)) or 'none'})") from None

"""LLM providers: `@provider("name")` on `def call(**request) -> dict`.

A provider returns {"content": ..., "input_tokens": int, "output_tokens": int, "cost_usd": float}.
ctx.llm journals the response, so a replay never calls the model again. Real providers (the
OpenAI and Anthropic SDKs) arrive with their own issue; a scripted provider stands in offline.
"""

PROVIDERS = {}


class UnknownProvider(LookupError):
    pass


def provider(name):
    def register(fn):
        PROVIDERS[name] = fn
        return fn

    return register


def get_provider(name):
    try:
        return PROVIDERS[name]
    except KeyError:
        raise UnknownProvider(f"unknown LLM provider {name!r} (known: {', '.join(sorted(PROVIDERS)) or 'none'})") from None

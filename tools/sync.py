"""Bring the database's tool rows in step with the registry (the code is the truth)."""

from tools.models import Tool
from tools.registry import TOOLS


def sync_tools(**kwargs):
    for spec in TOOLS.values():
        Tool.objects.update_or_create(
            name=spec.name,
            defaults={
                "description": spec.description,
                "effect": spec.effect,
                "idempotent": spec.idempotent,
                "open_world": spec.open_world,
                "compensation": spec.compensation_tool,
                "sensitive_fields": sorted(spec.sensitive),
                "input_schema": spec.input_schema(),
                "registered": True,
            },
        )
    Tool.objects.exclude(name__in=list(TOOLS)).update(registered=False)

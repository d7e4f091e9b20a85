"""The demo: a support desk's agents and tools (agents.py), the agents that prove the runtime
under crashes and load (proving.py), and the tables of the outside world they act on
(models.py). Loaded only with DEMO=1 (agentops/settings.py); `make up` and `make test` set it.
"""

# Not `apps`: that name is this package's submodule apps.py once Django has imported it.
from django.apps import apps as app_registry
from django.core.management.base import CommandError


def require_demo(command):
    """Stop `manage.py COMMAND` with one line when the demo is not loaded."""
    if not app_registry.is_installed("tools.demo"):
        raise CommandError(f"{command} needs the demo, which is not loaded: set DEMO=1")

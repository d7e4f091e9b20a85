from django.apps import AppConfig
from django.db.models.signals import post_migrate


class ToolsConfig(AppConfig):
    name = "tools"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from tools.sync import sync_tools

        # After every migrate; `manage.py serve` and the workers' start call it too.
        post_migrate.connect(lambda sender, **kw: sync_tools(), sender=self, dispatch_uid="tools.sync_tools", weak=False)

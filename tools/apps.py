from django.apps import AppConfig
from django.db.models.signals import post_migrate


class ToolsConfig(AppConfig):
    name = "tools"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from tools.sync import sync_tools

        def after_migrate(sender, **kwargs):
            from tools.models import FreezeState

            sync_tools()
            # The freeze state row every write intent locks (a flush removes it; so bring it back).
            FreezeState.objects.get_or_create(id=1)

        # After every migrate (and the test runner's flush); `manage.py serve` syncs tools too.
        post_migrate.connect(after_migrate, sender=self, dispatch_uid="tools.after_migrate", weak=False)

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class RunsConfig(AppConfig):
    name = "runs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from runs.agents import load_agent_modules
        from runs.roles import sync_role_groups

        load_agent_modules()
        import runs.rollback  # noqa: F401  (registers the built-in rollback agent)
        # After every migrate (and after the test runner's flush), so each role always holds
        # exactly the permissions that roles.py gives it.
        post_migrate.connect(sync_role_groups, sender=self, dispatch_uid="runs.sync_role_groups")
        from axes.signals import user_locked_out

        from runs.logins import record_lockout

        user_locked_out.connect(record_lockout, dispatch_uid="runs.record_lockout")

"""The Content-Security-Policy header: settings.CONTENT_SECURITY_POLICY on every page, through
django-csp's middleware, with one exception made here, in one place.

The django-rq dashboard (/django-rq/, staff only) is a third-party page whose job lists carry
inline scripts (select all, the actions menu). It alone may run inline scripts; every other
page, the Django admin included, works under the strict policy (tests/test_csp_browser.py).
"""

from csp.middleware import CSPMiddleware, PolicyParts

# Pages that are not ours and need inline scripts, by the start of their path.
INLINE_SCRIPTS_ALLOWED = ("/django-rq/",)


class ContentSecurityPolicy(CSPMiddleware):
    def get_policy_parts(self, request, response, report_only=False) -> PolicyParts:
        parts = super().get_policy_parts(request, response, report_only)
        if request.path_info.startswith(INLINE_SCRIPTS_ALLOWED):
            parts.update = {**(parts.update or {}), "script-src": ["'unsafe-inline'"]}
        return parts

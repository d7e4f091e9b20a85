"""Log filters the settings name (LOGGING)."""

import logging

from django.core.exceptions import PermissionDenied


class RefusalsInOneLine(logging.Filter):
    """Django logs a 403 with the PermissionDenied's traceback; a refusal is expected, so one
    line says it ("Forbidden (Permission denied): /runs/.../cancel/")."""

    def filter(self, record):
        if record.exc_info and isinstance(record.exc_info[1], PermissionDenied):
            record.exc_info = None
            record.exc_text = None
        return True

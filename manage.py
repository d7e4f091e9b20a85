#!/usr/bin/env python
import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentops.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as error:
        # A setting that is missing or wrong: its message says which and where to change it
        # (agentops/settings.py); the traceback says nothing more to the person at the prompt.
        sys.exit(f"agentops is not configured: {error}")


if __name__ == "__main__":
    main()

"""The local `.env` that `make up` writes on its first run, and never again.

    python -m agentops.localenv [PATH]     (default: .env beside manage.py)

It turns on DEBUG and the demo and holds a key generated for this checkout, so that every
manage.py command, in any shell, sees the configuration the server has (agentops/settings.py
reads the file). An existing file is left exactly as it is: it is the developer's.
"""

import secrets
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

TEMPLATE = """\
# This checkout's local settings, written by `make up` on its first run (it never overwrites
# this file). Every manage.py command reads it; a variable set in the environment wins over
# the line here. .env.example lists every variable with what it means.
DEBUG=1
DEMO=1
SECRET_KEY={secret_key}
"""


def write_local_env(path):
    """Write a new local .env at path; returns False, writing nothing, if one is there."""
    path = Path(path)
    try:
        with path.open("x") as file:  # "x": fails if the file exists, so never overwrites
            file.write(TEMPLATE.format(secret_key=secrets.token_urlsafe(50)))
    except FileExistsError:
        return False
    return True


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else BASE_DIR / ".env"
    if write_local_env(target):
        print(f"Wrote {target}: DEBUG and the demo on, a new SECRET_KEY. Edit it to change the settings.")
    else:
        print(f"Using {target} as it is.")

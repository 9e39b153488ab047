"""What the app scenario's test files share: where things are on the hosts, and the valid
test-only values the converge uses (each bad-input case overrides one of them)."""

from pathlib import Path

import testlib
import yaml

SCENARIO = Path(__file__).resolve().parents[1]
PLAYBOOK = testlib.PROJECT / "playbooks" / "app.yml"
# A host's first release starts in the first gunicorn slot (blue); nothing here switches.
SOCKET = "/run/multinotes/gunicorn-blue.sock"
GUNICORN = "gunicorn@blue.service"
ENV_FILE = "/etc/multinotes/multinotes.env"
VALID = next(play for play in yaml.safe_load((SCENARIO / "converge.yml").read_text())
             if "ansible.builtin.import_playbook" in play)["vars"]
# Every secret of the converge: none may reach a play's output.
SECRETS = [VALID["app_secret_key"], VALID["app_db_password"], VALID["app_db_migrate_password"],
           "Test-Only-Redis-Pw-2026", VALID["app_sentry_dsn"], VALID["app_media_secret_access_key"]]

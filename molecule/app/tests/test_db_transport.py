"""The database refuses what an attacker on the private network would try, tried for real
from the web host with the app's own credentials (read from its env file) and PyMySQL from
the live release: a plain-text connection is denied, root over TCP is denied, and the
control, the same credentials over verified TLS, gets in."""

import json

import pytest
import testlib

ENV_FILE = "/etc/multinotes/multinotes.env"
VENV_PYTHON = "/srv/multinotes/current/venv/bin/python"

PROBE = r'''
import json, ssl, sys
import pymysql
env = {}
for line in open(sys.argv[1]).read().splitlines():
    if "=" in line and not line.startswith("#"):
        key, _, value = line.partition("=")
        env[key] = value.strip('"')
user, password = (env["DB_USER"], env["DB_PASSWORD"]) if sys.argv[2] == "app" else ("root", "")
kwargs = dict(host=env["DB_HOST"], port=int(env["DB_PORT"]), user=user, password=password,
              database=env["DB_NAME"], connect_timeout=10)
if sys.argv[3] == "tls":
    kwargs["ssl"] = {"ca": env["DB_SSL_CA"], "check_hostname": True}
else:  # PyMySQL negotiates TLS by itself when the server offers it: plain text is asked for
    kwargs["ssl_disabled"] = True
try:
    conn = pymysql.connect(**kwargs)
    cipher = conn.cursor()
    cipher.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
    print(json.dumps({"connected": True, "cipher": cipher.fetchone()[1]}))
except pymysql.err.MySQLError as exc:
    print(json.dumps({"connected": False, "code": exc.args[0], "message": str(exc.args[-1])}))
'''


@pytest.fixture(scope="module")
def web():
    return testlib.host("app-web")


def attempt(web, who, transport):
    return json.loads(web.check_output("%s -c %s %s %s %s", VENV_PYTHON, PROBE, ENV_FILE, who, transport))


def test_the_app_user_gets_in_over_verified_tls(web):
    result = attempt(web, "app", "tls")
    assert result["connected"] and result["cipher"], result


@pytest.mark.parametrize("who,transport", [("app", "plain"), ("root", "plain"), ("root", "tls")])
def test_a_connection_outside_the_policy_is_denied(web, who, transport):
    # 1045: access denied (the app user is REQUIRE SSL; root has no remote account);
    # 3159: insecure transport prohibited (require_secure_transport).
    result = attempt(web, who, transport)
    assert not result["connected"] and result["code"] in (1045, 3159), result

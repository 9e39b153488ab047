"""The mariadb role's TLS check (roles/mariadb/files/mariadb_tls_check.py, installed as
/usr/local/sbin/multinotes-mariadb-tls-check), which lets a no-op converge skip the
community.crypto tasks of roles/mariadb/tasks/tls.yml (issue #20).

The material it judges is made by those very tasks: tls.yml is run as it is (local
connection, into a temporary directory), but for three things a test machine cannot have:
the command is run from the repository instead of being installed under /usr/local/sbin, the
owner and group are the running user's, and the server restart it notifies is left out. Over
what they made, the check says "right", a converge skips them, and the tasks themselves,
made to run anyway, change nothing: the check never skips a change they would make. Then
each way the material can be wrong is made, on a copy, and must be caught.
"""

import contextlib
import datetime as dt
import grp
import importlib.util
import io
import json
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT = Path(__file__).resolve().parents[3]
ROLE = ROOT / "roles" / "mariadb"
SCRIPT = ROLE / "files" / "mariadb_tls_check.py"
TLS_TASKS = ROLE / "tasks" / "tls.yml"

spec = importlib.util.spec_from_file_location("mariadb_tls_check", SCRIPT)
tls_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tls_check)

USER = pwd.getpwuid(os.getuid()).pw_name
GROUP = grp.getgrgid(os.getgid()).gr_name
# An inventory name, an FQDN, an address and the name again: the SAN keeps each once, the
# address first, in the order tls.yml computes.
NAMES = ["db1", "db1.internal.example", "10.0.0.5", "db1"]
SAN = ["IP:10.0.0.5", "DNS:db1", "DNS:db1.internal.example"]
CA_NAME = "multinotes MariaDB CA"
MODES = {"dir": 0o750, "ca.key": 0o600, "server.key": 0o640, "ca.pem": 0o644, "server.pem": 0o644}
CRYPTO_TASKS = ("Make the CA key and the server key", "Make the CA's signing request", "Self-sign the CA certificate",
                "Make the server's signing request", "Sign the server certificate with the CA")


def tls_play(tmp):
    """tls.yml's tasks as a play on this machine (see the module's docstring)."""
    tasks = [task for task in yaml.safe_load(TLS_TASKS.read_text()) if "ansible.legacy.copy" not in task]
    for task in tasks:
        for inner in task.get("block", []):
            inner.pop("notify", None)
    play = [{"name": "tls.yml", "hosts": "all", "gather_facts": False,
             "vars_files": [str(ROLE / "vars" / "main.yml")], "tasks": tasks}]
    path = tmp / "tls-play.yml"
    path.write_text(yaml.safe_dump(play, sort_keys=False))
    command = tmp / "multinotes-mariadb-tls-check"
    command.write_text(f"#!/bin/sh\nexec {sys.executable} {SCRIPT} \"$@\"\n")
    command.chmod(0o755)
    return path, command


def converge(tmp, tls_dir, *extra, check_command=None, **overrides):
    """One run of the play: (rc, {task name: its result on the host}, output)."""
    play, command = tls_play(tmp)
    extra_vars = {"ansible_python_interpreter": sys.executable, "mariadb_tls_dir": str(tls_dir),
                  "mariadb_database": "multinotes", "mariadb_tls_names": NAMES, "mariadb_tls_days": 825,
                  "mariadb_tls_renew_days": 30,
                  "__mariadb_tls_owner": USER, "__mariadb_tls_group": GROUP,
                  "__mariadb_tls_check_command": str(check_command or command), **overrides}
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json", ANSIBLE_REMOTE_TMP=str(tmp / "remote"))
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "probe,", "-c", "local",
         "-e", json.dumps(extra_vars), *extra, str(play)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    # The JSON document, without the lines ansible.cfg's profile_tasks prints around it.
    out, _ = json.JSONDecoder().raw_decode(result.stdout[result.stdout.index("{\n"):])
    tasks = {t["task"]["name"]: t["hosts"]["probe"] for t in out["plays"][0]["tasks"]}
    return result.returncode, tasks, result.stdout + result.stderr


def changed(tasks):
    return [name for name, result in tasks.items() if result.get("changed")]


def skipped(result):
    return result.get("skipped", False) or all(r.get("skipped") for r in result.get("results", [{}]))


def check(tls_dir, now=None, **changes):
    """The verdict of the check on TLS_DIR with the arguments tls.yml gives it (CHANGES
    replace some), called in process."""
    args = {"dir": str(tls_dir), "ca-name": CA_NAME, "server-name": NAMES[0], "san": json.dumps(SAN),
            "owner": USER, "group": GROUP, "dir-mode": "0750", "ca-key-mode": "0600",
            "server-key-mode": "0640", "cert-mode": "0644", "renew-days": "30"}
    args.update({key.replace("_", "-"): value for key, value in changes.items()})
    argv = [f"--{key}={value}" for key, value in args.items()]
    return _capture(lambda: tls_check.main(argv, now=now))


def _capture(call):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert call() == 0
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The material tls.yml's own tasks made, and that first run's result."""
    tmp = tmp_path_factory.mktemp("tls-made")
    rc, tasks, out = converge(tmp, tmp / "tls")
    assert rc == 0, out[-4000:]
    return tmp / "tls", tasks


@pytest.fixture
def copy(made, tmp_path):
    """A copy of the made material (same owner, group and modes) for one test to break."""
    target = tmp_path / "tls"
    shutil.copytree(made[0], target)
    for name, mode in MODES.items():
        (target if name == "dir" else target / name).chmod(mode)
    return target


def load(path, what):
    data = path.read_bytes()
    if what == "key":
        return serialization.load_pem_private_key(data, password=None)
    return x509.load_pem_x509_certificate(data)


def write_key(path, key, password=None):
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))


def write_cert(path, cert):
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def resign(cert, signer, *, drop=(), add=(), **fields):
    """CERT again with FIELDS replaced (subject, issuer, public_key, not_before, not_after),
    extensions of the classes in DROP left out and the (extension, critical) pairs in ADD put
    in, signed by SIGNER."""
    builder = (x509.CertificateBuilder()
               .subject_name(fields.get("subject", cert.subject))
               .issuer_name(fields.get("issuer", cert.issuer))
               .public_key(fields.get("public_key", cert.public_key()))
               .serial_number(cert.serial_number)
               .not_valid_before(fields.get("not_before", tls_check.validity(cert)[0]))
               .not_valid_after(fields.get("not_after", tls_check.validity(cert)[1])))
    added = {type(value) for value, _ in add}
    for ext in cert.extensions:
        if type(ext.value) not in set(drop) | added:
            builder = builder.add_extension(ext.value, critical=ext.critical)
    for value, critical in add:
        builder = builder.add_extension(value, critical=critical)
    return builder.sign(signer, hashes.SHA256())


def p384():
    return ec.generate_private_key(ec.SECP384R1())


# --- The tasks and the check agree -------------------------------------------------------


def test_the_material_the_tasks_make_is_right(made):
    tls_dir, first = made
    assert not skipped(first["Make the CA key and the server key"]), "a fresh directory must not be taken as right"
    assert first["Check whether the TLS material is what the tasks below would leave"]["stdout"], first
    verdict = check(tls_dir)
    assert verdict == {"right": True, "reasons": [], "absent": [], "renew": []}, verdict


def test_a_converge_over_right_material_skips_the_tasks_and_changes_nothing(made, tmp_path):
    rc, tasks, out = converge(tmp_path, made[0])
    assert rc == 0, out[-4000:]
    assert changed(tasks) == [], tasks
    assert all(skipped(tasks[name]) for name in CRYPTO_TASKS + ("Create the TLS directory",)), tasks


def test_the_tasks_made_to_run_over_right_material_change_nothing(made, tmp_path):
    """The check's "right" is never a change the tasks would still make: forced past the
    check, every task runs and none changes anything."""
    forced = {"__mariadb_tls_verdict": {"right": False, "reasons": ["forced by the test"], "absent": [], "renew": []}}
    rc, tasks, out = converge(tmp_path, made[0], **forced)
    assert rc == 0, out[-4000:]
    assert not any(skipped(tasks[name]) for name in CRYPTO_TASKS), tasks
    assert changed(tasks) == [], tasks


@pytest.mark.parametrize("installed", [True, False], ids=["check-installed", "check-not-installed-yet"])
def test_check_mode_on_a_fresh_host_reports_the_change_and_fails_nothing(tmp_path, installed):
    command = None if installed else tmp_path / "not-installed"
    rc, tasks, out = converge(tmp_path, tmp_path / "tls", "--check", check_command=command)
    assert rc == 0, out[-4000:]
    assert changed(tasks) == ["Create the TLS directory"], tasks
    assert not (tmp_path / "tls").exists()


def test_check_mode_over_a_directory_without_keys_reports_them_and_fails_nothing(tmp_path):
    (tmp_path / "tls").mkdir(mode=0o750)
    rc, tasks, out = converge(tmp_path, tmp_path / "tls", "--check")
    assert rc == 0, out[-4000:]
    assert changed(tasks) == ["Make the CA key and the server key"], tasks
    assert list((tmp_path / "tls").iterdir()) == []


def test_check_mode_over_right_material_reports_no_change(made, tmp_path):
    rc, tasks, out = converge(tmp_path, made[0], "--check")
    assert rc == 0, out[-4000:]
    assert changed(tasks) == [], tasks


def test_the_check_knows_every_parameter_of_the_tasks_it_stands_for():
    """The check mirrors these parameters (files/mariadb_tls_check.py says how): a task that
    gains, loses or changes one must change the check with it, or the check would call
    right what the tasks would now change."""
    block = next(task["block"] for task in yaml.safe_load(TLS_TASKS.read_text()) if "block" in task)
    params = {task["name"]: next(v for k, v in task.items() if k.startswith("community.crypto.")) for task in block
              if any(k.startswith("community.crypto.") for k in task)}
    ownership = {"owner": "{{ __mariadb_tls_owner }}", "group": "{{ __mariadb_tls_group }}"}
    assert params == {
        "Make the CA key and the server key": {
            "path": "{{ mariadb_tls_dir }}/{{ item }}.key", "type": "ECC", "curve": "secp384r1", **ownership,
            "mode": "{{ __mariadb_tls_modes[item ~ '.key'] }}"},
        "Make the CA's signing request": {
            "privatekey_path": "{{ mariadb_tls_dir }}/ca.key", "common_name": "{{ __mariadb_tls_ca_name }}",
            "basic_constraints": ["CA:TRUE"], "basic_constraints_critical": True,
            "key_usage": ["keyCertSign", "cRLSign"], "key_usage_critical": True},
        "Self-sign the CA certificate": {
            "path": "{{ mariadb_tls_dir }}/ca.pem", "csr_content": "{{ __mariadb_ca_csr.csr }}",
            "privatekey_path": "{{ mariadb_tls_dir }}/ca.key", "provider": "selfsigned",
            "selfsigned_not_after": "+{{ mariadb_tls_days }}d", "force": "{{ 'ca.pem' in __mariadb_tls_verdict['renew'] }}",
            **ownership, "mode": "{{ __mariadb_tls_modes['cert'] }}"},
        "Make the server's signing request": {
            "privatekey_path": "{{ mariadb_tls_dir }}/server.key", "common_name": "{{ __mariadb_tls_server_name }}",
            "subject_alt_name": "{{ __mariadb_tls_server_san }}", "extended_key_usage": ["serverAuth"]},
        "Sign the server certificate with the CA": {
            "path": "{{ mariadb_tls_dir }}/server.pem", "csr_content": "{{ __mariadb_server_csr.csr }}",
            "provider": "ownca", "ownca_path": "{{ mariadb_tls_dir }}/ca.pem",
            "ownca_privatekey_path": "{{ mariadb_tls_dir }}/ca.key", "ownca_not_after": "+{{ mariadb_tls_days }}d",
            "force": "{{ 'server.pem' in __mariadb_tls_verdict['renew'] }}",
            **ownership, "mode": "{{ __mariadb_tls_modes['cert'] }}"},
    }, "tls.yml's community.crypto parameters changed: change files/mariadb_tls_check.py with them, then this test"


# --- Each way the material can be wrong is caught ----------------------------------------


def chmod(name, mode):
    return lambda d: (d if name == "dir" else d / name).chmod(mode)


def remove(name):
    return lambda d: (d / name).unlink()


def new_server_key(d):
    write_key(d / "server.key", p384())


def server_key_of_type(key):
    return lambda d: write_key(d / "server.key", key)


def encrypted_server_key(d):
    write_key(d / "server.key", load(d / "server.key", "key"), password=b"secret")


def symlinked_server_key(d):
    (d / "server.key").rename(d / "real.key")
    (d / "server.key").symlink_to(d / "real.key")


def another_ca_of_the_same_name(d):
    """A new CA key and a CA certificate like the old one: server.pem is not its own."""
    key = p384()
    ca = load(d / "ca.pem", "cert")
    write_key(d / "ca.key", key)
    write_cert(d / "ca.pem", resign(ca, key, public_key=key.public_key(),
                                    add=[(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)]))


def server_cert_signed_by_another_ca_of_the_same_name(d):
    server = load(d / "server.pem", "cert")
    write_cert(d / "server.pem", resign(server, p384()))


def server_cert_with_another_issuer(d):
    server = load(d / "server.pem", "cert")
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "another CA")])
    write_cert(d / "server.pem", resign(server, load(d / "ca.key", "key"), issuer=issuer))


def server_cert(**change):
    def mutate(d):
        server = load(d / "server.pem", "cert")
        write_cert(d / "server.pem", resign(server, load(d / "ca.key", "key"), **change))
    return mutate


def ca_cert(**change):
    def mutate(d):
        ca = load(d / "ca.pem", "cert")
        write_cert(d / "ca.pem", resign(ca, load(d / "ca.key", "key"), **change))
    return mutate


def san(*names):
    return x509.SubjectAlternativeName([tls_check.general_name(name) for name in names]), False


def chain_in_server_pem(d):
    (d / "server.pem").write_bytes((d / "server.pem").read_bytes() + (d / "ca.pem").read_bytes())


LONG_AGO = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)

BROKEN = {
    "directory-mode": (chmod("dir", 0o755), {}, f"{{dir}}: owner"),
    "ca-key-mode": (chmod("ca.key", 0o640), {}, "ca.key: owner"),
    "server-key-mode": (chmod("server.key", 0o644), {}, "server.key: owner"),
    "ca-cert-mode": (chmod("ca.pem", 0o600), {}, "ca.pem: owner"),
    "server-cert-mode": (chmod("server.pem", 0o664), {}, "server.pem: owner"),
    "owner": (None, {"owner": str(os.getuid() + 1)}, "wanted"),
    "group": (None, {"group": str(os.getgid() + 1)}, "wanted"),
    "unknown-group": (None, {"group": "no-such-group-here"}, "no group named"),
    "directory-absent": (lambda d: shutil.rmtree(d), {}, "absent"),
    "ca-key-absent": (remove("ca.key"), {}, "ca.key: absent"),
    "server-key-absent": (remove("server.key"), {}, "server.key: absent"),
    "ca-cert-absent": (remove("ca.pem"), {}, "ca.pem: absent"),
    "server-cert-absent": (remove("server.pem"), {}, "server.pem: absent"),
    "server-key-a-link": (symlinked_server_key, {}, "server.key: not a regular file"),
    "server-cert-of-another-key": (new_server_key, {}, "server.pem: not server.key's certificate"),
    "server-key-rsa": (server_key_of_type(rsa.generate_private_key(public_exponent=65537, key_size=2048)), {},
                       "server.key: not an EC key on secp384r1"),
    "server-key-p256": (server_key_of_type(ec.generate_private_key(ec.SECP256R1())), {},
                        "server.key: not an EC key on secp384r1"),
    "server-key-encrypted": (encrypted_server_key, {}, "server.key: cannot be examined"),
    "ca-key-replaced": (lambda d: write_key(d / "ca.key", p384()), {}, "ca.pem: not ca.key's certificate"),
    "ca-replaced-server-cert-left": (another_ca_of_the_same_name, {}, "server.pem: not issued and signed by ca.pem"),
    "server-cert-from-another-ca-key": (server_cert_signed_by_another_ca_of_the_same_name, {},
                                        "server.pem: not issued and signed by ca.pem"),
    "server-cert-wrong-issuer": (server_cert_with_another_issuer, {}, "server.pem: not issued and signed by ca.pem"),
    "ca-cert-signed-by-another-key": (lambda d: write_cert(d / "ca.pem", resign(load(d / "ca.pem", "cert"), p384())),
                                      {}, "ca.pem: not signed by ca.key"),
    "server-cert-expired": (server_cert(not_before=LONG_AGO, not_after=LONG_AGO + dt.timedelta(days=825)), {},
                            "server.pem: not valid now"),
    "ca-cert-expired": (ca_cert(not_before=LONG_AGO, not_after=LONG_AGO + dt.timedelta(days=825)), {},
                        "ca.pem: not valid now"),
    "server-cert-not-yet-valid": (server_cert(not_before=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)), {},
                                  "server.pem: not valid now"),
    "san-another-name-expected": (None, {"san": json.dumps(["IP:10.0.0.6", "DNS:db1", "DNS:db1.internal.example"])},
                                  "server.pem: subjectAltName"),
    "san-other-order-expected": (None, {"san": json.dumps(["DNS:db1", "IP:10.0.0.5", "DNS:db1.internal.example"])},
                                 "server.pem: subjectAltName"),
    "san-one-name-more-expected": (None, {"san": json.dumps(SAN + ["DNS:db1.example"])}, "server.pem: subjectAltName"),
    "san-of-the-cert-changed": (server_cert(add=[san("IP:10.0.0.5", "DNS:db1")]), {}, "server.pem: subjectAltName"),
    "san-entry-not-understood": (None, {"san": json.dumps(SAN + ["email:dba@example.com"])}, "server.pem: cannot be examined"),
    "server-name-expected": (None, {"server_name": "db2"}, "server.pem: subject"),
    "ca-name-expected": (None, {"ca_name": "other MariaDB CA"}, "ca.pem: subject"),
    "server-cert-client-auth": (server_cert(add=[(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)]), {},
                                "server.pem: extendedKeyUsage"),
    "server-cert-no-eku": (server_cert(drop=[x509.ExtendedKeyUsage]), {}, "server.pem: no extendedKeyUsage"),
    "server-cert-extra-extension": (server_cert(add=[(x509.TLSFeature([x509.TLSFeatureType.status_request]), False)]), {},
                                    "server.pem: an extension the module would not add"),
    "server-cert-no-authority-key-id": (server_cert(drop=[x509.AuthorityKeyIdentifier]), {},
                                        "server.pem: no authorityKeyIdentifier"),
    "ca-cert-key-usage-not-critical": (ca_cert(add=[(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                                     False)]), {}, "ca.pem: keyUsage"),
    "ca-cert-not-a-ca": (ca_cert(add=[(x509.BasicConstraints(ca=False, path_length=None), True)]), {}, "ca.pem: basicConstraints"),
    "ca-cert-no-subject-key-id": (ca_cert(drop=[x509.SubjectKeyIdentifier]), {}, "ca.pem: no subjectKeyIdentifier"),
    "server-pem-holds-a-chain": (chain_in_server_pem, {}, "server.pem: holds more"),
    "server-pem-garbage": (lambda d: (d / "server.pem").write_text("not a certificate\n"), {}, "server.pem: cannot be examined"),
}


@pytest.mark.parametrize("case", BROKEN, ids=list(BROKEN))
def test_what_is_not_right_is_caught_and_said(copy, case):
    mutate, changes, reason = BROKEN[case]
    if mutate:
        mutate(copy)
    verdict = check(copy, **changes)
    assert verdict["right"] is False, verdict
    assert any(reason.format(dir=copy) in line for line in verdict["reasons"]), verdict["reasons"]


@pytest.mark.parametrize("when, reason", [(lambda after: after + dt.timedelta(seconds=1), "not valid now"),
                                          (lambda after: after - dt.timedelta(seconds=1), None)],
                         ids=["a-second-after-expiry", "a-second-before"])
def test_expiry_is_judged_at_the_second(copy, when, reason):
    after = min(tls_check.validity(load(copy / name, "cert"))[1] for name in ("ca.pem", "server.pem"))
    verdict = check(copy, now=when(after), renew_days="0")
    assert verdict["right"] is (reason is None), verdict


@pytest.mark.parametrize("days_left, renew", [(31, False), (29, True)], ids=["past-the-window", "in-the-window"])
def test_a_certificate_expiring_within_the_renewal_window_is_due(copy, days_left, renew):
    """Both certificates were made together: DAYS_LEFT before the earlier one expires, both
    are due, or none."""
    after = min(tls_check.validity(load(copy / name, "cert"))[1] for name in ("ca.pem", "server.pem"))
    verdict = check(copy, now=after - dt.timedelta(days=days_left))
    assert verdict["right"] is not renew, verdict
    assert verdict["renew"] == (["ca.pem", "server.pem"] if renew else []), verdict
    if renew:
        assert any("within 30 days: made again" in line for line in verdict["reasons"]), verdict


def test_an_expired_certificate_is_due(copy):
    after = tls_check.validity(load(copy / "server.pem", "cert"))[1]
    verdict = check(copy, now=after + dt.timedelta(days=1), renew_days="0")
    assert verdict["renew"] == ["ca.pem", "server.pem"] and not verdict["right"], verdict


def test_certificates_near_their_end_are_made_again_with_the_same_keys_then_left_alone(tmp_path):
    """tls.yml's own tasks: material made for 20 days, then a converge with the defaults
    (825 days, renewed within 30) makes both certificates again, keys kept, the server's
    still issued by the CA; the converge after it changes nothing."""
    tls = tmp_path / "tls"
    rc, tasks, out = converge(tmp_path, tls, mariadb_tls_days=20, mariadb_tls_renew_days=10)
    assert rc == 0 and check(tls)["renew"] == ["ca.pem", "server.pem"], out[-4000:]
    keys = {name: (tls / name).read_bytes() for name in ("ca.key", "server.key")}
    rc, tasks, out = converge(tmp_path, tls)
    assert rc == 0, out[-4000:]
    assert changed(tasks) == ["Self-sign the CA certificate", "Sign the server certificate with the CA"], changed(tasks)
    assert {name: (tls / name).read_bytes() for name in keys} == keys
    verdict = check(tls)
    assert verdict["right"] and verdict["renew"] == [], verdict
    after = min(tls_check.validity(load(tls / name, "cert"))[1] for name in ("ca.pem", "server.pem"))
    assert after - dt.datetime.now(dt.timezone.utc) > dt.timedelta(days=824)
    rc, tasks, out = converge(tmp_path, tls)
    assert rc == 0 and changed(tasks) == [] and all(skipped(tasks[name]) for name in CRYPTO_TASKS), out[-4000:]


VALIDATE_PLAY = """- name: The mariadb role's validation only
  hosts: all
  gather_facts: false
  tasks:
    - name: Validate
      ansible.builtin.include_role:
        name: mariadb
        tasks_from: validate
    - name: Reached only when every rule passed
      ansible.builtin.debug:
        msg: VALID
"""


@pytest.mark.parametrize("days, renew, ok", [(825, 30, True), (20, 19, True), (20, 20, False), (825, 0, False),
                                             (825, "soon", False)])
def test_a_renewal_window_not_below_the_lifetime_is_refused_naming_the_variable(tmp_path, days, renew, ok):
    (tmp_path / "play.yml").write_text(VALIDATE_PLAY)
    strong = "Aa1!" + "x" * 20  # pragma: allowlist secret
    extra = {"mariadb_tls_days": days, "mariadb_tls_renew_days": renew, "mariadb_runtime_password": strong,
             "mariadb_migrate_password": strong + "m"}
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(ROOT / "roles"), ANSIBLE_NOCOLOR="1", ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "probe,", "-c", "local",
                           "-e", json.dumps(extra), str(tmp_path / "play.yml")],
                          capture_output=True, text=True, env=env, timeout=120)
    out = proc.stdout + proc.stderr
    assert (proc.returncode == 0 and "VALID" in out) if ok else (proc.returncode != 0 and "VALID" not in out), out[-3000:]
    if not ok:
        assert f"mariadb_tls_renew_days={json.dumps(renew)} must be whole days from 1 to below" in out, out[-3000:]


def test_the_files_absent_are_named_for_check_mode(copy):
    (copy / "server.key").unlink()
    (copy / "ca.pem").unlink()
    assert check(copy)["absent"] == ["ca.pem", "server.key"]


def test_without_python3_cryptography_nothing_is_right(copy):
    """Without site-packages (-S) the library cannot be imported: still a verdict, not a crash."""
    argv = [f"--dir={copy}", f"--ca-name={CA_NAME}", f"--server-name={NAMES[0]}", f"--san={json.dumps(SAN)}",
            f"--owner={USER}", f"--group={GROUP}", "--dir-mode=0750", "--ca-key-mode=0600",
            "--server-key-mode=0640", "--cert-mode=0644"]
    result = subprocess.run([sys.executable, "-S", "-I", str(SCRIPT), *argv], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["right"] is False and "python3-cryptography cannot be imported" in verdict["reasons"][0], verdict


def test_bad_arguments_are_an_error_not_a_verdict(copy):
    result = subprocess.run([sys.executable, str(SCRIPT), f"--dir={copy}", "--san=not json"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == "", result


def test_a_check_that_fails_knows_nothing_and_says_not_right(copy, monkeypatch):
    monkeypatch.setattr(tls_check.Checker, "compare", lambda self, data: 1 / 0)
    verdict = check(copy)
    assert verdict == {"right": False, "reasons": ["the check failed: ZeroDivisionError: division by zero"],
                       "absent": [".", "ca.key", "ca.pem", "server.key", "server.pem"], "renew": []}, verdict

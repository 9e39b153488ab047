#!/usr/bin/python3
# multinotes-mariadb-tls-check: installed as it is by the mariadb role (tasks/tls.yml).
#
# Usage: multinotes-mariadb-tls-check --dir DIR --ca-name CN --server-name CN --san JSON_LIST
#          --owner USER --group GROUP --dir-mode MODE --ca-key-mode MODE
#          --server-key-mode MODE --cert-mode MODE [--renew-days DAYS]
#
# Tells, in one read-only call, whether the TLS material in DIR is exactly what the role's
# community.crypto tasks would leave there, so that a converge with nothing to change can
# skip them (issue #20: a no-op converge paid about 2.6 s of remote calls for them). It
# prints one JSON object on stdout:
#   "right":  true only when every condition below holds; anything missing, different,
#             unreadable or not understood is false: the tasks then run as they always did,
#             and they stay the one source of how the material is made;
#   "reasons": why not, one line per finding (never any key material);
#   "absent": which of ".", ca.key, server.key, ca.pem, server.pem (relative to DIR, "."
#             being DIR itself) do not exist: check mode skips the tasks that would read
#             one, which a real run would first create;
#   "renew":  which of ca.pem, server.pem are not valid now or expire within DAYS days: the
#             tasks make them again (force), with the same keys. x509_certificate ignores
#             dates by default, so without this an expired certificate would stay.
# The exit status is 0 whenever a verdict was printed, 2 on bad arguments.
#
# What it compares mirrors community.crypto 3.x (openssl_privatekey, openssl_csr_pipe and
# x509_certificate with the parameters tasks/tls.yml gives them), or is stricter:
#   keys:  unencrypted PEM, EC on secp384r1;
#   ca.pem: ca.key's public key, signed by it, subject and issuer CN=--ca-name and nothing
#           else, extensions exactly those of its request (the CN as a DNS SAN, the module's
#           default without subject_alt_name; keyUsage keyCertSign+cRLSign and
#           basicConstraints CA:TRUE, both critical) plus the subject key identifier of its
#           own key;
#   server.pem: server.key's public key, issued and signed by ca.pem, subject CN=--server-name,
#           extensions exactly the request's (the SAN list in its order, extendedKeyUsage
#           serverAuth) plus its subject key identifier and the CA's authority key identifier;
#   both:  the exact PEM the module writes, valid now and for more than --renew-days days
#          (x509_certificate ignores timestamps by default: such a one is reported here and
#          listed under "renew", never taken as right);
#   owner, group and mode of DIR and of each file (regular files, not links).
# tls.yml and this file change together: molecule/_harness/tests/test_mariadb_tls_check.py
# fails when the tasks gain a parameter this check does not know.

import argparse
import datetime as dt
import grp
import ipaddress
import json
import os
import pwd
import stat
import sys

FILES = ("ca.key", "server.key", "ca.pem", "server.pem")
CURVE = "secp384r1"


def resolve(name, lookup, kind):
    """A user or group name (or a number that names none) -> its numeric id."""
    try:
        return lookup(name)[2]
    except KeyError:
        if name.isdigit():
            return int(name)
        raise LookupError(f"no {kind} named {name!r} on this host") from None


def octal(text):
    value = int(text, 8)
    if not 0 <= value <= 0o7777:
        raise ValueError(text)
    return value


class Checker:
    def __init__(self, args, now=None):
        self.args = args
        self.dir = args.dir
        self.now = now or dt.datetime.now(dt.timezone.utc)
        self.reasons = []
        self.absent = []
        self.renew = []

    def wrong(self, reason):
        self.reasons.append(reason)

    def owned(self, label, st, mode):
        """Owner, group and mode of an lstat result, as the file module would leave them."""
        got = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
        want = (self.args.uid, self.args.gid, mode)
        if got != want:
            self.wrong(f"{label}: owner {got[0]}, group {got[1]}, mode {got[2]:04o}; "
                       f"wanted {want[0]}, {want[1]}, {want[2]:04o}")

    def read(self, name, mode):
        """The bytes of DIR/NAME when it is a regular file; None (and a reason) otherwise."""
        path = os.path.join(self.dir, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self.absent.append(name)
            self.wrong(f"{name}: absent")
            return None
        if not stat.S_ISREG(st.st_mode):
            self.wrong(f"{name}: not a regular file")
            return None
        self.owned(name, st, mode)
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except OSError as exc:
            self.wrong(f"{name}: cannot be read ({exc.strerror})")
            return None

    def run(self):
        try:
            st = os.lstat(self.dir)
        except FileNotFoundError:
            self.absent.extend((".",) + FILES)
            self.wrong(f"{self.dir}: absent")
            return self.verdict()
        if not stat.S_ISDIR(st.st_mode):
            self.absent.extend((".",) + FILES)
            self.wrong(f"{self.dir}: not a directory")
            return self.verdict()
        self.owned(self.dir, st, self.args.dir_mode)
        data = {name: self.read(name, mode) for name, mode in (
            ("ca.key", self.args.ca_key_mode), ("server.key", self.args.server_key_mode),
            ("ca.pem", self.args.cert_mode), ("server.pem", self.args.cert_mode))}
        try:
            import cryptography  # noqa: F401 - its absence is a finding, not a crash
        except ImportError as exc:
            self.wrong(f"python3-cryptography cannot be imported ({exc}): nothing was compared")
            return self.verdict()
        self.compare(data)
        return self.verdict()

    def guarded(self, label, check, *inputs):
        """check(*inputs), or None (and a reason) when an input is missing or check raises:
        anything this program does not understand is a "not right"."""
        if any(value is None for value in inputs):
            return None
        try:
            return check(*inputs)
        except Exception as exc:  # noqa: BLE001 - every doubt is reported, none is fatal
            self.wrong(f"{label}: cannot be examined ({type(exc).__name__}: {exc})")
            return None

    def compare(self, data):
        ca_key = self.guarded("ca.key", self.key, "ca.key", data["ca.key"])
        server_key = self.guarded("server.key", self.key, "server.key", data["server.key"])
        ca_cert = self.guarded("ca.pem", self.certificate, "ca.pem", data["ca.pem"])
        server_cert = self.guarded("server.pem", self.certificate, "server.pem", data["server.pem"])
        self.guarded("ca.pem", self.ca, ca_cert, ca_key)
        self.guarded("server.pem", self.server, server_cert, server_key, ca_cert)

    def key(self, name, data):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != CURVE:
            self.wrong(f"{name}: not an EC key on {CURVE}")
            return None
        return key

    def certificate(self, name, data):
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding
        cert = x509.load_pem_x509_certificate(data)
        if cert.public_bytes(Encoding.PEM) != data:
            self.wrong(f"{name}: holds more or other than the one certificate the module writes")
            return None
        before, after = validity(cert)
        if not before <= self.now < after:
            self.wrong(f"{name}: not valid now (valid from {before:%Y-%m-%d %H:%M} to {after:%Y-%m-%d %H:%M} UTC)")
            self.renew.append(name)
        elif after - self.now <= dt.timedelta(days=self.args.renew_days):
            self.wrong(f"{name}: expires {after:%Y-%m-%d %H:%M} UTC, within {self.args.renew_days} days: made again")
            self.renew.append(name)
        return cert

    def ca(self, cert, key):
        from cryptography import x509
        from cryptography.x509.oid import ExtensionOID
        if not same_key(cert.public_key(), key.public_key()):
            self.wrong("ca.pem: not ca.key's certificate")
            return
        name = common_name(self.args.ca_name)
        if cert.subject != name or cert.issuer != name:
            self.wrong(f"ca.pem: subject {cert.subject.rfc4514_string()!r}, issuer "
                       f"{cert.issuer.rfc4514_string()!r}; wanted CN={self.args.ca_name} for both")
        if not signed_by(cert, key.public_key()):
            self.wrong("ca.pem: not signed by ca.key")
        expected = [
            # openssl_csr_pipe puts the common name in as a DNS name when no SAN is given.
            x509.Extension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, False,
                           x509.SubjectAlternativeName([dns_name(self.args.ca_name)])),
            x509.Extension(ExtensionOID.KEY_USAGE, True, x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False)),
            x509.Extension(ExtensionOID.BASIC_CONSTRAINTS, True, x509.BasicConstraints(ca=True, path_length=None)),
            x509.Extension(ExtensionOID.SUBJECT_KEY_IDENTIFIER, False,
                           x509.SubjectKeyIdentifier.from_public_key(key.public_key())),
        ]
        self.extensions("ca.pem", cert, expected)

    def server(self, cert, key, ca_cert):
        from cryptography import x509
        from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID
        if not same_key(cert.public_key(), key.public_key()):
            self.wrong("server.pem: not server.key's certificate")
            return
        if cert.issuer != ca_cert.subject or not signed_by(cert, ca_cert.public_key()):
            self.wrong("server.pem: not issued and signed by ca.pem")
        if cert.subject != common_name(self.args.server_name):
            self.wrong(f"server.pem: subject {cert.subject.rfc4514_string()!r}; wanted CN={self.args.server_name}")
        try:
            ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            authority = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
        except x509.ExtensionNotFound:
            authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())
        expected = [
            x509.Extension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, False,
                           x509.SubjectAlternativeName([general_name(entry) for entry in self.args.san])),
            x509.Extension(ExtensionOID.EXTENDED_KEY_USAGE, False, x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])),
            x509.Extension(ExtensionOID.SUBJECT_KEY_IDENTIFIER, False,
                           x509.SubjectKeyIdentifier.from_public_key(key.public_key())),
            x509.Extension(ExtensionOID.AUTHORITY_KEY_IDENTIFIER, False, authority),
        ]
        self.extensions("server.pem", cert, expected)

    def extensions(self, name, cert, expected):
        """Exactly the expected extensions: each equal (value, order of names, criticality),
        none missing, none more."""
        have = {ext.oid: ext for ext in cert.extensions}
        want = {ext.oid: ext for ext in expected}
        for oid in sorted(set(have) | set(want), key=lambda oid: oid.dotted_string):
            label = getattr(oid, "_name", oid.dotted_string)
            if oid not in have:
                self.wrong(f"{name}: no {label} extension")
            elif oid not in want:
                self.wrong(f"{name}: an extension the module would not add: {label}")
            elif have[oid] != want[oid]:
                self.wrong(f"{name}: {label} is {describe(have[oid])}; wanted {describe(want[oid])}")

    def verdict(self):
        return {"right": not self.reasons, "reasons": self.reasons, "absent": sorted(set(self.absent)),
                "renew": sorted(set(self.renew))}


def validity(cert):
    """(not before, not after) as aware UTC datetimes, on cryptography before and after 42."""
    if hasattr(cert, "not_valid_after_utc"):
        return cert.not_valid_before_utc, cert.not_valid_after_utc
    return (cert.not_valid_before.replace(tzinfo=dt.timezone.utc),
            cert.not_valid_after.replace(tzinfo=dt.timezone.utc))


def same_key(one, other):
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    der = Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    return one.public_bytes(*der) == other.public_bytes(*der)


def signed_by(cert, public_key):
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or cert.signature_hash_algorithm is None:
        return False
    try:
        public_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    except InvalidSignature:
        return False
    return True


def common_name(value):
    from cryptography import x509
    return x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, value)])


def dns_name(value):
    from cryptography import x509
    if not value.isascii():
        # The module rewrites such a name to IDNA first; this check does not guess how.
        raise ValueError(f"a non-ASCII DNS name is not compared: {value!r}")
    return x509.DNSName(value)


def general_name(entry):
    """One SAN entry as the tasks write it (IP:... or DNS:...), as the module reads it."""
    from cryptography import x509
    if entry.startswith("DNS:"):
        return dns_name(entry[4:])
    if entry.startswith("IP:"):
        address = entry[3:]
        return x509.IPAddress(ipaddress.ip_network(address) if "/" in address else ipaddress.ip_address(address))
    raise ValueError(f"a SAN entry this check does not compare: {entry!r}")


def describe(ext):
    """An extension as a reason names it: a SAN as its entries, in order."""
    from cryptography import x509
    value = ext.value
    if isinstance(value, x509.SubjectAlternativeName):
        kinds = {x509.DNSName: "DNS", x509.IPAddress: "IP"}
        text = "[" + ", ".join(f"{kinds.get(type(name), type(name).__name__)}:{name.value}" for name in value) + "]"
    else:
        text = repr(value)
    return text + (" (critical)" if ext.critical else "")


def san_list(text):
    value = json.loads(text)
    if not isinstance(value, list) or not all(isinstance(entry, str) for entry in value):
        raise ValueError("--san takes a JSON list of strings")
    return value


def main(argv=None, now=None):
    parser = argparse.ArgumentParser(prog="multinotes-mariadb-tls-check",
                                     description="Is the role's TLS material exactly right? (JSON on stdout)")
    parser.add_argument("--dir", required=True, help="the TLS directory (mariadb_tls_dir)")
    parser.add_argument("--ca-name", required=True, help="the CA certificate's common name")
    parser.add_argument("--server-name", required=True, help="the server certificate's common name")
    parser.add_argument("--san", required=True, type=san_list, help='its SAN entries in order, as JSON: ["IP:10.0.0.5", "DNS:db1"]')
    parser.add_argument("--owner", required=True, help="owner of the directory and every file")
    parser.add_argument("--group", required=True, help="group of the directory and every file")
    for name in ("dir", "ca-key", "server-key", "cert"):
        parser.add_argument(f"--{name}-mode", required=True, type=octal, help="octal mode, e.g. 0640")
    parser.add_argument("--renew-days", type=int, default=0,
                        help="a certificate expiring within this many days is listed under renew (mariadb_tls_renew_days)")
    args = parser.parse_args(argv)
    checker = Checker(args, now)
    # An owner or group this host does not have: nothing can be right, the rest is still looked at.
    args.uid = checker.guarded("--owner", resolve, args.owner, pwd.getpwnam, "user")
    args.gid = checker.guarded("--group", resolve, args.group, grp.getgrnam, "group")
    try:
        verdict = checker.run()
    except Exception as exc:  # noqa: BLE001 - a check that fails knows nothing: "not right"
        verdict = {"right": False, "reasons": [f"the check failed: {type(exc).__name__}: {exc}"],
                   "absent": sorted((".",) + FILES), "renew": []}
    print(json.dumps(verdict))
    return 0


if __name__ == "__main__":
    sys.exit(main())

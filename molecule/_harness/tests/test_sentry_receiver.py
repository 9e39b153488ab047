"""The app scenario's stand-in Sentry (molecule/app/files/sentry_receiver.py): envelopes as
sentry-sdk writes them, parsed item by item, and appended whole under concurrent requests."""

import importlib.util
import json
import threading
import urllib.request
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[2] / "app" / "files" / "sentry_receiver.py"
spec = importlib.util.spec_from_file_location("sentry_receiver", SOURCE)
receiver = importlib.util.module_from_spec(spec)
spec.loader.exec_module(receiver)


def envelope(*items, lengths=True):
    out = [json.dumps({"event_id": "0" * 32}).encode()]
    for kind, payload in items:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        out += [json.dumps({"type": kind, **({"length": len(body)} if lengths else {})}).encode(), body]
    return b"\n".join(out) + b"\n"


EVENT = {"exception": {"values": [{"type": "SentryCheckError", "value": "marker-1"}]}}
SESSION = {"attrs": {"release": "1.0.0"}, "aggregates": [{"started": "2026-12-04T18:32:00Z", "crashed": 1}]}


@pytest.mark.parametrize("lengths", [True, False], ids=["with-length", "line-delimited"])
def test_every_item_of_a_multi_item_envelope_is_read(lengths):
    """The case that lost the error events in CI: an event followed by another item."""
    got = list(receiver.items(envelope(("event", EVENT), ("sessions", SESSION), ("client_report", {"x": 1}),
                                       lengths=lengths)))
    assert got == [("event", EVENT), ("sessions", SESSION), ("client_report", {"x": 1})]


def test_a_payload_with_newlines_is_read_by_its_length():
    text = b'{"a":\n1}'
    assert list(receiver.items(envelope(("attachment", text), ("event", EVENT)))) == [("attachment", {"a": 1}),
                                                                                      ("event", EVENT)]


def test_an_unreadable_item_header_is_an_error_not_a_silent_loss():
    with pytest.raises(ValueError):
        list(receiver.items(b'{}\nnot json\n{}\n'))


def test_concurrent_requests_append_whole_lines(tmp_path):
    out = tmp_path / "items.jsonl"
    server = receiver.ThreadingHTTPServer(("127.0.0.1", 0), receiver.Handler)
    server.out, server.lock = str(out), threading.Lock()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/api/7/envelope/"
    big = envelope(("event", {"exception": {"values": [{"value": "x" * 60000}]}}), ("sessions", SESSION))

    def post():
        for _ in range(10):
            with urllib.request.urlopen(urllib.request.Request(url, data=big, method="POST"), timeout=10) as reply:
                assert reply.status == 200

    threads = [threading.Thread(target=post) for _ in range(6)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        server.shutdown()
    lines = out.read_text().splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["event", "sessions"] * 60

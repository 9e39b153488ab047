"""TEST ONLY: a webhook receiver on 127.0.0.1:8099 that appends each POST body to a JSON-lines file."""
import http.server
import json


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open("/var/log/alert-receiver.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(json.loads(body)) + "\n")
        self.send_response(200)
        self.end_headers()


http.server.ThreadingHTTPServer(("127.0.0.1", 8099), Handler).serve_forever()

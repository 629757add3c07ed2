"""A shop's webhook receiver for the delivery tests, verifying with the official Standard
Webhooks library (the `standardwebhooks` package on PyPI).

    python webhook_receiver.py SECRET LOG MODE_FILE

Listens on 127.0.0.1 (a free port, printed as the first line of stdout). Each request is
verified and appended to LOG as one JSON object: webhook-id, whether the signature verified,
the status answered, and the body. MODE_FILE says how to answer, read on every request:
`ok` (204), `fail-first` (500 to the first request of each webhook-id, then 204),
`retry-after N` (503 with Retry-After: N), or `fail` (500).
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook

secret, log_path, mode_path = sys.argv[1], sys.argv[2], sys.argv[3]
hook = Webhook(secret)
seen = set()
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            hook.verify(body, headers)
            verified = True
        except Exception:  # any verification failure
            verified = False
        with open(mode_path) as f:
            mode = f.read().split()
        wid = headers.get("webhook-id", "")
        extra = {}
        with lock:
            first = wid not in seen
            seen.add(wid)
            if not verified:
                status = 400
            elif mode[0] == "ok":
                status = 204
            elif mode[0] == "fail-first":
                status = 500 if first else 204
            elif mode[0] == "retry-after":
                status, extra = 503, {"Retry-After": mode[1]}
            else:
                status = 500
            with open(log_path, "a") as log:
                log.write(json.dumps({
                    "webhook_id": wid,
                    "verified": verified,
                    "status": status,
                    "attempt": headers.get("reconciled-attempt"),
                    "sink": headers.get("reconciled-sink"),
                    "body": json.loads(body),
                }) + "\n")
        self.send_response(status)
        for k, v in extra.items():
            self.send_header(k, v)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()

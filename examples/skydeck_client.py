"""A minimal SkyDeck API client using only the standard library.

Reads the server from SKYDECK_URL (default http://127.0.0.1:8000) and the
token from SKYDECK_TOKEN (create one with `manage.py create_api_token USER`
or on the account's token page).
"""

import json
import os
import sys
import urllib.error
import urllib.request


class SkyDeckError(Exception):
    def __init__(self, status, body):
        self.status, self.body = status, body
        message = body.get("message") if isinstance(body, dict) else str(body)
        super().__init__(f"HTTP {status}: {message}")


class SkyDeck:
    def __init__(self, url=None, token=None):
        self.url = (url or os.environ.get("SKYDECK_URL") or "http://127.0.0.1:8000").rstrip("/")
        self.token = token or os.environ.get("SKYDECK_TOKEN")
        if not self.token:
            sys.exit("Set SKYDECK_TOKEN (manage.py create_api_token USERNAME prints one).")

    def request(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                raw = response.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = raw.decode(errors="replace")
            raise SkyDeckError(exc.code, payload) from None

    def get(self, path):
        return self.request("GET", path)

    def post(self, path, body=None):
        return self.request("POST", path, body if body is not None else {})

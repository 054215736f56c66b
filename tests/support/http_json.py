"""GET a JSON answer from a test app, with http.client (urllib would honour proxy settings from the
environment)."""

from __future__ import annotations

import http.client
import json
from typing import Any


def get_json(host: str, port: int, path: str, timeout: float = 5.0) -> Any:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise AssertionError(f"GET {path} answered {response.status}")
        return json.loads(body)
    finally:
        conn.close()

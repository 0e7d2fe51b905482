"""moto's endpoint, seen through a recording front: every AWS Query call (its `Action` and parameters) is
kept in `calls`, then passed to moto untouched.

moto 5.2 does not implement two Auto Scaling calls our lifecycle watcher makes,
`RecordLifecycleActionHeartbeat` and `CompleteLifecycleAction`. The front answers those as AWS does (an
empty result), and only when the group and hook they name exist in moto, else with AWS's
`ValidationError`: so the real AWS CLI can run the watcher end to end here, and the test reads back
exactly what it sent.

    front = AwsFront(moto.endpoint_url, autoscaling_client).start()
    env["AWS_ENDPOINT_URL"] = front.url    # botocore (and the AWS CLI) send every service here
    front.calls                            # [{"Action": "DescribeLifecycleHooks", ...}, ...]
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.servers.loopback import LoopbackHTTPServer

MISSING_IN_MOTO = ("RecordLifecycleActionHeartbeat", "CompleteLifecycleAction")
XMLNS = "http://autoscaling.amazonaws.com/doc/2011-01-01/"


class AwsFront:
    def __init__(self, upstream_url: str, autoscaling: Any) -> None:
        self.upstream = urlsplit(upstream_url)
        self.autoscaling = autoscaling  # a boto3 client of moto, to check the hooks named
        self.calls: list[dict[str, str]] = []
        self._lock = threading.Lock()
        front = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                params = dict(parse_qsl(body.decode(), keep_blank_values=True))
                with front._lock:
                    front.calls.append(params)
                if params.get("Action") in MISSING_IN_MOTO:
                    self._answer(*front.lifecycle_action(params))
                else:
                    self._answer(*front.forward(self.command, self.path, dict(self.headers), body))

            def _answer(self, status: int, content_type: str, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.http = LoopbackHTTPServer(Handler, name="aws-front")

    def start(self) -> AwsFront:
        self.http.start()
        return self

    def stop(self) -> None:
        self.http.stop()

    @property
    def url(self) -> str:
        return self.http.url

    def actions(self) -> list[str]:
        with self._lock:
            return [call.get("Action", "") for call in self.calls]

    def forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.getheader("Content-Type", "text/xml"), response.read()
        finally:
            conn.close()

    def lifecycle_action(self, params: dict[str, str]) -> tuple[int, str, bytes]:
        action = params["Action"]
        hooks = self.autoscaling.describe_lifecycle_hooks(
            AutoScalingGroupName=params.get("AutoScalingGroupName", "")
        )["LifecycleHooks"]
        if params.get("LifecycleHookName") not in {hook["LifecycleHookName"] for hook in hooks}:
            error = (
                f'<ErrorResponse xmlns="{XMLNS}"><Error><Type>Sender</Type><Code>ValidationError</Code>'
                "<Message>No lifecycle hook found</Message></Error>"
                "<RequestId>front</RequestId></ErrorResponse>"
            )
            return 400, "text/xml", error.encode()
        ok = (
            f'<{action}Response xmlns="{XMLNS}"><{action}Result/>'
            f"<ResponseMetadata><RequestId>front</RequestId></ResponseMetadata></{action}Response>"
        )
        return 200, "text/xml", ok.encode()

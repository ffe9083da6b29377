"""A Netgear LTE modem's local web API (LM1200, LB1120/LB2120) for tests, the lab and the demo.

    python -m hil.sims.netgear_api --listen 127.0.0.1:8080 --password s3cret

On start it prints one JSON line with the bound address (useful with port 0), then serves
until interrupted. What it speaks, with its evidence (docs/sims-modem.md has more):

- GET /api/model.json: one JSON document; `session` {userRole "Guest"/"Admin", secToken};
  `wwan` (connection, registerNetworkDisplay, roaming, currentNWserviceType,
  signalStrength {rssi, rsrp, rsrq, sinr}), `wwanadv` (curBand "LTE B2", MCC, MNC, LAC,
  cellId, chanId) for everyone; `sim` and `general` (model, FWversion, IMEI) for the
  admin only. Served as text/plain, as the modems do. Field names as eternalegypt (the
  library behind Home Assistant's netgear_lte) reads them.
- POST /Forms/config (form-encoded, with `token` = secToken): `session.password` logs in
  (a `sessionId` cookie and a 302 to /success.json; a wrong password or token: 302 to
  /error.json); `general.reboot=true` reboots (sessions are forgotten).

Side channel (in process): `model` (the JSON document, edit it freely), `garble` (serve
a broken document), `sessions` (clear it to log everyone out), `rebooted` (a count).
"""

from __future__ import annotations

import argparse
import copy
import json
import signal
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "tok123"

DEFAULT_MODEL: dict[str, Any] = {
    "general": {"model": "LM1200", "manufacturer": "Netgear", "FWversion": "NTG9X07C",
                "IMEI": "359000000000001"},
    "sim": {"status": "Ready", "iccid": "89014103211118510720"},
    "wwan": {"connection": "Connected", "registerNetworkDisplay": "AT&T",
             "roaming": False, "currentNWserviceType": "LteService",
             "signalStrength": {"rssi": -68, "rsrp": -98, "rsrq": -11, "sinr": 12}},
    "wwanadv": {"curBand": "LTE B2", "MCC": "310", "MNC": "410", "LAC": 11024,
                "cellId": 169552899, "chanId": 900},
}
GUEST_SECTIONS = ("wwan", "wwanadv")


class NetgearServer:
    """LM1200-like: model.json shows radio to guests, SIM and IMEI to the admin only."""

    def __init__(self, password: str = "s3cret", host: str = "127.0.0.1", port: int = 0) -> None:
        self.password = password
        self.sessions: set[str] = set()
        self.rebooted = 0
        self.garble = False
        self.model: dict[str, Any] = copy.deepcopy(DEFAULT_MODEL)
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((host, port), self._handler())
        self.host, self.port = self.httpd.server_address[:2]
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                        name="netgear-sim", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5.0)

    def __enter__(self) -> NetgearServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _login(self, password: str) -> str | None:
        with self._lock:
            if password != self.password:
                return None
            sid = f"s{len(self.sessions) + 1}"
            self.sessions.add(sid)
            return sid

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _session(self) -> str | None:
                for part in (self.headers.get("Cookie") or "").split(";"):
                    k, _, v = part.strip().partition("=")
                    if k == "sessionId" and v in server.sessions:
                        return v
                return None

            def do_GET(self) -> None:
                if self.path.startswith("/api/model.json"):
                    admin = self._session() is not None
                    body = dict(server.model)
                    if not admin:
                        body = {k: v for k, v in body.items() if k in GUEST_SECTIONS}
                    body["session"] = {"userRole": "Admin" if admin else "Guest",
                                       "secToken": TOKEN}
                    data = b"{garbled" if server.garble else json.dumps(body).encode()
                    self._send(200, data, "text/plain")
                elif self.path in ("/success.json", "/error.json"):
                    self._send(200, b"{}", "application/json")
                else:
                    self._send(404, b"", "text/plain")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                if self.path.split("?")[0] != "/Forms/config":
                    return self._send(404, b"", "text/plain")
                if form.get("token") != TOKEN:
                    return self._redirect("/error.json")
                if "session.password" in form:
                    sid = server._login(form["session.password"])
                    if sid is None:
                        return self._redirect("/error.json")
                    return self._redirect("/success.json", cookie=f"sessionId={sid}; Path=/")
                if self._session() is None:
                    return self._redirect("/error.json")
                if form.get("general.reboot") == "true":
                    with server._lock:
                        server.rebooted += 1
                        server.sessions.clear()
                return self._redirect("/success.json")

            def _redirect(self, where: str, cookie: str | None = None) -> None:
                self.send_response(302)
                self.send_header("Location", where)
                if cookie:
                    self.send_header("Set-Cookie", cookie)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _send(self, code: int, data: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hil.sims.netgear_api",
                                 description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--listen", type=_hostport, default=("127.0.0.1", 8080))
    ap.add_argument("--password", default="s3cret", help="the modem's admin password")
    args = ap.parse_args(argv)
    host, port = args.listen
    server = NetgearServer(args.password, host, port)
    print(json.dumps({"listen": [server.host, server.port]}), flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

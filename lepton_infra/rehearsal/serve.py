"""The rehearsal's HTTP plumbing: a threaded server for one handler function, plain (the metadata
address, bound with IP_TRANSPARENT so only packets the rehearsal routes there reach it) or TLS with a
certificate from the rehearsal's own CA for the cloud's real host names (the nodes trust that CA and
resolve those names to this machine), dispatching by Host header."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import socket
import ssl
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    client: str  # the caller's address: tells nodes apart

    @property
    def host(self) -> str:
        return self.headers.get("host", "").split(":")[0]


Response = tuple[int, dict[str, str], bytes]
Handler = Callable[[Request], Response]


def reply(status: int, body: str | bytes, content_type: str = "application/json") -> Response:
    data = body.encode() if isinstance(body, str) else body
    return status, {"Content-Type": content_type}, data


def proxy(upstream: str) -> Handler:
    """Forward a request to `upstream` (an emulator on plain HTTP), keeping path, body and headers."""

    def forward(req: Request) -> Response:
        headers = {k: v for k, v in req.headers.items() if k not in ("connection", "content-length")}
        outgoing = urllib.request.Request(
            upstream + req.path, data=req.body or None, method=req.method, headers=headers
        )
        try:
            with urllib.request.urlopen(outgoing, timeout=60) as got:
                return (
                    got.status,
                    {
                        k: v
                        for k, v in got.headers.items()
                        if k.lower() not in ("transfer-encoding", "connection", "content-length")
                    },
                    got.read(),
                )
        except urllib.error.HTTPError as err:
            return (
                err.code,
                {
                    k: v
                    for k, v in err.headers.items()
                    if k.lower() not in ("transfer-encoding", "connection", "content-length")
                },
                err.read(),
            )

    return forward


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    transparent = False

    def server_bind(self) -> None:
        if self.transparent:  # accept a destination address that is not one of ours (IP_TRANSPARENT)
            self.socket.setsockopt(socket.SOL_IP, 19, 1)
        super().server_bind()


def _handler_class(handle: Handler, log: list[str]) -> type[http.server.BaseHTTPRequestHandler]:
    class _H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            req = Request(
                self.command,
                self.path,
                {k.lower(): v for k, v in self.headers.items()},
                body,
                self.client_address[0],
            )
            try:
                status, headers, data = handle(req)
            except Exception as exc:  # a stand-in's bug must show in the log, not hang the node
                status, headers, data = reply(500, f'{{"error": "{type(exc).__name__}: {exc}"}}')
            log.append(f"{req.client} {req.method} {req.host}{req.path} -> {status}")
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _any

        def log_message(self, *args: object) -> None:
            pass

    return _H


@contextmanager
def serving(
    address: str, port: int, handle: Handler, *, transparent: bool = False, tls: ssl.SSLContext | None = None
) -> Iterator[list[str]]:
    """Serve `handle` on address:port until exit; yields the request log (one line per request)."""
    log: list[str] = []
    server = _Server.__new__(_Server)
    server.transparent = transparent
    _Server.__init__(server, (address, port), _handler_class(handle, log))
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name=f"rehearsal-{address}:{port}", daemon=True)
    thread.start()
    try:
        yield log
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@dataclass(frozen=True)
class Authority:
    """The rehearsal's CA and one server certificate for `names`."""

    ca_pem: str
    context: ssl.SSLContext


def authority(names: list[str], address: str) -> Authority:
    """A fresh CA (valid one day) and a TLS server context for `names` and `address`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)  # noqa: UP017
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lepton rehearsal CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans.append(x509.IPAddress(ipaddress.ip_address(address)))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as tmp:
        chain, keyfile = Path(tmp) / "chain.pem", Path(tmp) / "key.pem"
        chain.write_bytes(cert.public_bytes(pem) + ca.public_bytes(pem))
        keyfile.write_bytes(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        context.load_cert_chain(chain, keyfile)
    return Authority(ca.public_bytes(pem).decode(), context)

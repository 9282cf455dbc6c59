"""Photo URLs may not reach internal addresses (SSRF): literal, resolved and redirected ones are refused."""

from __future__ import annotations

import http.server
import ipaddress
import re
import socket
import threading

import pytest

from dreampose import catalog
from dreampose.catalog.safe_fetch import BlockedUrlError, UrlPolicy, blocked_reason, check_url, fetch_url
from dreampose.config import ConfigError, parse_params

PNG = b"\x89PNG fake body"


class _Handler(http.server.BaseHTTPRequestHandler):
    """``/photo.png`` -> 200; ``/redirect?to=URL`` -> 302 to URL. Counts requests on the server."""

    def do_GET(self):
        self.server.hits += 1
        if self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", self.path.split("=", 1)[1])
            self.end_headers()
            return
        self.send_response(200 if self.path == "/photo.png" else 404)
        self.send_header("Content-Length", str(len(PNG)))
        self.end_headers()
        self.wfile.write(PNG)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """Two servers on 127.0.0.1 (an 'allowed' first hop and an internal target); yields (first, target)."""
    servers = []
    for _ in range(2):
        s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        s.hits = 0
        threading.Thread(target=s.serve_forever, daemon=True).start()
        servers.append(s)
    try:
        yield servers
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()


@pytest.fixture
def no_connections(monkeypatch):
    """Fail the test if any TCP connection is attempted: refused URLs must send no traffic at all."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a connection was attempted: {args}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def _port(s) -> int:
    return s.server_address[1]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/photo.png",
        "http://127.8.9.10:8080/photo.png",
        "http://10.1.2.3/photo.png",
        "http://192.168.0.10/photo.png",
        "http://172.16.5.4/photo.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/photo.png",
        "http://[::ffff:127.0.0.1]/photo.png",
        "http://[fe80::1]/photo.png",
        "http://0.0.0.0/photo.png",
        "http://100.64.0.1/photo.png",
        "https://10.0.0.1/photo.png",
    ],
)
def test_internal_literals_refused_before_any_connection(url, no_connections):
    with pytest.raises(BlockedUrlError, match="refusing to fetch internal addresses"):
        fetch_url(url)
    with pytest.raises(BlockedUrlError):
        catalog.validate_photo(url, 64, 48)


def test_names_resolving_to_internal_addresses_are_refused(no_connections):
    # The real resolver: 'localhost' is loopback.
    with pytest.raises(BlockedUrlError, match=r"localhost is .*loopback"):
        fetch_url("http://localhost:8080/photo.png")

    # A name with one public and one private answer is refused: every address must pass.
    def two_answers(host, port):
        return ["93.184.216.34", "10.0.0.7"]

    with pytest.raises(BlockedUrlError, match=re.escape("10.0.0.7")):
        check_url("http://photos.example/a.png", UrlPolicy(), resolver=two_answers)
    # All-public answers pass, and the address returned is the one checked (the connection goes there).
    assert check_url("http://photos.example/a.png", UrlPolicy(), resolver=lambda h, p: ["93.184.216.34"]) == (
        "93.184.216.34"
    )


def test_blocked_reason_classifies_addresses():
    assert blocked_reason(ipaddress.ip_address("8.8.8.8")) is None
    assert blocked_reason(ipaddress.ip_address("2606:4700::1111")) is None
    assert blocked_reason(ipaddress.ip_address("127.0.0.1")) == "loopback"
    assert blocked_reason(ipaddress.ip_address("169.254.169.254")) == "link-local"
    assert blocked_reason(ipaddress.ip_address("224.0.0.1")) == "multicast"
    assert blocked_reason(ipaddress.ip_address("::ffff:10.0.0.1")) == "private"


def test_allowed_host_works_and_its_redirect_to_another_internal_port_is_refused(server):
    first, target = server
    allowed = UrlPolicy.of(allow_hosts=[f"127.0.0.1:{_port(first)}"])
    assert fetch_url(f"http://127.0.0.1:{_port(first)}/photo.png", allowed) == PNG
    assert first.hits == 1

    internal = f"http://127.0.0.1:{_port(target)}/photo.png"
    with pytest.raises(BlockedUrlError, match=re.escape(f"127.0.0.1:{_port(target)}/photo.png")):
        fetch_url(f"http://127.0.0.1:{_port(first)}/redirect?to={internal}", allowed)
    assert first.hits == 2 and target.hits == 0  # the redirect target never saw a request
    with pytest.raises(BlockedUrlError, match=re.escape("169.254.169.254")):
        fetch_url(f"http://127.0.0.1:{_port(first)}/redirect?to=http://169.254.169.254/latest/", allowed)

    # Redirects between allowed hops are followed; a loop ends at max_redirects.
    both = UrlPolicy.of(allow_hosts=[f"127.0.0.1:{_port(first)}", f"127.0.0.1:{_port(target)}"])
    assert fetch_url(f"http://127.0.0.1:{_port(first)}/redirect?to={internal}", both) == PNG
    assert target.hits == 1
    loop = f"http://127.0.0.1:{_port(first)}/redirect?to=/redirect?to=/photo.png"
    with pytest.raises(ValueError, match="more than 1 redirects"):
        fetch_url(loop, UrlPolicy.of(allow_hosts=[f"127.0.0.1:{_port(first)}"], max_redirects=1))


def test_allow_private_admits_every_internal_host(server):
    first, target = server
    url = f"http://127.0.0.1:{_port(first)}/redirect?to=http://127.0.0.1:{_port(target)}/photo.png"
    assert fetch_url(url, UrlPolicy(allow_private=True)) == PNG
    with pytest.raises(BlockedUrlError):
        fetch_url(url)  # the default policy


def test_photo_url_config_and_policy():
    params = parse_params({"photo_url": {"allow_hosts": ["Intranet.Example:8080"]}})
    policy = catalog.photo_url_policy(params.photo_url)
    assert policy.allow_hosts == frozenset({"intranet.example:8080"}) and not policy.allow_private
    assert catalog.photo_url_policy(params.photo_url, allow_private=True).allow_private
    with pytest.raises(ConfigError, match=r"photo_url\.allow_hosts.*host:port"):
        parse_params({"photo_url": {"allow_hosts": ["intranet.example"]}})


def test_cli_refuses_a_loopback_photo_url(tmp_path, capsys, no_connections):
    from dreampose.cli import main

    (tmp_path / "params.yaml").write_text("{}\n")
    rc = main(["--root", str(tmp_path), "catalog-item", "--photo", "http://127.0.0.1:9/a.png", "--poses", "x"])
    assert rc == 2
    assert "refusing to fetch internal addresses" in capsys.readouterr().err

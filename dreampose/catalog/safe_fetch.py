"""Fetching a URL given by a user without letting it reach internal addresses (SSRF).

A catalog photo may be an http(s) URL. Left unchecked, ``http://169.254.169.254/...`` (cloud metadata),
``http://localhost:5000/`` (the MLflow server) or any ``10.x`` host would be fetched from inside the
network. :func:`fetch_url` refuses them:

- the URL's host is resolved and **every** address must be public: loopback, private, link-local,
  shared (100.64/10), reserved, multicast and unspecified addresses are refused, including their
  IPv4-mapped IPv6 forms. A literal address is checked without any lookup, so a refused literal never
  sends a packet;
- redirects are followed by hand (at most ``max_redirects``), every hop checked the same way;
- the connection goes to the address that was checked (the socket is opened to that IP, with the URL's
  name in the ``Host`` header and, for https, as SNI and the certificate's expected name), so a DNS answer
  that changes between the check and the connection (DNS rebinding) is not used.

Limits: an HTTP proxy is never used (the environment's proxy settings are ignored, on purpose: a proxy
would resolve the name again). Only the first acceptable address is tried.

``UrlPolicy(allow_private=True)`` turns the address check off (an intranet catalog); ``allow_hosts``
admits exact ``host:port`` pairs only (a test server on ``127.0.0.1:<port>``) while a redirect from
there to any other internal address is still refused.
"""

from __future__ import annotations

import io
import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

REDIRECTS = (301, 302, 303, 307, 308)
Resolver = Callable[[str, int], list[str]]


class BlockedUrlError(ValueError):
    """The URL (or a redirect) points at an address that is not allowed."""


@dataclass(frozen=True)
class UrlPolicy:
    """What a fetched URL may reach. ``allow_hosts``: exact ``host:port`` pairs exempt from the check."""

    allow_private: bool = False
    allow_hosts: frozenset[str] = field(default_factory=frozenset)
    max_redirects: int = 5

    @classmethod
    def of(cls, allow_private: bool = False, allow_hosts: Iterable[str] = (), max_redirects: int = 5) -> UrlPolicy:
        return cls(allow_private, frozenset(h.lower() for h in allow_hosts), max_redirects)


def blocked_reason(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why ``ip`` may not be fetched from (``None``: a public address)."""
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:
        ip = mapped
    for attr in ("is_loopback", "is_link_local", "is_unspecified", "is_multicast", "is_private", "is_reserved"):
        if getattr(ip, attr):
            return attr.removeprefix("is_").replace("_", "-")
    if not ip.is_global:  # e.g. 100.64.0.0/10 (carrier-grade NAT), documentation ranges
        return "not globally routable"
    return None


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (IPv4 and IPv6)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise ValueError(f"cannot resolve {host!r}: {err.strerror}") from None
    return list(dict.fromkeys(info[4][0] for info in infos))


def _host_port(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"URL {url}: only http(s) is accepted")
    if not parts.hostname:
        raise ValueError(f"URL {url}: no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValueError(f"URL {url}: bad port") from None
    return parts.scheme, parts.hostname.lower(), port


def check_url(url: str, policy: UrlPolicy, resolver: Resolver = system_resolver) -> str:
    """The address to connect to for ``url``; raises :class:`BlockedUrlError` when ``policy`` forbids it.

    A literal IP is judged without a lookup; a name is resolved and every address must pass.
    """
    _, host, port = _host_port(url)
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    addresses = [str(literal)] if literal is not None else resolver(host, port)
    if not addresses:
        raise ValueError(f"URL {url}: {host!r} resolves to no address")
    exempt = policy.allow_private or f"{host}:{port}" in policy.allow_hosts
    if not exempt:
        for addr in addresses:
            reason = blocked_reason(ipaddress.ip_address(addr.split("%")[0]))
            if reason is not None:
                raise BlockedUrlError(
                    f"URL {url}: {host} is {addr}, a {reason} address; refusing to fetch internal addresses "
                    "(allow them explicitly: --allow-private-urls or photo_url.allow_private / allow_hosts)"
                )
    return addresses[0]


def _open(url: str, address: str, timeout_s: float):
    """GET ``url`` over a socket to ``address`` (the checked IP), with the URL's own name for Host/SNI/TLS."""
    import urllib3

    scheme, host, port = _host_port(url)
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    netloc = f"[{host}]" if ":" in host else host
    if port != (443 if scheme == "https" else 80):
        netloc = f"{netloc}:{port}"
    timeout = urllib3.Timeout(connect=timeout_s, read=timeout_s)
    if scheme == "https":
        try:
            import certifi

            ca = {"ca_certs": certifi.where()}
        except ImportError:  # urllib3 falls back to the system store
            ca = {}
        pool = urllib3.HTTPSConnectionPool(
            address, port, timeout=timeout, retries=False, server_hostname=host, assert_hostname=host, **ca
        )
    else:
        pool = urllib3.HTTPConnectionPool(address, port, timeout=timeout, retries=False)
    resp = pool.request(
        "GET", path, headers={"Host": netloc}, redirect=False, preload_content=False, decode_content=True
    )
    return pool, resp


def fetch_url(
    url: str,
    policy: UrlPolicy = UrlPolicy(),
    timeout_s: float = 30.0,
    max_bytes: int = 50_000_000,
    resolver: Resolver = system_resolver,
) -> bytes:
    """The body of ``url`` (status 200 only, at most ``max_bytes``), every hop checked against ``policy``."""
    import urllib3

    current = url
    for _hop in range(policy.max_redirects + 1):
        address = check_url(current, policy, resolver)
        try:
            pool, resp = _open(current, address, timeout_s)
        except urllib3.exceptions.HTTPError as err:
            raise ValueError(f"URL {url} could not be fetched: {type(err).__name__}") from None
        try:
            if resp.status in REDIRECTS:
                location = resp.headers.get("Location")
                if not location:
                    raise ValueError(f"URL {current} answered HTTP {resp.status} without a Location")
                current = urljoin(current, location)
                continue
            if resp.status != 200:
                raise ValueError(f"URL {url} answered HTTP {resp.status}")
            buf = io.BytesIO()
            try:
                for chunk in resp.stream(1 << 16):
                    buf.write(chunk)
                    if buf.tell() > max_bytes:
                        raise ValueError(f"URL {url} is larger than {max_bytes} bytes")
            except urllib3.exceptions.HTTPError as err:
                raise ValueError(f"URL {url} could not be fetched: {type(err).__name__}") from None
            return buf.getvalue()
        finally:
            resp.release_conn()
            pool.close()
    raise ValueError(f"URL {url}: more than {policy.max_redirects} redirects")

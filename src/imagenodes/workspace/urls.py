"""Fetching image URLs without server-side request forgery, within a real deadline.

An image input may be an http(s) URL, so a builder's user can make the server fetch
any address — the cloud metadata endpoint, an internal service.  Every fetch therefore:

* refuses URLs with credentials and schemes other than http(s);
* resolves the host **once** and refuses loopback, private (RFC 1918, ULA), link-local
  (169.254/16 with the metadata address, fe80::/10), unspecified, multicast, reserved
  and IPv4-mapped forms of them — also when spelled ``0x7f000001``, ``2130706433`` or
  ``127.1``, which the resolver turns into 127.0.0.1 — unless the :class:`UrlPolicy`
  allows the host or private addresses;
* connects to the *checked* address (the Host header and TLS server name keep the
  name), so a second DNS answer cannot swap in another address (DNS rebinding);
* follows redirects itself, checking each hop the same way;
* enforces one deadline over connect, headers and body: a server trickling bytes
  cannot hold a run past its timeout.

A URL refused by policy gets one message whatever the reason, so the answers do not
map the internal network.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

from imagenodes.errors import SourceImageError

POLICY_REFUSED = (
    "is not an allowed image URL: addresses that are not public (loopback, private, "
    "link-local, reserved), URLs with credentials and hosts outside the URL policy are "
    "refused"
)


@dataclass(frozen=True)
class UrlPolicy:
    """Where image URLs may point (``Host(url_policy=...)``).

    ``allow_hosts`` may be fetched even at private addresses (a test server, an
    internal image store); ``deny_hosts`` never; ``allow_private`` lifts the address
    check for every host.
    """

    allow_private: bool = False
    allow_hosts: tuple[str, ...] = ()
    deny_hosts: tuple[str, ...] = ()
    max_redirects: int = 5


DEFAULT_POLICY = UrlPolicy()


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_public(address: Address) -> bool:
    """A globally routable unicast address (IPv4-mapped forms judged as IPv4)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return is_public(address.ipv4_mapped)
    return not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


def resolve(host: str, port: int) -> list[Address]:
    """Every address ``host`` resolves to (one lookup); OSError when it resolves to none."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except UnicodeError as exc:
        raise OSError(f"cannot encode host name {host!r}") from exc
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    if not addresses:
        raise OSError(f"{host!r} resolves to no address")
    return addresses


@dataclass(frozen=True)
class Target:
    """A checked hop: connect to ``address``, present ``host`` (Host header, TLS name)."""

    url: str
    scheme: str
    host: str
    port: int
    address: str

    def pinned_url(self) -> str:
        parts = urlsplit(self.url)
        literal = f"[{self.address}]" if ":" in self.address else self.address
        return urlunsplit(
            (self.scheme, f"{literal}:{self.port}", parts.path or "/", parts.query, "")
        )

    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == default else f"{name}:{self.port}"


def check_url(url: str, policy: UrlPolicy, *, field: str, shown: str) -> Target:
    """The address to connect to for ``url``, or SOURCE_IMAGE_ERROR (one message)."""
    refused = SourceImageError(f"{shown} {POLICY_REFUSED}", field=field)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise refused from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise refused
    if parts.username is not None or parts.password is not None:
        raise refused
    host = parts.hostname.lower().rstrip(".")
    port = port or (443 if scheme == "https" else 80)
    if host in {h.lower() for h in policy.deny_hosts}:
        raise refused
    try:
        addresses = resolve(host, port)
    except OSError:
        raise refused from None
    trusted = policy.allow_private or host in {h.lower() for h in policy.allow_hosts}
    if not trusted and not all(is_public(a) for a in addresses):
        raise refused
    return Target(url, scheme, host, port, str(addresses[0]))


def fetch(
    url: str,
    *,
    policy: UrlPolicy,
    field: str,
    shown: str,
    timeout: float,
    max_bytes: int,
) -> bytes:
    """GET ``url`` under ``policy`` with a total deadline and a byte cap."""
    import httpx

    deadline = time.monotonic() + timeout

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise SourceImageError(f"{shown} timed out after {timeout:g} s", field=field)
        return left

    current = url
    # trust_env=False: a proxy from the environment would resolve the name itself and
    # bypass the address check.
    with httpx.Client(follow_redirects=False, trust_env=False) as client:
        for _ in range(policy.max_redirects + 1):
            target = check_url(current, policy, field=field, shown=shown)
            extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
            try:
                with client.stream(
                    "GET",
                    target.pinned_url(),
                    headers={
                        "Host": target.host_header(),
                        "User-Agent": "imagenodes/0.1",
                        "Accept": "image/*",
                    },
                    timeout=httpx.Timeout(remaining()),
                    extensions=extensions,
                ) as response:
                    if response.is_redirect:
                        location = response.headers.get("location", "")
                        current = urljoin(current, location)
                        if urlsplit(current).scheme.lower() not in ("http", "https"):
                            raise SourceImageError(
                                f"{shown} redirected to a non-HTTP URL; refused", field=field
                            )
                        continue
                    if response.status_code != 200:
                        raise SourceImageError(
                            f"{shown} answered HTTP {response.status_code}; a publicly "
                            "accessible image URL answering 200 OK is required",
                            field=field,
                        )
                    length = response.headers.get("content-length")
                    if length and length.isdigit() and int(length) > max_bytes:
                        raise SourceImageError(
                            f"{shown} is {int(length)} bytes; the maximum is {max_bytes} bytes",
                            field=field,
                        )
                    chunks: list[bytes] = []
                    total = 0
                    for chunk in response.iter_bytes():
                        remaining()  # the deadline covers the body too
                        total += len(chunk)
                        if total > max_bytes:
                            raise SourceImageError(
                                f"{shown} sent more than {max_bytes} bytes; the maximum is "
                                f"{max_bytes} bytes",
                                field=field,
                            )
                        chunks.append(chunk)
                    return b"".join(chunks)
            except SourceImageError:
                raise
            except httpx.TimeoutException as exc:
                raise SourceImageError(
                    f"{shown} timed out after {timeout:g} s", field=field
                ) from exc
            except httpx.HTTPError as exc:
                raise SourceImageError(
                    f"could not fetch {shown}: {type(exc).__name__}", field=field
                ) from exc
        raise SourceImageError(
            f"{shown} redirected more than {policy.max_redirects} times", field=field
        )

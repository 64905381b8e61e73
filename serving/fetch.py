"""A client's http(s) image URL, fetched without letting the client reach what only the server can reach.

By default only public addresses are fetched. The host is resolved once, and every address it resolves to is
checked: loopback, private, link-local, multicast, reserved and unspecified addresses are refused, in IPv4, IPv6
and IPv4-mapped forms. The connection then goes to the checked address itself, so a DNS answer that changes between
the check and the connection (rebinding) changes nothing. Redirects are followed by hand, at most MAX_REDIRECTS,
each hop checked the same way and never to another scheme. The whole fetch, redirects included, has one deadline,
so bytes trickled slowly fail at it. Whatever goes wrong, the client reads one message; the cause goes to the log.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import socket
import ssl
import time
from dataclasses import dataclass

import certifi
import httpx

from .errors import RequestError

logger = logging.getLogger("fusar_serve")
MAX_REDIRECTS = 3


@dataclass(frozen=True)
class MediaPolicy:
    allowed_domains: frozenset[str] | None = None  # --allowed-media-domains: only these host names (None: any)
    allow_private: bool = False  # --allow-private-media: a trusted network's own addresses too
    deadline: float = 20.0  # seconds for the whole fetch, redirects included
    per_request: int = 2  # a request's images fetched at once
    in_all: int = 8  # fetches at once in the whole server: threads of their own, never the ones data: images use


class Refused(Exception):
    """A fetch the policy does not allow; its message is for the server's log only."""


def fetch(url: str, where: str, policy: MediaPolicy, max_bytes: int, too_large: RequestError) -> bytes:
    """The bytes behind `url`, or one `RequestError` naming `where` (`too_large` past `max_bytes`)."""
    deadline = time.monotonic() + policy.deadline
    try:
        for _ in range(MAX_REDIRECTS + 1):
            target = httpx.URL(url)
            address = checked_address(target, policy)
            # The checked address itself, with the name in the Host header and for TLS (SNI and the certificate).
            pinned = target.copy_with(host=address)
            with httpx.Client(timeout=max(deadline - time.monotonic(), 0.001), follow_redirects=False,
                              verify=tls_context()) as client:
                request = client.build_request("GET", pinned, headers={"Host": target.netloc.decode()},
                                               extensions={"sni_hostname": target.host})
                response = client.send(request, stream=True)
                try:
                    if response.is_redirect:
                        following = target.join(response.headers["location"])
                        if following.scheme != target.scheme:
                            raise Refused(f"redirect from {target.scheme} to {following.scheme}")
                        url = str(following)
                        continue
                    if response.status_code != 200:
                        raise Refused(f"HTTP {response.status_code}")
                    return _read_body(response, deadline, max_bytes, too_large)
                finally:
                    response.close()
        raise Refused(f"more than {MAX_REDIRECTS} redirects")
    except (Refused, httpx.HTTPError, httpx.InvalidURL, OSError, ValueError) as error:
        logger.warning("%s: refused or failed fetch of %r: %s: %s", where, url, type(error).__name__, error)
        raise RequestError(f"{where}: the image could not be fetched (the server fetches public http(s) URLs only, "
                           f"within {policy.deadline:g} s)", param=where) from None


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One context for every fetch: httpx builds a new one per client by loading the CA bundle (~30 ms of CPU, which
    a client repeating refused fetches would make the server spend again and again)."""
    return ssl.create_default_context(cafile=certifi.where())


def checked_address(url: httpx.URL, policy: MediaPolicy) -> str:
    """The address to connect to: the host's first, once every address it resolves to is allowed."""
    if url.scheme not in ("http", "https") or not url.host:
        raise Refused(f"not an http(s) URL with a host: {url}")
    if policy.allowed_domains is not None and url.host.lower() not in policy.allowed_domains:
        raise Refused(f"{url.host} is not in --allowed-media-domains")
    port = url.port or (443 if url.scheme == "https" else 80)
    found = socket.getaddrinfo(url.host, port, type=socket.SOCK_STREAM)
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in found]
    for address in addresses:
        mapped = getattr(address, "ipv4_mapped", None) or address
        if (not policy.allow_private and not mapped.is_global) or mapped.is_multicast or mapped.is_unspecified:
            raise Refused(f"{url.host} resolves to {address}, which is not a public address")
    return str(addresses[0])


def _read_body(response: httpx.Response, deadline: float, max_bytes: int, too_large: RequestError) -> bytes:
    data = bytearray()
    for chunk in response.iter_bytes():
        data += chunk
        if len(data) > max_bytes:
            raise too_large
        if time.monotonic() > deadline:
            raise Refused("the deadline passed while the body was arriving")
    return bytes(data)

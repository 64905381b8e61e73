"""fusar-serve's http(s) images, attacked: addresses only the server can reach, redirects, slow senders, and many
slow clients at once. The server runs as a subprocess; the images come from a little HTTP server on 127.0.0.1 that
counts what reaches it."""

import contextlib
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from conftest import random_image
from test_serve import Server, checkpoint, data_url, error_of, free_port, image_message, png  # noqa: F401

PNG = png(random_image(0, 28, 28))
REFUSED = "messages[0].content[0].image_url: the image could not be fetched"


class Images(BaseHTTPRequestHandler):
    hits: list  # the paths asked for, in order (set on the subclass `image_server` makes)

    def do_GET(self):
        self.hits.append(self.path)
        if self.path.startswith("/hop/"):  # /hop/N: N more redirects before the image
            left = int(self.path.split("/")[2])
            self.send_response(302)
            self.send_header("Location", "/ok.png" if left == 0 else f"/hop/{left - 1}")
            self.end_headers()
        elif self.path == "/to-https":
            self.send_response(302)
            self.send_header("Location", f"https://127.0.0.1:{self.server.server_port}/ok.png")
            self.end_headers()
        elif self.path == "/ok.png":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)
        elif self.path == "/trickle.png":  # a byte every 0.3 s, for much longer than any deadline
            self.send_response(200)
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            with contextlib.suppress(OSError):
                for byte in PNG:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.3)
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def images():
    handler = type("Handler", (Images,), {"hits": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.url = f"http://127.0.0.1:{server.server_port}"
    server.hits = handler.hits
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def public_only(checkpoint):  # noqa: F811
    running = Server(checkpoint[0])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def trusting(checkpoint):  # noqa: F811
    running = Server(checkpoint[0], "--allow-private-media", "--media-deadline", "2")
    yield running
    running.stop()


def ask(server: Server, url: str) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", timeout=120,
                      json={"messages": image_message(url), "max_tokens": 2})


def test_addresses_only_the_server_can_reach_are_never_fetched_and_every_refusal_reads_alike(public_only, images):
    port = images.server_port
    closed = free_port()
    urls = [f"{images.url}/ok.png", f"http://localhost:{port}/ok.png", f"http://[::ffff:127.0.0.1]:{port}/ok.png",
            f"http://2130706433:{port}/ok.png", f"http://0.0.0.0:{port}/ok.png", f"http://10.0.0.1:{port}/ok.png",
            f"http://169.254.169.254/latest/meta-data/", f"{public_only.url}/health", f"http://127.0.0.1:{closed}/",
            f"{images.url}/missing.png", "http://[::1]/", "http:///ok.png"]
    messages = set()
    for url in urls:
        status, message = error_of(ask(public_only, url))
        assert status == 400 and message.startswith(REFUSED), (url, message)
        messages.add(message)
    assert len(messages) == 1  # a closed port, a 404 and a refused address cannot be told apart
    assert images.hits == []  # nothing reached the image server
    assert public_only.client.chat.completions.create(model="fusar-tiny", max_tokens=2, messages=image_message(
        data_url(PNG)))  # and the server still answers


def test_a_trusted_network_is_opt_in_and_redirects_are_checked_and_capped(trusting, images):
    assert ask(trusting, f"{images.url}/ok.png").status_code == 200
    images.hits.clear()
    assert ask(trusting, f"{images.url}/hop/2").status_code == 200  # three redirects: within the cap
    assert images.hits == ["/hop/2", "/hop/1", "/hop/0", "/ok.png"]
    for url in (f"{images.url}/hop/3", f"{images.url}/to-https"):  # four hops; a change of scheme
        status, message = error_of(ask(trusting, url))
        assert status == 400 and message.startswith(REFUSED), (url, message)


def test_a_named_host_list_allows_those_names_only(checkpoint, images):  # noqa: F811
    server = Server(checkpoint[0], "--allow-private-media", "--allowed-media-domains", "LocalHost")
    try:
        assert ask(server, f"http://localhost:{images.server_port}/ok.png").status_code == 200
        status, message = error_of(ask(server, f"{images.url}/ok.png"))  # the same server, by another name
        assert status == 400 and message.startswith(REFUSED)
    finally:
        log = server.stop()
    assert "127.0.0.1 is not in --allowed-media-domains" in log  # the cause is in the server's log only


def test_a_trickled_image_fails_at_the_deadline_and_slow_clients_never_delay_a_data_image(trusting, images):
    start = time.monotonic()
    status, message = error_of(ask(trusting, f"{images.url}/trickle.png"))
    assert status == 400 and message.startswith(REFUSED) and time.monotonic() - start < 6  # a 2 s deadline
    with ThreadPoolExecutor(12) as pool:
        slow = [pool.submit(ask, trusting, f"{images.url}/trickle.png") for _ in range(12)]  # more than fetch threads
        time.sleep(0.5)
        start = time.monotonic()
        reply = trusting.client.chat.completions.create(model="fusar-tiny", max_tokens=2,
                                                        messages=image_message(data_url(PNG)))
        waited = time.monotonic() - start
        assert all(future.result().status_code == 400 for future in slow)
    assert reply.choices[0].message.content is not None and waited < 1.5, waited


def test_the_connection_goes_to_the_address_that_was_checked(monkeypatch, images):
    """No DNS rebinding: the name is resolved once, every answer checked, and the connection made to that address."""
    from serving.errors import RequestError
    from serving.fetch import MediaPolicy, fetch

    real = socket.getaddrinfo
    answers = {"rebind.test": ["127.0.0.1"], "split.test": ["93.184.216.34", "127.0.0.1"]}

    def resolve(host, port, *args, **kwargs):
        if host in answers:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in answers[host]]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    images.hits.clear()
    too_large = RequestError("too large", 413)
    trusting = MediaPolicy(allow_private=True, deadline=5)
    assert fetch(f"http://rebind.test:{images.server_port}/ok.png", "x", trusting, 2**20, too_large) == PNG
    with pytest.raises(RequestError, match="could not be fetched"):  # one public answer does not make a name public
        fetch(f"http://split.test:{images.server_port}/ok.png", "x", MediaPolicy(deadline=5), 2**20, too_large)
    with pytest.raises(RequestError) as error:
        fetch(f"{images.url}/ok.png", "x", trusting, 10, too_large)
    assert error.value is too_large
    assert images.hits == ["/ok.png", "/ok.png"]

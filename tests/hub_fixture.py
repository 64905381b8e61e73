"""The `local_hub` fixture: a Hub on 127.0.0.1 (`hub_server.py`) with the real huggingface_hub, transformers and
datasets clients pointed at it, and every other address refused."""

import ipaddress
import socket

import datasets
import pytest
import transformers.utils.hub
from huggingface_hub import constants
from huggingface_hub.utils import close_session

from hub_server import serve

TOKEN = "hf_local_test_token"


def loopback_only(monkeypatch):
    """Make any connection or name lookup beyond this machine an error: the tests must never touch the network."""
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def is_local(host) -> bool:
        try:
            return host in (None, "localhost") or ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def guarded_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not is_local(address[0]):
            raise ConnectionRefusedError(f"test tried to reach {address} (only the local hub is allowed)")
        return connect(sock, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if not is_local(host):
            raise socket.gaierror(f"test tried to look up {host} (only the local hub is allowed)")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)


def point_clients_at(url: str, home, monkeypatch):
    """Send huggingface_hub, transformers and datasets to `url`, with a fresh cache under `home` and a fake token.
    The environment alone is not enough: all three read it into module constants at import time."""
    cache = home / "hub"
    for name, value in {"HF_ENDPOINT": url, "HF_HOME": str(home), "HF_HUB_CACHE": str(cache), "HF_TOKEN": TOKEN,
                        "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
                        "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_OIDC_RESOURCE", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {
        "ENDPOINT": url,
        "HUGGINGFACE_CO_URL_TEMPLATE": url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_OFFLINE": False,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HUGGINGFACE_HUB_CACHE": str(cache),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        # With hf_xet installed the client uploads through xet whatever the server says; off, it takes LFS.
        "HF_HUB_DISABLE_XET": True,
        # Telemetry off also stops the user-agent code from fetching `/api/agent-harnesses`.
        "HF_HUB_DISABLE_TELEMETRY": True,
    }.items():
        monkeypatch.setattr(constants, name, value)
    # transformers keeps one HfApi, made with the endpoint of its first use.
    monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)
    for name, value in {
        "HF_ENDPOINT": url,
        "HUB_DATASETS_URL": url + "/datasets/{repo_id}/resolve/{revision}/{path}",
        "HF_HUB_OFFLINE": False,
        "HF_DATASETS_OFFLINE": False,
        "HF_UPDATE_DOWNLOAD_COUNTS": False,  # a HEAD request to S3 otherwise
        "HF_CACHE_HOME": str(home),
        "HF_DATASETS_CACHE": home / "datasets",
        "HF_MODULES_CACHE": str(home / "modules"),
        "DOWNLOADED_DATASETS_PATH": home / "datasets" / "downloads",
        "EXTRACTED_DATASETS_PATH": home / "datasets" / "downloads" / "extracted",
    }.items():
        monkeypatch.setattr(datasets.config, name, value)
    close_session()  # a new httpx client: no connection kept alive to an earlier server


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    """A Hub on 127.0.0.1 with the clients pointed at it; yields the `hub_server.Hub` (its repos, log, uploads)."""
    loopback_only(monkeypatch)
    with serve(tmp_path / "hub-storage") as hub:
        point_clients_at(hub.url, tmp_path / "hf-home", monkeypatch)
        yield hub
        close_session()
    # The server's own bugs, and requests for endpoints it lacks (a client may quietly work around those).
    assert not [line for line in hub.log if " 500 " in line or "has no route" in line], hub.log

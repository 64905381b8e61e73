"""Pushing to and loading from a Hub, with the real huggingface_hub / transformers / datasets clients talking HTTP
to a local stand-in (`hub_server.py`) on 127.0.0.1. Nothing else is reachable: the `local_hub` fixture refuses
connections to any other address."""

import hashlib
import ipaddress
import socket

import datasets
import numpy as np
import pytest
import torch
import transformers.utils.hub
from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import close_session
from transformers import AutoModelForImageTextToText, AutoProcessor

from conftest import build, model_inputs, random_anchors, random_image
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


def test_model_and_processor_round_trip(local_hub, tokenizers):
    model, processor = build(tokenizers, "qwen2_5_vl", modulate=True)
    model.push_to_hub("user/fusar-tiny")
    processor.push_to_hub("user/fusar-tiny")

    loaded = AutoModelForImageTextToText.from_pretrained("user/fusar-tiny").eval()
    loaded_processor = AutoProcessor.from_pretrained("user/fusar-tiny")
    assert type(loaded).__name__ == "FusarForConditionalGeneration"
    assert type(loaded_processor).__name__ == "FusarProcessor"
    inputs = model_inputs(processor, [random_image(0)], anchors=[random_anchors(0, 6)])
    again = model_inputs(loaded_processor, [random_image(0)], anchors=[random_anchors(0, 6)])
    assert all(torch.equal(inputs[k], again[k]) for k in inputs)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**again).logits, model(**inputs).logits, atol=0, rtol=0)

    api = HfApi()
    files = set(api.list_repo_files("user/fusar-tiny"))
    assert {"config.json", "model.safetensors", "modeling_fusar.py", "configuration_fusar.py",
            "processing_fusar.py", "processor_config.json", "tokenizer.json", "README.md"} <= files
    weights = hf_hub_download("user/fusar-tiny", "model.safetensors")
    with open(weights, "rb") as file:
        assert hashlib.sha256(file.read()).hexdigest() in local_hub.lfs_uploads  # went through the LFS batch API
    [info] = api.get_paths_info("user/fusar-tiny", ["model.safetensors"])
    assert info.lfs is not None and info.lfs.sha256 in local_hub.lfs_uploads
    assert not [line for line in local_hub.log if "xet" in line.lower()]
    commits = api.list_repo_commits("user/fusar-tiny")
    assert [c.title for c in commits] == ["Upload processor", "Upload FusarForConditionalGeneration", "initial commit"]
    assert api.model_info("user/fusar-tiny").sha == commits[0].commit_id


def test_missing_files_repos_and_revisions_raise_the_hub_errors(local_hub):
    api = HfApi()
    api.create_repo("user/some-model")
    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_repo("user/some-model")
    assert conflict.value.response.status_code == 409
    api.create_repo("user/some-model", exist_ok=True)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("user/some-model", "missing.json")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("user/no-such-model", "config.json")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("user/no-such-model")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("user/some-model", ".gitattributes", revision="no-such-branch")


@pytest.mark.parametrize("repo_type", ["model", "dataset", "space"])
def test_every_repo_type_keeps_files_and_history(local_hub, repo_type):
    api, repo_id = HfApi(), f"user/tiny-{repo_type}"
    api.create_repo(repo_id, repo_type=repo_type, space_sdk="static" if repo_type == "space" else None)
    first = api.upload_file(path_or_fileobj=b"hello\n", path_in_repo="docs/a.txt", repo_id=repo_id,
                            repo_type=repo_type, commit_message="add a")
    blob = bytes(range(256)) * 8  # binary: LFS
    api.upload_file(path_or_fileobj=blob, path_in_repo="docs/deep/b.bin", repo_id=repo_id, repo_type=repo_type)
    api.delete_file("docs/a.txt", repo_id=repo_id, repo_type=repo_type)

    tree = {entry.path: entry for entry in api.list_repo_tree(repo_id, repo_type=repo_type, recursive=True)}
    assert sorted(tree) == [".gitattributes", "docs", "docs/deep", "docs/deep/b.bin"]
    assert tree["docs/deep/b.bin"].lfs.sha256 == hashlib.sha256(blob).hexdigest()
    assert [entry.path for entry in api.list_repo_tree(repo_id, "docs", repo_type=repo_type)] == ["docs/deep"]
    path = hf_hub_download(repo_id, "docs/deep/b.bin", repo_type=repo_type)
    assert open(path, "rb").read() == blob
    old = hf_hub_download(repo_id, "docs/a.txt", repo_type=repo_type, revision=first.oid)
    assert open(old).read() == "hello\n"
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "docs/a.txt", repo_type=repo_type)
    commits = api.list_repo_commits(repo_id, repo_type=repo_type)
    assert len(commits) == 4 and all(len(c.commit_id) == 40 for c in commits) and commits[2].commit_id == first.oid
    assert api.repo_info(repo_id, repo_type=repo_type).sha == commits[0].commit_id
    old_files = api.repo_info(repo_id, repo_type=repo_type, revision=first.oid, files_metadata=True).siblings
    assert {(f.rfilename, f.lfs is None) for f in old_files} == {(".gitattributes", True), ("docs/a.txt", True)}


def test_dataset_round_trip(local_hub):
    rng = np.random.default_rng(0)
    images = [random_image(seed, 24, 32) for seed in range(4)]
    embeddings = [rng.standard_normal(8).tolist() for _ in range(4)]
    features = datasets.Features({"image": datasets.Image(), "embedding": datasets.List(datasets.Value("float64")),
                                  "label": datasets.Value("string")})
    dataset = datasets.Dataset.from_dict(
        {"image": images, "embedding": embeddings, "label": ["ship", "sea", "land", "ship"]}, features=features)
    dataset.push_to_hub("user/tiny-ds")

    loaded = datasets.load_dataset("user/tiny-ds", split="train")
    assert loaded.features == features and len(loaded) == 4
    for row, image, embedding, label in zip(loaded, images, embeddings, dataset["label"]):
        assert np.array_equal(np.asarray(row["image"]), np.asarray(image))
        assert row["embedding"] == embedding and row["label"] == label

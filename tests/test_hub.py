"""Pushing to and loading from a Hub, with the real huggingface_hub / transformers / datasets clients talking HTTP
to a local stand-in (`hub_server.py`) on 127.0.0.1. Nothing else is reachable: the `local_hub` fixture refuses
connections to any other address."""

import hashlib

import datasets
import numpy as np
import pytest
import torch
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from transformers import AutoModelForImageTextToText, AutoProcessor

from conftest import build, model_inputs, random_anchors, random_image


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

"""fusar-publish: put a FUSAR-GPT checkpoint, a triplet dataset and the demo Space on the Hub in one command.

    fusar-publish --model outputs/main/fusar-tiny --dataset outputs/main/data --space spaces --namespace USER

Uses whatever Hub `HF_ENDPOINT` points at and the token of `hf auth login` / `HF_TOKEN` (never printed). Each
folder is uploaded with its card; the Space gets the packages its app imports beside `app.py`.
"""

from __future__ import annotations

import shared_machine  # noqa: F401  (before torch: its OpenMP threads then sleep when they wait)
import hub_kernels  # noqa: F401  (before peft: bitsandbytes then looks up no Hub kernel unasked)

import argparse
from importlib import resources
from pathlib import Path

from huggingface_hub import HfApi

from command_line import command

PACKAGES = ("modeling_fusar", "processing", "dataset_scripts", "evaluation")
MODULES = ("command_line.py",)  # what those packages import from the top level
SKIP = ["stage1/*", "stage2/*", "stage1-model/*", "*.partial/*", "**/__pycache__/*", "*.pyc", "*.cache/*"]


def publish(namespace: str, model=None, dataset=None, space=None, private: bool = False, api: HfApi | None = None) -> dict:
    """Upload what is given; returns {kind: URL}."""
    api = api or HfApi()
    urls, model_repo = {}, None
    if model:
        model_repo = api.create_repo(f"{namespace}/{Path(model).name}", private=private, exist_ok=True).repo_id
        api.upload_folder(folder_path=str(model), repo_id=model_repo, ignore_patterns=SKIP + ["README.md"],
                          commit_message="Upload FUSAR-GPT")
        card = Path(model) / "README.md"
        if card.is_file():  # its usage snippet loads the folder; on the Hub, the repository
            text = card.read_text().replace(f'"./{Path(model).name}"', f'"{model_repo}"')
            api.upload_file(path_or_fileobj=text.encode(), path_in_repo="README.md", repo_id=model_repo,
                            commit_message="Model card")
        urls["model"] = f"{api.endpoint}/{model_repo}"
    if dataset:
        repo = api.create_repo(f"{namespace}/{Path(dataset).name}", repo_type="dataset", private=private, exist_ok=True).repo_id
        api.upload_folder(folder_path=str(dataset), repo_id=repo, repo_type="dataset", ignore_patterns=SKIP,
                          commit_message="Upload the SAR triplet dataset")
        urls["dataset"] = f"{api.endpoint}/datasets/{repo}"
    if space:
        repo = api.create_repo(f"{namespace}/fusar-gpt-demo", repo_type="space", space_sdk="gradio", private=private,
                               exist_ok=True).repo_id
        api.upload_folder(folder_path=str(space), repo_id=repo, repo_type="space", ignore_patterns=SKIP + ["checkpoint.txt"],
                          commit_message="Upload the FUSAR-GPT demo")
        if model_repo:  # the Space serves the model uploaded with it
            api.upload_file(path_or_fileobj=f"{model_repo}\n".encode(), path_in_repo="checkpoint.txt", repo_id=repo,
                            repo_type="space", commit_message="Serve the published model")
        root = Path(__file__).resolve().parent
        for package in PACKAGES:  # the app imports these; a Space cannot pip install this checkout
            api.upload_folder(folder_path=str(root / package), path_in_repo=package, repo_id=repo, repo_type="space",
                              ignore_patterns=SKIP, commit_message=f"Add {package}")
        for module in MODULES:
            api.upload_file(path_or_fileobj=str(root / module), path_in_repo=module, repo_id=repo, repo_type="space",
                            commit_message=f"Add {module}")
        urls["space"] = f"{api.endpoint}/spaces/{repo}"
    return urls


@command("fusar-publish")
def main(argv=None):
    parser = argparse.ArgumentParser(prog="fusar-publish", description=__doc__.split("\n\n")[0])
    parser.add_argument("--namespace", required=True, help="Hub user or organisation")
    parser.add_argument("--model", help="checkpoint folder (with its model card)")
    parser.add_argument("--dataset", help="dataset folder built by fusar-data (with its card)")
    parser.add_argument("--space", nargs="?", const=str(resources.files("fusar_space")),
                        help="the Space folder (default: the Space installed with this package)")
    parser.add_argument("--private", action="store_true")
    args = parser.parse_args(argv)
    if not (args.model or args.dataset or args.space):
        parser.error("give at least one of --model, --dataset, --space")
    for flag, folder, needs in (("--model", args.model, "config.json"), ("--dataset", args.dataset, "README.md"),
                                ("--space", args.space, "app.py")):
        if folder and not (Path(folder) / needs).is_file():  # checked before anything is created on the Hub
            raise ValueError(f"{flag} {folder}: not a folder with {needs}")
    for kind, url in publish(args.namespace, args.model, args.dataset, args.space, args.private).items():
        print(f"{kind}: {url}")


if __name__ == "__main__":
    raise SystemExit(main())

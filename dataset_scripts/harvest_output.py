"""Where a harvest is written: a local folder or a Hub dataset repo (`hf://datasets/<user>/<name>`), through one
interface, each file whole or not at all; and the plan that makes a rerun into the same output a resume."""

from __future__ import annotations

import json
import os
import sys
import time
import uuid


class Output:
    """The output location through fsspec: a local folder, or `hf://datasets/<repo>` (created if missing)."""

    def __init__(self, location: str):
        import fsspec

        self.location = location.rstrip("/")
        self.hub = self.location.startswith("hf://")
        if self.hub:
            from huggingface_hub import HfApi, HfFileSystem

            repo = self.location.removeprefix("hf://datasets/")
            if not self.location.startswith("hf://datasets/") or repo.count("/") != 1:
                raise ValueError(f"--output {location}: a Hub output is hf://datasets/<user>/<name>")
            self.api, self.repo = HfApi(), repo
            rate_limited(lambda: self.api.create_repo(repo, repo_type="dataset", exist_ok=True))
            self.fs, self.root = HfFileSystem(), f"datasets/{repo}"
        else:
            self.fs, self.root = fsspec.filesystem("file"), os.path.abspath(self.location)

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def exists(self, relative: str) -> bool:
        self.fs.invalidate_cache()
        return self.fs.exists(self.path(relative))

    def read(self, relative: str) -> bytes:
        return self.fs.cat_file(self.path(relative))

    def write(self, relative: str, data: bytes) -> None:
        self.write_all({relative: data})

    def write_all(self, files: dict[str, bytes]) -> None:
        """Each file whole or not at all. On the Hub, all in one commit (a shard's data and marker together: the Hub
        limits commits per hour, so a shard is one commit, not three or four), tried again while rate limited;
        locally, each renamed into place once written, in order."""
        if self.hub:
            from huggingface_hub import CommitOperationAdd

            rate_limited(lambda: self.api.create_commit(  # new operations each try: a commit consumes its own
                self.repo, repo_type="dataset", commit_message=f"fusar-data harvest: {', '.join(files)}",
                operations=[CommitOperationAdd(relative, data) for relative, data in files.items()]))
            self.fs.invalidate_cache()
            return
        for relative, data in files.items():
            self._write_local(self.path(relative), data)

    @staticmethod
    def _write_local(target: str, data: bytes) -> None:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        temporary = f"{target}.{uuid.uuid4().hex}.tmp"
        try:
            with open(temporary, "wb") as file:
                file.write(data)
            os.replace(temporary, target)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)

    def listing(self) -> list[str]:
        """Relative paths of every file in the output."""
        self.fs.invalidate_cache()
        if not self.fs.exists(self.root):
            return []
        return sorted(p[len(self.root) + 1:] for p in self.fs.find(self.root, withdirs=False))


def check_plan(output: Output, plan_record: dict, overwrite: bool) -> None:
    """A new output, or one this same harvest started: anything else is refused (or cleared with --overwrite)."""
    existing = [p for p in output.listing() if p != ".gitattributes"]  # (every new Hub repo has one)
    own = [p for p in existing if p.startswith(("data/", ".harvest/")) or p == "README.md"]
    if existing and ".harvest/plan.json" not in existing and not overwrite:
        raise ValueError(f"--output {output.location}: holds files that are not a harvest's ({existing[0]}, ...); "
                         "choose another output")
    if ".harvest/plan.json" in existing and json.loads(output.read(".harvest/plan.json")) != plan_record:
        if not overwrite:
            raise ValueError(f"--output {output.location}: holds a harvest with other options or patches; run that "
                             "one again to finish it, or pass --overwrite to replace it")
    if overwrite and existing:
        foreign = sorted(set(existing) - set(own))
        if foreign:
            raise ValueError(f"--output {output.location}: --overwrite replaces only a harvest's files, and this "
                             f"holds others ({foreign[0]}, ...)")
        for relative in own:
            output.fs.rm(output.path(relative))
    output.write(".harvest/plan.json", json.dumps(plan_record, sort_keys=True).encode())


def rate_limited(call, attempts: int = 8):
    """`call()`, made again after the wait the Hub asks for (`Retry-After`, else 1, 2, 4 ... s) while it answers 429.
    A rate-limited commit was not made, so making it again cannot make it twice (unlike a 5xx)."""
    from huggingface_hub.errors import HfHubHTTPError

    for attempt in range(attempts):
        try:
            return call()
        except HfHubHTTPError as error:
            if error.response is None or error.response.status_code != 429 or attempt == attempts - 1:
                raise
            wait = error.response.headers.get("Retry-After", "")
            print(f"the Hub is rate-limiting commits: trying again in {wait or 2**attempt} s", file=sys.stderr)
            time.sleep(float(wait) if wait.isdigit() else 2**attempt)

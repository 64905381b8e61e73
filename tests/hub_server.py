"""A local stand-in for the Hugging Face Hub: enough of its HTTP API for the real `huggingface_hub` client.

Model, dataset and space repos: file bytes on disk under `<root>/blobs/` (named by sha256), branches and commit
history in memory (40-hex commit ids). Uploads follow the Hub's protocol: `preupload` says regular or LFS per file,
LFS bytes go through the Git LFS batch API (`basic` transfer: one PUT to this server, where the Hub has S3), then
an NDJSON commit names them. Left out: pull requests, tags, xet, permissions (writes need any Bearer token).
Use: `with serve(folder) as hub:` then point the client at `hub.url`.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import hashlib
import json
import re
import threading
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
# Like the Hub: files matching its default .gitattributes go through LFS, and so does any binary or large file.
LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.npz", "*.parquet", "*.arrow", "*.png", "*.jpg")
LFS_MIN_SIZE = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS).encode()
SHA256 = re.compile(r"[0-9a-f]{64}")
USER = "user"  # the namespace of repos created without an organization


class HubError(Exception):
    """An error answered the Hub's way. The client picks its exception from `X-Error-Code`: RepoNotFound ->
    RepositoryNotFoundError, RevisionNotFound -> RevisionNotFoundError, EntryNotFound -> EntryNotFoundError."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None, **body):
        super().__init__(message)
        self.status, self.code, self.headers, self.body = status, code, headers or {}, body


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class Entry:
    """A file in a commit. `oid` is the git blob id (of the pointer file for LFS files), as the Hub reports it."""

    sha256: str
    size: int
    lfs: bool
    oid: str

    def lfs_info(self, sha256_key: str) -> dict | None:  # the tree API calls the sha256 `oid`, repo info `sha256`
        pointer_size = len(lfs_pointer(self.sha256, self.size))
        return {sha256_key: self.sha256, "size": self.size, "pointerSize": pointer_size} if self.lfs else None


@dataclass
class Commit:
    id: str
    parent: str | None
    title: str
    message: str
    date: str
    files: dict[str, Entry]


@dataclass
class Repo:
    type: str
    id: str
    created: str
    sdk: str | None = None
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def url(self, base: str) -> str:
        return f"{base}/{URL_PREFIX[self.type]}{self.id}"

    def history(self, commit: Commit) -> list[Commit]:
        commits = [commit]
        while commits[-1].parent is not None:
            commits.append(self.commits[commits[-1].parent])
        return commits


class Hub:
    """Repos and blobs; thread-safe, since the server answers each connection in its own thread."""

    def __init__(self, root: str | Path):
        self.blobs = Path(root) / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lock = threading.RLock()
        self.log: list[str] = []  # "METHOD path status [error]" per request, for tests to inspect
        self.lfs_uploads: list[str] = []  # sha256 of each blob PUT to the LFS upload URL
        self.sent = 0  # bytes of file contents answered (`resolve`), for benchmarks
        self.refuse_commits = 0  # the next this many commits are answered 429 (rate limited), as the Hub does
        self.url = ""

    def store(self, data: bytes, lfs: bool) -> Entry:
        sha256 = hashlib.sha256(data).hexdigest()
        if not (self.blobs / sha256).exists():
            (self.blobs / sha256).write_bytes(data)
        blob = lfs_pointer(sha256, len(data)) if lfs else data
        return Entry(sha256, len(data), lfs, hashlib.sha1(b"blob %d\0" % len(blob) + blob).hexdigest())

    def repo(self, repo_type: str, repo_id: str) -> Repo:
        if (repo_type, repo_id) not in self.repos:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return self.repos[repo_type, repo_id]

    def resolve(self, repo: Repo, revision: str) -> Commit:
        """A branch name or a full commit id."""
        commit_id = repo.branches.get(revision, revision)
        if commit_id not in repo.commits:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[commit_id]

    def commit(self, repo: Repo, branch: str, header: dict, operations: list[tuple]) -> Commit:
        """Apply ("file", path, bytes), ("lfsFile", path, sha256), ("deletedFile" | "deletedFolder", path, None)
        on top of the branch's head."""
        with self.lock:
            head = repo.commits.get(repo.branches.get(branch, ""))
            if head is None and repo.commits:  # only an empty repo has no head; commit ids are not branches
                raise HubError(404, f"Branch {branch} not found", "RevisionNotFound")
            if header.get("parentCommit") not in (None, head and head.id):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(head.files) if head else {}
            for kind, path, value in operations:
                self.apply(files, kind, path, value)
            # Unique per repo (the history length), and changing with what the commit does.
            seed = [repo.type, repo.id, len(repo.commits), header, sorted((p, e.oid) for p, e in files.items())]
            commit_id = hashlib.sha1(json.dumps(seed).encode()).hexdigest()
            repo.commits[commit_id] = Commit(commit_id, head and head.id, header.get("summary", ""),
                                             header.get("description", ""), now(), files)
            repo.branches[branch] = commit_id
            return repo.commits[commit_id]

    def apply(self, files: dict[str, Entry], kind: str, path: str, value) -> None:
        if kind == "file":
            files[path] = self.store(value, lfs=False)
        elif kind == "lfsFile":  # the bytes must have come through the LFS upload first
            if not (SHA256.fullmatch(value or "") and (self.blobs / value).exists()):
                raise HubError(400, f"LFS object {value} of {path} was never uploaded")
            files[path] = self.store((self.blobs / value).read_bytes(), lfs=True)
        elif kind in ("deletedFile", "deletedFolder"):
            folder = path.rstrip("/") + "/"
            gone = [name for name in files if (name.startswith(folder) if kind == "deletedFolder" else name == path)]
            if not gone:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            for name in gone:
                del files[name]
        else:
            raise HubError(400, f"Unknown commit operation {kind!r}")


# ---- the Hub's JSON shapes ----------------------------------------------------------------------------------------


def folders(commit: Commit) -> set[str]:
    """Every folder that holds a file (git has no empty folders)."""
    return {name[:i] for name in commit.files for i, char in enumerate(name) if char == "/"}


def path_info(commit: Commit, path: str) -> dict | None:
    """A `tree` / `paths-info` item: a file, a folder or (None) nothing."""
    if path in commit.files:
        entry = commit.files[path]
        info = {"type": "file", "oid": entry.oid, "size": entry.size, "path": path}
        return {**info, "lfs": entry.lfs_info("oid")} if entry.lfs else info
    if path in folders(commit):
        inside = sorted((name, entry.oid) for name, entry in commit.files.items() if name.startswith(path + "/"))
        return {"type": "directory", "oid": hashlib.sha1(json.dumps(inside).encode()).hexdigest(), "size": 0,
                "path": path}
    return None


# ---- endpoints: each takes the hub and a Request and returns (status, headers, body) -----------------------------


@dataclass
class Request:
    args: dict[str, str]  # the route's named groups, percent-decoded
    query: dict[str, list[str]]
    headers: object
    body: bytes
    base: str  # http://host:port, for the URLs handed out

    def json(self):
        return json.loads(self.body or b"{}")

    def flag(self, name: str) -> bool:
        return self.query.get(name, ["false"])[0].lower() in ("1", "true")

    def require_token(self) -> None:
        if not self.headers.get("Authorization", "").startswith("Bearer "):
            # The client reads this exact message as a plain 401 (any other 401 reads as RepositoryNotFound).
            raise HubError(401, "Invalid credentials in Authorization header")

    def repo(self, hub: Hub) -> Repo:
        repo_type = {"models": "model", "datasets": "dataset", "spaces": "space", None: "model"}[self.args.get("type")]
        return hub.repo(repo_type, self.args["repo"])

    def repo_and_commit(self, hub: Hub) -> tuple[Repo, Commit]:
        repo = self.repo(hub)
        return repo, hub.resolve(repo, self.args.get("rev") or "main")


def reply(payload, status: int = 200, headers: dict | None = None):
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(payload).encode()


def create_repo(hub: Hub, req: Request):
    req.require_token()
    body = req.json()
    repo_type, repo_id = body.get("type") or "model", f"{body.get('organization') or USER}/{body['name']}"
    with hub.lock:
        if (repo_type, repo_id) in hub.repos:  # `create_repo(exist_ok=True)` reads the url from this answer
            url = hub.repos[repo_type, repo_id].url(req.base)
            raise HubError(409, f"You already created this {repo_type} repo", url=url)
        repo = hub.repos[repo_type, repo_id] = Repo(repo_type, repo_id, now(), body.get("sdk"))
        # Like the Hub: a new repo has one commit, holding the .gitattributes that routes binaries to LFS.
        hub.commit(repo, "main", {"summary": "initial commit"}, [("file", ".gitattributes", GITATTRIBUTES)])
    return reply({"url": repo.url(req.base), "name": repo_id})


def repo_info(hub: Hub, req: Request):
    repo, commit = req.repo_and_commit(hub)
    siblings = [{"rfilename": path, **({"size": entry.size, "blobId": entry.oid, "lfs": entry.lfs_info("sha256")}
                                       if req.flag("blobs") else {})} for path, entry in sorted(commit.files.items())]
    info = {"id": repo.id, "author": repo.id.split("/")[0], "sha": commit.id, "createdAt": repo.created,
            "lastModified": commit.date, "private": False, "gated": False, "disabled": False, "downloads": 0,
            "likes": 0, "tags": [], "siblings": siblings}
    return reply({**info, "sdk": repo.sdk} if repo.type == "space" else info)


def list_commits(hub: Hub, req: Request):
    repo, commit = req.repo_and_commit(hub)
    return reply([{"id": c.id, "title": c.title, "message": c.message, "authors": [{"user": USER}], "date": c.date}
                  for c in repo.history(commit)])


def tree(hub: Hub, req: Request):
    repo, commit = req.repo_and_commit(hub)
    path = req.args.get("path", "").strip("/")
    if path and path not in folders(commit):
        raise HubError(404, f"{path} is not a folder of {repo.id}", "EntryNotFound", {"X-Repo-Commit": commit.id})
    prefix = path + "/" if path else ""
    names = sorted(name for name in set(commit.files) | folders(commit) if name.startswith(prefix))
    if not req.flag("recursive"):
        names = [name for name in names if "/" not in name[len(prefix):]]
    return reply([path_info(commit, name) for name in names])  # one page: no `Link` header to a next one


def paths_info(hub: Hub, req: Request):
    _, commit = req.repo_and_commit(hub)
    paths = parse_qs(req.body.decode()).get("paths", [])  # a form, `paths` repeated; missing paths are left out
    return reply([info for info in (path_info(commit, path.strip("/")) for path in paths) if info is not None])


def preupload(hub: Hub, req: Request):
    """Regular or LFS per file, and the oid the file has now (the client leaves unchanged files out)."""
    req.require_token()
    _, commit = req.repo_and_commit(hub)
    answers = []
    for file in req.json()["files"]:
        sample, name = base64.b64decode(file["sample"]), file["path"].rsplit("/", 1)[-1]
        lfs = file["size"] >= LFS_MIN_SIZE or b"\0" in sample or any(fnmatch.fnmatch(name, p) for p in LFS_PATTERNS)
        there = commit.files.get(file["path"])
        oid = None if there is None or there.lfs != lfs else there.sha256 if lfs else there.oid
        answers.append({"path": file["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                        "oid": oid})
    return reply({"files": answers, "commitOid": commit.id})


def commit(hub: Hub, req: Request):
    """NDJSON: a `header` line, then `file` (base64 content), `lfsFile` (sha256 of uploaded bytes), `deletedFile`
    and `deletedFolder` lines."""
    req.require_token()
    if req.flag("create_pr"):
        raise HubError(400, "The local hub does not do pull requests")
    repo = req.repo(hub)
    with hub.lock:
        if hub.refuse_commits > 0:
            hub.refuse_commits -= 1
            raise HubError(429, "You have exceeded the rate limit for repository commits", headers={"Retry-After": "1"})
    header, operations = {}, []
    for item in map(json.loads, filter(bytes.strip, req.body.splitlines())):
        key, value = item["key"], item["value"]
        if key == "header":
            header = value
        elif key == "file":
            content = value["content"]
            data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
            operations.append(("file", value["path"], data))
        else:
            operations.append((key, value["path"], value.get("oid")))
    new = hub.commit(repo, req.args["rev"], header, operations)
    return reply({"success": True, "commitOid": new.id, "commitUrl": f"{repo.url(req.base)}/commit/{new.id}",
                  "hookOutput": "", "pullRequestUrl": None})


def lfs_batch(hub: Hub, req: Request):
    """Git LFS batch API, `basic` transfer only: the client then PUTs each file to its `upload` href (no multipart).
    Whether the client goes through xet instead is its own choice, made before this call (see the tests)."""
    req.require_token()
    req.repo(hub)
    body = req.json()
    if body.get("operation") != "upload" or "basic" not in body.get("transfers", ["basic"]):
        raise HubError(400, "The local hub only takes uploads with the basic LFS transfer")
    objects = []
    for obj in body["objects"]:
        answer = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
        if SHA256.fullmatch(obj["oid"]) and not (hub.blobs / obj["oid"]).exists():  # no `actions`: "got it"
            answer["actions"] = {"upload": {"href": f"{req.base}/lfs-upload/{obj['oid']}", "header": {}}}
        objects.append(answer)
    return reply({"transfer": "basic", "objects": objects}, headers={"Content-Type": "application/vnd.git-lfs+json"})


def lfs_upload(hub: Hub, req: Request):
    """Where the Hub has S3: no token here (the client sends none), but the bytes must hash to their oid."""
    if hashlib.sha256(req.body).hexdigest() != req.args["oid"]:
        raise HubError(400, "The uploaded bytes do not match their sha256")
    hub.store(req.body, lfs=True)
    hub.lfs_uploads.append(req.args["oid"])
    return 200, {}, b""


def resolve(hub: Hub, req: Request):
    """A file (GET) or its metadata (HEAD). The client needs X-Repo-Commit and an ETag: the git blob id, or for LFS
    files X-Linked-Etag (the sha256) and X-Linked-Size. X-Repo-Commit on a 404 lets it cache the absence."""
    repo, commit = req.repo_and_commit(hub)
    entry = commit.files.get(req.args["path"])
    headers = {"X-Repo-Commit": commit.id}
    if entry is None:
        raise HubError(404, "Entry not found", "EntryNotFound", headers)
    headers.update({"ETag": f'"{entry.oid}"', "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"})
    if entry.lfs:
        headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
    return byte_range(req, (hub.blobs / entry.sha256).read_bytes(), headers)


def byte_range(req: Request, data: bytes, headers: dict):
    """`Range: bytes=a-b`, `a-` or `-n`, which HfFileSystem sends to read files in blocks."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", req.headers.get("Range", "").strip())
    if match is None or match.groups() == ("", ""):
        return 200, headers, data
    first, last = match.groups()
    start = int(first) if first else max(len(data) - int(last), 0)
    end = min(int(last) + 1, len(data)) if first and last else len(data)
    if start >= len(data):
        raise HubError(416, "Range not satisfiable", headers={**headers, "Content-Range": f"bytes */{len(data)}"})
    return 206, {**headers, "Content-Range": f"bytes {start}-{end - 1}/{len(data)}"}, data[start:end]


API = r"/api/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"
GIT = r"/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)"  # model repos have no prefix
ROUTES = [(methods.split(), re.compile(pattern), endpoint) for methods, pattern, endpoint in [
    ("POST", r"/api/repos/create", create_repo),
    # Called before any commit with a README.md: the Hub checks the card's metadata, this one takes it as it is.
    ("POST", r"/api/validate-yaml", lambda hub, req: reply({"errors": [], "warnings": []})),
    ("GET", API + r"(?:/revision/(?P<rev>[^/]+))?", repo_info),
    ("GET", API + r"/commits/(?P<rev>[^/]+)", list_commits),
    ("GET", API + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", tree),
    ("POST", API + r"/paths-info/(?P<rev>[^/]+)", paths_info),
    ("POST", API + r"/preupload/(?P<rev>[^/]+)", preupload),
    ("POST", API + r"/commit/(?P<rev>[^/]+)", commit),
    ("POST", GIT + r"\.git/info/lfs/objects/batch", lfs_batch),
    ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})", lfs_upload),
    ("GET HEAD", GIT + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)", resolve),
]]


# ---- the HTTP server ----------------------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects: every answer has a Content-Length
    disable_nagle_algorithm = True  # else each answer waits 40 ms for a delayed ACK between headers and body
    timeout = 60  # seconds an idle kept-alive connection holds its thread
    hub: Hub  # set on the subclass that `serve` makes

    def do_GET(self):
        url = urlsplit(self.path)
        # Read the body first, always: the next request on this kept-alive connection starts right after it.
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "")
        body = b"" if chunked else self.rfile.read(int(self.headers.get("Content-Length") or 0))
        note = ""
        try:
            if chunked:  # the client sizes every body it sends (file uploads included); drop the connection
                self.close_connection = True
                raise HubError(411, "The local hub needs a Content-Length")
            status, headers, payload = self.route(url.path, parse_qs(url.query), body)
        except HubError as error:
            message = note = str(error).encode("ascii", "replace").decode()  # headers are latin-1
            codes = {"X-Error-Code": error.code} if error.code else {}
            headers = {**error.headers, "X-Error-Message": message, **codes}
            status, headers, payload = reply({"error": str(error), **error.body}, error.status, headers)
        except Exception:  # a bug here: answer it (tests fail on any 500 in the log)
            status, headers, payload = 500, {"Content-Type": "text/plain"}, traceback.format_exc().encode()
            note = payload.decode().splitlines()[-1]
        self.hub.log.append(f"{self.command} {self.path} {status} {note}".strip())
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(payload))}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
            if "/resolve/" in url.path:
                with self.hub.lock:
                    self.hub.sent += len(payload)

    do_HEAD = do_POST = do_PUT = do_GET

    def route(self, path: str, query: dict, body: bytes):
        for methods, pattern, endpoint in ROUTES:
            match = pattern.fullmatch(path)
            if match and self.command in methods:
                args = {name: unquote(value) for name, value in match.groupdict().items() if value is not None}
                return endpoint(self.hub, Request(args, query, self.headers, body, f"http://{self.headers['Host']}"))
        raise HubError(404, f"The local hub has no route for {self.command} {path}")

    def log_message(self, format, *args):  # quiet: `Hub.log` keeps the requests
        pass


@contextlib.contextmanager
def serve(root: str | Path):
    """A new, empty hub stored under `root`, served on 127.0.0.1 (a free port) by a background thread."""
    hub = Hub(root)
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("LocalHubHandler", (Handler,), {"hub": hub}))
    hub.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="local-hub", daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join()

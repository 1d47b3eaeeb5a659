"""A small Hugging Face Hub-compatible HTTP server for the tests: real `huggingface_hub` clients talk to
it on 127.0.0.1 (port 0) exactly as they would to huggingface.co, with no network.

It speaks the subset of the Hub API that create_repo / upload_folder (with HF_HUB_DISABLE_XET=1: the
preupload → LFS batch → PUT → NDJSON commit path) and whoami / repo_info / snapshot_download /
hf_hub_download / `datasets.load_dataset` (README.md, revision, tree of a folder, resolve) use, for
model, dataset and Space repos alike, with the Hub's auth rules that the push's error paths depend on:
- a request without a known token → 401 on whoami and on every write;
- writing into another user's namespace or repo → 403;
- an invalid repo name → 400; creating an existing repo → 409 that still carries its "url".
State lives in memory. `server.requests` records (method, path, user) of every request.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

LFS_MIN_SIZE = 10_000  # bigger files, and binary ones, go through LFS (the Hub's rule is similar)
REPO_NAME = re.compile(r"^(?!.*(--|\.\.))[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9])?$")
TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


def git_blob_oid(data: bytes) -> str:
    """The git object id of a file's content: what the Hub reports for a regular (non-LFS) file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class Entry:
    sha256: str
    size: int
    lfs: bool

    def blob_oid(self, store: Store) -> str:
        data = lfs_pointer(self.sha256, self.size) if self.lfs else store.blobs[self.sha256]
        return git_blob_oid(data)


@dataclass
class Commit:
    oid: str
    title: str
    files: dict[str, Entry]
    parent: str | None
    date: float = field(default_factory=time.time)


@dataclass
class Repo:
    repo_id: str
    type: str
    private: bool
    commits: list[Commit]
    branches: dict[str, str]

    def at(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision, revision)
        return next((c for c in self.commits if c.oid == oid), None)


@dataclass
class Store:
    tokens: dict[str, str]  # token → user name
    repos: dict[tuple[str, str], Repo] = field(default_factory=dict)  # (type, repo_id) → repo
    blobs: dict[str, bytes] = field(default_factory=dict)  # sha256 → content
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra or {}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    store: Store

    def log_message(self, *args) -> None:  # quiet
        pass

    # -- plumbing
    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = bytearray()
            while (size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
                body += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return bytes(body)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def json_body(self) -> dict:
        return json.loads(self.read_body() or b"{}")

    def reply(self, status: int, body: bytes | dict | list = b"", headers: dict | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", "application/json")
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":  # HEAD answers carry headers only, errors included
            self.wfile.write(data)

    def user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return self.store.tokens.get(auth[7:]) if auth.startswith("Bearer ") else None

    def need_user(self) -> str:
        user = self.user()
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header", "Unauthorized")
        return user

    def base_url(self) -> str:
        return f"http://{self.headers['Host']}"

    def repo_url(self, repo: Repo) -> str:
        return f"{self.base_url()}/{URL_PREFIX[repo.type]}{repo.repo_id}"

    def find_repo(self, type_: str, repo_id: str, write: bool = False) -> Repo:
        repo, user = self.store.repos.get((type_, repo_id)), self.user()
        owner = repo_id.split("/")[0]
        if repo is None or (repo.private and user != owner):
            raise HubError(404, "Repository not found", "RepoNotFound")
        if write and user != owner:
            if user is None:
                raise HubError(401, "Invalid credentials in Authorization header", "Unauthorized")
            raise HubError(403, f"You don't have the rights to write to {repo_id}", "Forbidden")
        return repo

    def dispatch(self) -> None:
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        with self.store.lock:
            self.store.requests.append((self.command, path, self.user()))
            try:
                self.route(self.command, path, query)
            except HubError as e:
                headers = {"X-Error-Message": e.message, **({"X-Error-Code": e.code} if e.code else {})}
                self.reply(e.status, {"error": e.message, **e.extra}, headers)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = dispatch

    # -- routes
    def route(self, method: str, path: str, query: dict) -> None:
        if (method, path) == ("GET", "/api/whoami-v2"):
            user = self.need_user()
            return self.reply(200, {"type": "user", "name": user, "fullname": user, "orgs": [],
                                    "auth": {"type": "access_token", "accessToken": {"role": "write"}}})
        if (method, path) == ("POST", "/api/repos/create"):
            return self.create_repo(self.json_body())
        if (method, path) == ("POST", "/api/validate-yaml"):
            return self.validate_yaml(self.json_body())
        if m := re.fullmatch(r"/api/(models|datasets|spaces)/([^/]+/[^/]+)(?:/(.*))?", path):
            return self.repo_api(method, TYPES[m[1]], m[2], m[3] or "", query)
        if m := re.fullmatch(r"/(datasets/|spaces/)?([^/]+/[^/]+)\.git/info/lfs/objects/batch", path):
            if method == "POST":
                return self.lfs_batch(self.find_repo(_type(m[1]), m[2], write=True), self.json_body())
        if (m := re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", path)) and method == "PUT":
            data = self.read_body()
            if hashlib.sha256(data).hexdigest() != m[1]:
                raise HubError(400, "sha256 of the upload does not match its oid")
            self.store.blobs[m[1]] = data
            return self.reply(200, {})
        if (m := re.fullmatch(r"/(datasets/|spaces/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)) and method in ("GET", "HEAD"):
            return self.resolve(self.find_repo(_type(m[1]), m[2]), m[3], m[4])
        raise HubError(404, f"no such route: {method} {path}")

    def create_repo(self, body: dict) -> None:
        user = self.need_user()
        owner, name, type_ = body.get("organization") or user, body.get("name", ""), body.get("type") or "model"
        if not REPO_NAME.match(name):
            raise HubError(400, "Invalid repo name: only letters, digits, '-', '_' and '.' are allowed, at most "
                           "96 characters; '--' and '..' are forbidden; no '-' or '.' at either end")
        if owner != user:
            raise HubError(403, f"You don't have the rights to create a model under the namespace \"{owner}\"",
                           "Forbidden")
        repo_id = f"{owner}/{name}"
        existing = self.store.repos.get((type_, repo_id))
        if existing:
            raise HubError(409, "You already created this model repo", "RepoExists", {"url": self.repo_url(existing)})
        first = Commit(hashlib.sha1(f"{repo_id}{time.time_ns()}".encode()).hexdigest(), "initial commit", {}, None)
        private = bool(body.get("private")) or body.get("visibility") == "private"  # the newer clients send the latter
        repo = Repo(repo_id, type_, private, [first], {"main": first.oid})
        self.store.repos[(type_, repo_id)] = repo
        self.reply(200, {"url": self.repo_url(repo), "name": repo_id, "id": repo_id})

    def validate_yaml(self, body: dict) -> None:
        import yaml

        header = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", body.get("content", ""), flags=re.S)
        if not header:
            return self.reply(200, {"warnings": [{"message": "empty or missing yaml metadata in repo card"}]})
        try:
            meta = yaml.safe_load(header[1])
        except yaml.YAMLError as e:
            raise HubError(400, f"Invalid YAML in the card metadata: {e}") from None
        if meta is not None and not isinstance(meta, dict):
            raise HubError(400, "The card metadata must be a YAML mapping")
        self.reply(200, {"warnings": []})

    def repo_api(self, method: str, type_: str, repo_id: str, rest: str, query: dict) -> None:
        verb, _, tail = rest.partition("/")
        write = (method, verb) in {("POST", "preupload"), ("POST", "commit")}
        repo = self.find_repo(type_, repo_id, write=write)
        if method in ("GET", "HEAD") and verb in ("", "revision"):
            return self.info(repo, tail or "main")
        if method == "POST" and verb == "preupload":
            return self.preupload(repo, tail, self.json_body())
        if method == "POST" and verb == "commit":
            return self.commit(repo, tail, self.read_body())
        if method == "GET" and verb == "tree":
            revision, _, sub = tail.partition("/")
            return self.tree(repo, revision, sub.strip("/"), query.get("recursive", ["false"])[0] in ("1", "true", "True"))
        if method == "GET" and verb == "commits":
            return self.history(repo, tail)
        raise HubError(404, f"no such route: {method} /api/{type_}s/{repo_id}/{rest}")

    def head_of(self, repo: Repo, revision: str) -> Commit:
        commit = repo.at(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def info(self, repo: Repo, revision: str) -> None:
        commit = self.head_of(repo, revision)
        self.reply(200, {"id": repo.repo_id, "modelId": repo.repo_id, "author": repo.repo_id.split("/")[0],
                         "sha": commit.oid, "private": repo.private, "disabled": False, "gated": False, "tags": [],
                         "lastModified": _iso(commit.date), "siblings": [{"rfilename": p} for p in sorted(commit.files)]})

    def preupload(self, repo: Repo, revision: str, body: dict) -> None:
        commit = self.head_of(repo, revision)
        answers = []
        for f in body["files"]:
            binary = b"\0" in base64.b64decode(f["sample"])
            current = commit.files.get(f["path"])
            remote_oid = None if current is None else current.sha256 if current.lfs else current.blob_oid(self.store)
            answers.append({"path": f["path"], "uploadMode": "lfs" if binary or f["size"] >= LFS_MIN_SIZE else "regular",
                            "shouldIgnore": False, "oid": remote_oid})
        self.reply(200, {"files": answers, "commitOid": commit.oid})

    def lfs_batch(self, repo: Repo, body: dict) -> None:
        objects = []
        for obj in body["objects"]:
            answer = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.store.blobs:
                answer["actions"] = {"upload": {"href": f"{self.base_url()}/lfs-upload/{obj['oid']}", "header": {}}}
            objects.append(answer)
        self.reply(200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"})

    def commit(self, repo: Repo, revision: str, body: bytes) -> None:
        parent = self.head_of(repo, revision)
        files, title = dict(parent.files), ""
        for line in filter(None, (raw.strip() for raw in body.splitlines())):
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                title = value.get("summary", "")
                if value.get("parentCommit") not in (None, parent.oid):
                    raise HubError(412, "A commit has happened since. Please refresh and try again.")
            elif key == "file":
                data = base64.b64decode(value["content"])
                sha = hashlib.sha256(data).hexdigest()
                self.store.blobs[sha] = data
                files[value["path"]] = Entry(sha, len(data), lfs=False)
            elif key == "lfsFile":
                if value["oid"] not in self.store.blobs:
                    raise HubError(422, f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = Entry(value["oid"], len(self.store.blobs[value["oid"]]), lfs=True)
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: e for p, e in files.items() if not p.startswith(prefix)}
        oid = hashlib.sha1(f"{parent.oid}{sorted(files)}{time.time_ns()}".encode()).hexdigest()
        repo.commits.append(Commit(oid, title, files, parent.oid))
        repo.branches[revision] = oid
        self.reply(200, {"success": True, "commitOid": oid, "pullRequestUrl": None,
                         "commitUrl": f"{self.repo_url(repo)}/commit/{oid}"})

    def tree(self, repo: Repo, revision: str, sub: str, recursive: bool) -> None:
        commit = self.head_of(repo, revision)
        prefix = sub + "/" if sub else ""
        entries, folders = [], set()
        for path in sorted(p for p in commit.files if p.startswith(prefix)):
            parts = path[len(prefix):].split("/")
            if len(parts) > 1:
                folders.update(prefix + "/".join(parts[:i]) for i in range(1, len(parts) if recursive else 2))
                if not recursive:
                    continue
            entry = commit.files[path]
            item = {"type": "file", "path": path, "oid": entry.blob_oid(self.store),
                    "size": len(lfs_pointer(entry.sha256, entry.size)) if entry.lfs else entry.size}
            if entry.lfs:
                item["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": item["size"]}
            entries.append(item)
        entries += [{"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0}
                    for d in sorted(folders)]
        self.reply(200, entries)

    def history(self, repo: Repo, revision: str) -> None:
        commit, out = self.head_of(repo, revision), []
        while commit is not None:
            out.append({"id": commit.oid, "title": commit.title, "message": "", "date": _iso(commit.date),
                        "authors": [{"user": repo.repo_id.split("/")[0]}]})
            commit = repo.at(commit.parent) if commit.parent else None
        self.reply(200, out)

    def resolve(self, repo: Repo, revision: str, path: str) -> None:
        commit = self.head_of(repo, revision)
        entry = commit.files.get(path)
        if entry is None:
            raise HubError(404, "Entry not found", "EntryNotFound")
        headers = {"X-Repo-Commit": commit.oid, "Content-Type": "application/octet-stream"}
        if entry.lfs:
            headers.update({"ETag": f'"{entry.sha256}"', "X-Linked-Etag": f'"{entry.sha256}"',
                            "X-Linked-Size": str(entry.size)})
        else:
            headers["ETag"] = f'"{entry.blob_oid(self.store)}"'
        self.reply(200, self.store.blobs[entry.sha256], headers)


def _type(prefix: str | None) -> str:
    return {"datasets/": "dataset", "spaces/": "space"}.get(prefix or "", "model")


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t))


class HubServer:
    """`with HubServer({"hf_token": "alice"}) as hub:` → a Hub at hub.url until the block ends."""

    def __init__(self, tokens: dict[str, str]):
        self.store = Store(tokens)
        handler = type("BoundHandler", (Handler,), {"store": self.store})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def add_repo(self, repo_id: str, private: bool = False, type_: str = "model") -> None:
        """A repo created out of band (e.g. someone else's); type_: model, dataset or space."""
        first = Commit(hashlib.sha1(repo_id.encode()).hexdigest(), "initial commit", {}, None)
        self.store.repos[(type_, repo_id)] = Repo(repo_id, type_, private, [first], {"main": first.oid})

    def commits(self, repo_id: str, type_: str = "model") -> int:
        return len(self.store.repos[(type_, repo_id)].commits)

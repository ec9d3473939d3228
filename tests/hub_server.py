"""A fake Hugging Face Hub on 127.0.0.1 that the real ``huggingface_hub`` client talks to over real HTTP.

It serves the routes that ``create_repo``, ``create_branch``, ``update_repo_settings``, ``upload_folder`` /
``upload_file`` (validate-yaml, preupload, the LFS batch API, LFS upload and verify, commit), ``repo_info``,
``list_repo_tree`` and ``hf_hub_download`` / ``snapshot_download`` call in huggingface_hub 2.x, keeps the committed
files in memory (per branch, per commit), and records every request and every commit payload so tests can assert
what arrived.

Upload modes, as the Hub decides them in its preupload answer (``FakeHub(lfs=True)``, the default): a file goes
through LFS when a ``filter=lfs`` pattern of the repo's ``.gitattributes`` matches it, when it is ``lfs_threshold``
bytes or larger (10 MiB, the Hub's limit for regular files), or when its first 512 bytes (the ``sample`` the client
sends) hold a NUL byte, git's test for a binary file. Everything else is ``regular`` (base64 inside the commit). A
commit that sends as a regular file what the server answered ``lfs`` for is refused, as the Hub refuses binary and
large files outside LFS. ``FakeHub(lfs=False)`` answers ``regular`` for every file (the path the client's Xet
pipeline takes without ever touching Xet storage).

LFS, without Xet: the batch answer (``POST {repo}.git/info/lfs/objects/batch``) chooses the ``basic`` transfer and
gives each missing object an ``upload`` URL (a single ``PUT``) and a ``verify`` URL; objects the repo already holds
get no actions. Uploads and downloads of LFS objects go to a second server (``storage_url``, the "CDN/S3" of this
fake): it takes no token, only the signature in the URL. ``resolve`` answers an LFS file with a ``302`` to it and
the headers ``hf_hub_download`` reads (``X-Linked-Etag``: the sha256, ``X-Linked-Size``, ``X-Repo-Commit``); no
response carries Xet headers. huggingface_hub only takes the LFS path when Xet is off (``HF_HUB_DISABLE_XET``), since
it uploads through Xet whenever ``hf_xet`` is installed: the test fixture turns it off.

Failures are injected per route: ``hub.fail("commit", 500)`` answers the next commit with a 500 (``headers=``: with
these headers, e.g. ``{"Retry-After": "2"}`` on a 429), ``hub.fail("lfs_upload", "drop")`` reads half of the next
upload's body and closes the connection without an answer (an interrupted upload), and ``hub.fail("commit",
"drop_after")`` carries the request out (the commit lands) and then closes the connection without an answer (a
connection cut after the Hub committed, before the client heard of it). Route names: create, branch, settings,
validate, preupload, lfs_batch, lfs_upload, lfs_verify, lfs_download, commit, info, tree, resolve.

The servers run in daemon threads, answer each request within a socket timeout, stop themselves after ``lifetime``
seconds at most, and are stopped by :meth:`FakeHub.stop` (the test fixture calls it at teardown).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import io
import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from typing_extensions import Self

USER = "test-user"
LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub refuses regular (non-LFS) files of 10 MiB or more
SAMPLE_SIZE = 512  # the client sends the first 512 bytes of each file to preupload
# A part of the .gitattributes the Hub writes into a new model repository.
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in ("*.bin", "*.ckpt", "*.h5", "*.msgpack", "*.npy", "*.onnx", "*.parquet", "*.pickle", "*.pkl",
                    "*.pt", "*.pth", "*.safetensors", "*.tar", "*.zip", "*tfevents*")
)


def git_blob_sha(content: bytes) -> str:
    """The git object id of a file's content (what the Hub reports as a regular file's ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(content: bytes) -> bytes:
    """The git-lfs pointer file that the git tree holds in place of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256(content)}\nsize {len(content)}\n".encode()


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def is_binary(sample: bytes) -> bool:
    """git's test (a NUL byte in the first bytes), on the sample the client sends."""
    return b"\0" in sample[:SAMPLE_SIZE]


def lfs_patterns(gitattributes: bytes | None) -> list[str]:
    patterns = []
    for line in (gitattributes or b"").decode(errors="replace").splitlines():
        parts = line.split()
        if len(parts) > 1 and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            patterns.append(parts[0])
    return patterns


def matches_gitattributes(path: str, patterns: list[str]) -> bool:
    """git's rule: a pattern without a slash matches the file name at any depth, one with a slash the full path."""
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(path if "/" in p else name, p.lstrip("/")) for p in patterns)


@dataclass
class Request:
    method: str
    path: str
    query: dict
    authorization: str | None
    body: bytes


@dataclass
class Commit:
    repo_id: str
    revision: str
    oid: str
    header: dict
    files: dict[str, bytes]  # path -> content of the files this commit added (regular and LFS)
    payload: list[dict]  # the ndjson lines as received
    deleted: list[str] = field(default_factory=list)  # paths this commit removed

    @property
    def lfs_files(self) -> set[str]:
        return {line["value"]["path"] for line in self.payload if line["key"] == "lfsFile"}


@dataclass
class Repo:
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit oid
    trees: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit oid -> full file tree
    lfs_paths: dict[str, set[str]] = field(default_factory=dict)  # commit oid -> paths stored as LFS pointers
    objects: dict[str, bytes] = field(default_factory=dict)  # LFS storage: sha256 -> content (uploaded, verified)


class FakeHub:
    """In-memory Hub. ``token``: the only accepted token (None accepts any request, with or without one).
    ``lfs``: decide upload modes as the Hub does (else every file is regular); ``lfs_threshold``: the size from
    which a file goes through LFS."""

    def __init__(self, token: str | None = None, lifetime: float = 60.0, *, lfs: bool = True,
                 lfs_threshold: int = LFS_THRESHOLD):
        self.token = token
        self.lfs = lfs
        self.lfs_threshold = lfs_threshold
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self.commits: list[Commit] = []
        self.lfs_uploads: list[tuple[str, str]] = []  # (repo_id, sha256) of every completed LFS upload
        self._signature = secrets.token_hex(8)  # the "pre-signed URL" part of storage URLs
        self._failures: dict[str, list] = {}
        self._stopped = False
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self, storage=False))
        self._storage = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self, storage=True))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.storage_url = f"http://127.0.0.1:{self._storage.server_address[1]}"
        self._threads = []
        for server in (self._server, self._storage):
            server.daemon_threads = True
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            self._threads.append(thread)
        self._deadline = threading.Timer(lifetime, self.stop)
        self._deadline.daemon = True

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def start(self) -> FakeHub:
        for thread in self._threads:
            thread.start()
        self._deadline.start()
        return self

    def stop(self) -> None:
        self._stopped = True  # keep-alive connections opened before the stop get no more answers
        self._deadline.cancel()
        for server, thread in zip((self._server, self._storage), self._threads):
            if thread.is_alive():
                server.shutdown()
            server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- test helpers ----------------------------------------------------------------------------------------------
    def fail(self, route: str, status: int | str, times: int = 1, message: str | None = None,
             headers: dict[str, str] | None = None) -> None:
        """Answer the next ``times`` requests to ``route`` (see the module docstring) with HTTP ``status``,
        ``message`` and ``headers``, or with a dropped connection when ``status == "drop"`` (before the request is
        carried out) or ``"drop_after"`` (after)."""
        self._failures.setdefault(route, []).extend([(status, message, headers)] * times)

    def clear_failures(self) -> None:
        self._failures.clear()

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The full file tree of ``revision`` (a branch) of ``repo_id`` (LFS files with their content)."""
        repo = self.repos[repo_id]
        return dict(repo.trees[repo.branches[revision]])

    def lfs_files(self, repo_id: str, revision: str = "main") -> set[str]:
        """The paths of ``revision`` that are stored as LFS pointers."""
        repo = self.repos[repo_id]
        return set(repo.lfs_paths[repo.branches[revision]])

    def routes_called(self) -> list[str]:
        return [f"{r.method} {r.path}" for r in self.requests]

    def upload_mode(self, repo_id: str, revision_oid: str, path: str, sample: bytes, size: int) -> str:
        """``lfs`` or ``regular``, as the Hub's preupload decides (see the module docstring)."""
        if not self.lfs:
            return "regular"
        if size >= self.lfs_threshold or is_binary(sample):
            return "lfs"
        gitattributes = self.repos[repo_id].trees[revision_oid].get(".gitattributes")
        return "lfs" if matches_gitattributes(path, lfs_patterns(gitattributes)) else "regular"

    # -- state changes (called from handler threads) ---------------------------------------------------------------
    def _create_repo(self, repo_id: str, private: bool) -> bool:
        with self._lock:
            if repo_id in self.repos:
                return False
            initial = {".gitattributes": DEFAULT_GITATTRIBUTES.encode()}
            oid = _commit_oid(repo_id, "initial", initial, None)
            self.repos[repo_id] = Repo(private=private, branches={"main": oid}, trees={oid: initial},
                                       lfs_paths={oid: set()})
            return True

    def _commit(self, repo_id: str, revision: str, lines: list[dict]) -> Commit:
        """Apply one ndjson commit; raises ValueError (answered 422) for an invalid operation."""
        with self._lock:
            repo = self.repos[repo_id]
            parent = repo.branches[revision]
            tree, lfs_paths = dict(repo.trees[parent]), set(repo.lfs_paths[parent])
            header, added, deleted = {}, {}, []
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "header":
                    header = value
                elif key == "file":
                    if value.get("encoding") != "base64":
                        raise ValueError(f"unexpected encoding {value.get('encoding')!r}")
                    content = base64.b64decode(value["content"])
                    if self.upload_mode(repo_id, parent, value["path"], content[:SAMPLE_SIZE], len(content)) == "lfs":
                        raise ValueError(
                            f"Your push was rejected because it contains binary or large files outside LFS: "
                            f"{value['path']}"
                        )
                    added[value["path"]] = content
                    lfs_paths.discard(value["path"])
                elif key == "lfsFile":
                    content = repo.objects.get(value.get("oid"))
                    if value.get("algo") != "sha256" or content is None or len(content) != value.get("size"):
                        raise ValueError(f"the LFS pointer of {value['path']} names an object this repo does not hold")
                    added[value["path"]] = content
                    lfs_paths.add(value["path"])
                elif key in ("deletedFile", "deletedFolder"):
                    prefix = value["path"].rstrip("/")
                    gone = [p for p in tree if p == prefix or (key == "deletedFolder" and p.startswith(prefix + "/"))]
                    if not gone:
                        raise ValueError(f"cannot delete {value['path']}: not in the repository")
                    for path in gone:
                        del tree[path]
                        lfs_paths.discard(path)
                    deleted.extend(gone)
                else:
                    raise ValueError(f"unsupported commit operation {key!r}")
            tree.update(added)
            oid = _commit_oid(repo_id, header.get("summary", ""), tree, parent)
            repo.trees[oid] = tree
            repo.lfs_paths[oid] = lfs_paths
            repo.branches[revision] = oid
            commit = Commit(repo_id, revision, oid, header, added, lines, deleted)
            self.commits.append(commit)
            return commit


def _commit_oid(repo_id: str, summary: str, tree: dict[str, bytes], parent: str | None) -> str:
    digest = hashlib.sha1(f"{repo_id}\n{summary}\n{parent}\n".encode())
    for path in sorted(tree):
        digest.update(path.encode() + b"\0" + git_blob_sha(tree[path]).encode())
    return digest.hexdigest()


_REPO = r"(?P<repo>[^/]+/[^/]+)"
_GIT_REPO = r"(?P<repo>[^/]+/[^/]+?)\.git"
_OID = r"(?P<oid>[0-9a-f]{64})"
_HUB_ROUTES = [
    ("POST", "create", re.compile(r"^/api/repos/create$")),
    ("POST", "validate", re.compile(r"^/api/validate-yaml$")),
    ("POST", "branch", re.compile(rf"^/api/models/{_REPO}/branch/(?P<rev>.+)$")),
    ("PUT", "settings", re.compile(rf"^/api/models/{_REPO}/settings$")),
    ("POST", "preupload", re.compile(rf"^/api/models/{_REPO}/preupload/(?P<rev>.+)$")),
    ("POST", "commit", re.compile(rf"^/api/models/{_REPO}/commit/(?P<rev>.+)$")),
    ("POST", "lfs_batch", re.compile(rf"^/{_GIT_REPO}/info/lfs/objects/batch$")),
    ("POST", "lfs_verify", re.compile(rf"^/{_GIT_REPO}/info/lfs/objects/verify$")),
    ("GET", "info", re.compile(rf"^/api/models/{_REPO}(?:/revision/(?P<rev>.+))?$")),
    ("GET", "tree", re.compile(rf"^/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<sub>.*))?$")),
    ("GET", "resolve", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")),
    ("HEAD", "resolve", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")),
]
# The storage server ("S3/CDN"): pre-signed URLs, no Hub token.
_STORAGE_ROUTES = [
    ("PUT", "lfs_upload", re.compile(rf"^/lfs/{_REPO}/{_OID}$")),
    ("GET", "lfs_download", re.compile(rf"^/lfs/{_REPO}/{_OID}$")),
    ("HEAD", "lfs_download", re.compile(rf"^/lfs/{_REPO}/{_OID}$")),
]


def _make_handler(hub: FakeHub, storage: bool):
    routes = _STORAGE_ROUTES if storage else _HUB_ROUTES

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 10  # a stuck client cannot hold a handler thread forever

        def log_message(self, *args):  # keep pytest output clean
            pass

        def do_GET(self):
            self._dispatch("GET")

        def do_HEAD(self):
            self._dispatch("HEAD")

        def do_POST(self):
            self._dispatch("POST")

        def do_PUT(self):
            self._dispatch("PUT")

        # -- plumbing ----------------------------------------------------------------------------------------------
        def _read_body(self, limit: int | None = None) -> bytes:
            """The request body (Content-Length or chunked); with ``limit``, only about that many bytes of it."""
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = b""
                while limit is None or len(data) < limit:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        break
                    data += self.rfile.read(size)
                    self.rfile.readline()
                return data
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length if limit is None else min(length, limit)) if length else b""

        def _dispatch(self, method: str) -> None:
            if hub._stopped:
                self.close_connection = True
                self.connection.shutdown(2)
                return None
            parts = urlsplit(self.path)
            path = unquote(parts.path)
            query = parse_qs(parts.query)
            for route_method, name, pattern in routes:  # noqa: B007 (`name` is read after the loop: the matched route)
                match = pattern.match(path)
                if route_method == method and match:
                    break
            else:
                name, match = None, None
            failures = hub._failures.get(name) if name else None
            if failures and failures[0][0] == "drop":
                failures.pop(0)
                length = int(self.headers.get("Content-Length") or 0)
                # Half the body arrives (a chunked one: its first chunk), then the connection ends without an answer.
                body = self._read_body(limit=max(length // 2, 1))
                hub.requests.append(Request(method, path, query, self.headers.get("Authorization"), body))
                self.close_connection = True
                self.connection.shutdown(2)
                return None
            body = self._read_body()
            hub.requests.append(Request(method, path, query, self.headers.get("Authorization"), body))
            if name is None:
                return self._json(404, {"error": f"no route {method} {path}"})
            dropped_after = bool(failures) and failures[0][0] == "drop_after"
            if failures and not dropped_after:
                status, message, headers = failures.pop(0)
                return self._json(status, {"error": message or f"injected failure {status} on {name}"}, headers)
            if storage:
                if query.get("sig") != [hub._signature]:
                    return self._json(403, {"error": "Request has expired or its signature does not match"})
            elif hub.token is not None and self.headers.get("Authorization") != f"Bearer {hub.token}":
                return self._json(
                    401, {"error": "Invalid credentials in Authorization header"}, {"X-Error-Code": "Unauthorized"}
                )
            groups = {k: v for k, v in match.groupdict().items() if v is not None}
            if dropped_after:
                failures.pop(0)
                self.wfile = io.BytesIO()  # the request is carried out; its answer goes nowhere
                getattr(self, f"_route_{name}")(method, body, **groups)
                self.close_connection = True
                self.connection.shutdown(2)
                return None
            return getattr(self, f"_route_{name}")(method, body, **groups)

        def _json(self, status: int, payload, headers: dict | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _missing_repo(self, repo: str) -> bool:
            if repo in hub.repos:
                return False
            self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return True

        def _resolve(self, repo: str, rev: str) -> str | None:
            """The commit oid of ``rev`` (a branch or a commit), or None after answering 404."""
            known = hub.repos[repo]
            if rev in known.branches:
                return known.branches[rev]
            if rev in known.trees:
                return rev
            self._json(404, {"error": f"Invalid rev id: {rev}"}, {"X-Error-Code": "RevisionNotFound"})
            return None

        def _storage_href(self, repo: str, oid: str) -> str:
            return f"{hub.storage_url}/lfs/{repo}/{oid}?sig={hub._signature}"

        # -- routes ------------------------------------------------------------------------------------------------
        def _route_create(self, method, body):
            request = json.loads(body)
            namespace = request.get("organization") or USER
            repo_id = f"{namespace}/{request['name']}"
            url = f"{hub.url}/{repo_id}"
            private = request.get("visibility") == "private" or bool(request.get("private"))
            if not hub._create_repo(repo_id, private):
                return self._json(409, {"error": "You already created this model repo", "url": url})
            return self._json(200, {"url": url, "name": repo_id})

        def _route_settings(self, method, body, repo):
            if self._missing_repo(repo):
                return None
            request = json.loads(body)
            if "visibility" in request:
                if request["visibility"] not in ("public", "private"):
                    return self._json(400, {"error": f"Invalid visibility {request['visibility']!r}"})
                hub.repos[repo].private = request["visibility"] == "private"
            elif "private" in request:
                hub.repos[repo].private = bool(request["private"])
            return self._json(200, {})

        def _route_validate(self, method, body):
            json.loads(body)
            return self._json(200, {"errors": [], "warnings": []})

        def _route_branch(self, method, body, repo, rev):
            if self._missing_repo(repo):
                return None
            known = hub.repos[repo]
            if rev in known.branches:
                return self._json(409, {"error": "Reference already exists"})
            known.branches[rev] = known.branches["main"]
            return self._json(200, {})

        def _route_preupload(self, method, body, repo, rev):
            if self._missing_repo(repo) or (oid := self._resolve(repo, rev)) is None:
                return None
            known = hub.repos[repo]
            tree, lfs_paths = known.trees[oid], known.lfs_paths[oid]
            files = []
            for entry in json.loads(body)["files"]:
                path, existing = entry["path"], tree.get(entry["path"])
                mode = hub.upload_mode(repo, oid, path, base64.b64decode(entry.get("sample", "")), entry["size"])
                if existing is None:
                    remote_oid = None
                else:  # what the client compares with its own oid: sha256 for LFS files, the git blob id otherwise
                    remote_oid = sha256(existing) if path in lfs_paths else git_blob_sha(existing)
                files.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": remote_oid})
            return self._json(200, {"files": files, "commitOid": oid})

        def _route_lfs_batch(self, method, body, repo):
            if self._missing_repo(repo):
                return None
            request = json.loads(body)
            if request.get("operation") != "upload" or "basic" not in request.get("transfers", ["basic"]):
                return self._json(400, {"message": "only basic uploads are served"})
            objects = []
            for entry in request["objects"]:
                oid, size = entry["oid"], entry["size"]
                answer = {"oid": oid, "size": size, "authenticated": True}
                if oid not in hub.repos[repo].objects:  # objects the repo holds get no actions: nothing to upload
                    answer["actions"] = {
                        "upload": {"href": self._storage_href(repo, oid), "expires_in": 86400},
                        "verify": {"href": f"{hub.url}/{repo}.git/info/lfs/objects/verify", "header": {}},
                    }
                objects.append(answer)
            return self._json(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                              {"Content-Type": "application/vnd.git-lfs+json"})

        def _route_lfs_upload(self, method, body, repo, oid):
            if self._missing_repo(repo):
                return None
            if sha256(body) != oid:
                return self._json(400, {"error": f"content does not match sha256 {oid} ({len(body)} bytes arrived)"})
            with hub._lock:
                hub.repos[repo].objects[oid] = body
                hub.lfs_uploads.append((repo, oid))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.send_header("ETag", f'"{hashlib.md5(body).hexdigest()}"')
            self.end_headers()
            return None

        def _route_lfs_verify(self, method, body, repo):
            if self._missing_repo(repo):
                return None
            request = json.loads(body)
            content = hub.repos[repo].objects.get(request.get("oid"))
            if content is None or len(content) != request.get("size"):
                return self._json(404, {"message": f"object {request.get('oid')} was not uploaded"})
            return self._json(200, {})

        def _route_lfs_download(self, method, body, repo, oid):
            if self._missing_repo(repo):
                return None
            content = hub.repos[repo].objects.get(oid)
            if content is None:
                return self._json(404, {"error": "NoSuchKey"})
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(content)))
            self.send_header("ETag", f'"{oid}"')
            self.end_headers()
            if method == "GET":
                self.wfile.write(content)
            return None

        def _route_commit(self, method, body, repo, rev):
            if self._missing_repo(repo) or self._resolve(repo, rev) is None:
                return None
            if rev not in hub.repos[repo].branches:
                return self._json(400, {"error": "Commits go to branches"})
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            try:
                commit = hub._commit(repo, rev, lines)
            except ValueError as error:
                return self._json(422, {"error": str(error)})
            return self._json(
                200,
                {
                    "commitUrl": f"{hub.url}/{repo}/commit/{commit.oid}",
                    "commitOid": commit.oid,
                    "pullRequestUrl": None,
                },
            )

        def _route_info(self, method, body, repo, rev="main"):
            if self._missing_repo(repo) or (oid := self._resolve(repo, rev)) is None:
                return None
            tree = hub.repos[repo].trees[oid]
            return self._json(
                200,
                {
                    "id": repo,
                    "modelId": repo,
                    "sha": oid,
                    "private": hub.repos[repo].private,
                    "siblings": [{"rfilename": path} for path in sorted(tree)],
                    "tags": [],
                    "xetEnabled": False,
                },
            )

        def _route_tree(self, method, body, repo, rev, sub=""):
            if self._missing_repo(repo) or (oid := self._resolve(repo, rev)) is None:
                return None
            known = hub.repos[repo]
            entries = []
            for path, content in sorted(known.trees[oid].items()):
                if sub and not path.startswith(sub.rstrip("/") + "/"):
                    continue
                if path in known.lfs_paths[oid]:
                    pointer = lfs_pointer(content)
                    lfs = {"oid": sha256(content), "size": len(content), "pointerSize": len(pointer)}
                    entries.append({"type": "file", "path": path, "size": len(content), "oid": git_blob_sha(pointer),
                                    "lfs": lfs})
                else:
                    entries.append({"type": "file", "path": path, "size": len(content), "oid": git_blob_sha(content)})
            return self._json(200, entries)

        def _route_resolve(self, method, body, repo, rev, file):
            if self._missing_repo(repo) or (oid := self._resolve(repo, rev)) is None:
                return None
            known = hub.repos[repo]
            tree = known.trees[oid]
            if file not in tree:
                return self._json(
                    404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": oid}
                )
            content = tree[file]
            if file in known.lfs_paths[oid]:
                # As the Hub does for an LFS file: a redirect to storage, the file's metadata on the redirect itself.
                self.send_response(302)
                self.send_header("Location", self._storage_href(repo, sha256(content)))
                self.send_header("Content-Length", "0")
                self.send_header("ETag", f'"{git_blob_sha(lfs_pointer(content))}"')
                self.send_header("X-Linked-Etag", f'"{sha256(content)}"')
                self.send_header("X-Linked-Size", str(len(content)))
                self.send_header("X-Repo-Commit", oid)
                self.end_headers()
                return None
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(content)))
            self.send_header("ETag", f'"{git_blob_sha(content)}"')
            self.send_header("X-Repo-Commit", oid)
            self.end_headers()
            if method == "GET":
                self.wfile.write(content)
            return None

    return Handler

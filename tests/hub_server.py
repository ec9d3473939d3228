"""A fake Hugging Face Hub on 127.0.0.1 that the real ``huggingface_hub`` client talks to over real HTTP.

It serves the routes that ``create_repo``, ``create_branch``, ``upload_folder`` (validate-yaml, preupload, commit),
``repo_info``, ``list_repo_tree`` and ``hf_hub_download`` / ``snapshot_download`` call in huggingface_hub 2.x, keeps
the committed files in memory (per branch, per commit), and records every request and every commit payload so tests
can assert what arrived. Every preupload answer is ``uploadMode: regular`` (base64 content inside the commit), so no
LFS or Xet transfer is involved.

Failures are injected per route: ``hub.fail("commit", 500)`` answers the next commit with a 500, and
``hub.fail("commit", "drop")`` closes the connection without an answer (an interrupted upload).

The server runs in a daemon thread, answers each request within a socket timeout, stops itself after ``lifetime``
seconds at most, and is stopped by :meth:`FakeHub.stop` (the test fixture calls it at teardown).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

USER = "test-user"


def git_blob_sha(content: bytes) -> str:
    """The git object id of a file's content (what the Hub reports as a regular file's ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


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
    files: dict[str, bytes]  # path -> content of the files this commit added
    payload: list[dict]  # the ndjson lines as received


@dataclass
class Repo:
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit oid
    trees: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit oid -> full file tree


class FakeHub:
    """In-memory Hub. ``token``: the only accepted token (None accepts any request, with or without one)."""

    def __init__(self, token: str | None = None, lifetime: float = 60.0):
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self.commits: list[Commit] = []
        self._failures: dict[str, list] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._deadline = threading.Timer(lifetime, self.stop)
        self._deadline.daemon = True

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def start(self) -> FakeHub:
        self._thread.start()
        self._deadline.start()
        return self

    def stop(self) -> None:
        self._deadline.cancel()
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- test helpers ----------------------------------------------------------------------------------------------
    def fail(self, route: str, status: int | str, times: int = 1, message: str | None = None) -> None:
        """Answer the next ``times`` requests to ``route`` (create, branch, validate, preupload, commit, info, tree,
        resolve) with HTTP ``status`` and ``message``, or with a dropped connection when ``status == "drop"``."""
        self._failures.setdefault(route, []).extend([(status, message)] * times)

    def clear_failures(self) -> None:
        self._failures.clear()

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The full file tree of ``revision`` (a branch) of ``repo_id``."""
        repo = self.repos[repo_id]
        return dict(repo.trees[repo.branches[revision]])

    def routes_called(self) -> list[str]:
        return [f"{r.method} {r.path}" for r in self.requests]

    # -- state changes (called from handler threads) ---------------------------------------------------------------
    def _create_repo(self, repo_id: str, private: bool) -> bool:
        with self._lock:
            if repo_id in self.repos:
                return False
            initial = {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}
            oid = _commit_oid(repo_id, "initial", initial, None)
            self.repos[repo_id] = Repo(private=private, branches={"main": oid}, trees={oid: initial})
            return True

    def _commit(self, repo_id: str, revision: str, lines: list[dict]) -> Commit:
        with self._lock:
            repo = self.repos[repo_id]
            parent = repo.branches[revision]
            tree = dict(repo.trees[parent])
            header, added = {}, {}
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "header":
                    header = value
                elif key == "file":
                    if value.get("encoding") != "base64":
                        raise ValueError(f"unexpected encoding {value.get('encoding')!r}")
                    added[value["path"]] = base64.b64decode(value["content"])
                elif key in ("deletedFile", "deletedFolder"):
                    prefix = value["path"].rstrip("/")
                    for path in [p for p in tree if p == prefix or p.startswith(prefix + "/")]:
                        del tree[path]
                else:
                    raise ValueError(f"unsupported commit operation {key!r} (only regular uploads are served)")
            tree.update(added)
            oid = _commit_oid(repo_id, header.get("summary", ""), tree, parent)
            repo.trees[oid] = tree
            repo.branches[revision] = oid
            commit = Commit(repo_id, revision, oid, header, added, lines)
            self.commits.append(commit)
            return commit


def _commit_oid(repo_id: str, summary: str, tree: dict[str, bytes], parent: str | None) -> str:
    digest = hashlib.sha1(f"{repo_id}\n{summary}\n{parent}\n".encode())
    for path in sorted(tree):
        digest.update(path.encode() + b"\0" + git_blob_sha(tree[path]).encode())
    return digest.hexdigest()


_REPO = r"(?P<repo>[^/]+/[^/]+)"
_ROUTES = [
    ("POST", "create", re.compile(r"^/api/repos/create$")),
    ("POST", "validate", re.compile(r"^/api/validate-yaml$")),
    ("POST", "branch", re.compile(rf"^/api/models/{_REPO}/branch/(?P<rev>.+)$")),
    ("POST", "preupload", re.compile(rf"^/api/models/{_REPO}/preupload/(?P<rev>.+)$")),
    ("POST", "commit", re.compile(rf"^/api/models/{_REPO}/commit/(?P<rev>.+)$")),
    ("GET", "info", re.compile(rf"^/api/models/{_REPO}(?:/revision/(?P<rev>.+))?$")),
    ("GET", "tree", re.compile(rf"^/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<sub>.*))?$")),
    ("GET", "resolve", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")),
    ("HEAD", "resolve", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")),
]


def _make_handler(hub: FakeHub):
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

        # -- plumbing ----------------------------------------------------------------------------------------------
        def _dispatch(self, method: str) -> None:
            parts = urlsplit(self.path)
            path = unquote(parts.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            hub.requests.append(Request(method, path, parse_qs(parts.query), self.headers.get("Authorization"), body))
            for route_method, name, pattern in _ROUTES:
                match = pattern.match(path)
                if route_method == method and match:
                    break
            else:
                return self._json(404, {"error": f"no route {method} {path}"})
            failures = hub._failures.get(name)
            if failures:
                status, message = failures.pop(0)
                if status == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)  # the client sees the connection end without an answer
                    return None
                return self._json(status, {"error": message or f"injected failure {status} on {name}"})
            if hub.token is not None and self.headers.get("Authorization") != f"Bearer {hub.token}":
                return self._json(401, {"error": "Invalid credentials in Authorization header"}, {"X-Error-Code": "Unauthorized"})
            groups = {k: v for k, v in match.groupdict().items() if v is not None}
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
            tree = hub.repos[repo].trees[oid]
            files = []
            for entry in json.loads(body)["files"]:
                existing = tree.get(entry["path"])
                files.append(
                    {
                        "path": entry["path"],
                        "uploadMode": "regular",
                        "shouldIgnore": False,
                        "oid": None if existing is None else git_blob_sha(existing),
                    }
                )
            return self._json(200, {"files": files, "commitOid": oid})

        def _route_commit(self, method, body, repo, rev):
            if self._missing_repo(repo) or self._resolve(repo, rev) is None:
                return None
            if rev not in hub.repos[repo].branches:
                return self._json(400, {"error": "Commits go to branches"})
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            commit = hub._commit(repo, rev, lines)
            return self._json(
                200, {"commitUrl": f"{hub.url}/{repo}/commit/{commit.oid}", "commitOid": commit.oid, "pullRequestUrl": None}
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
                },
            )

        def _route_tree(self, method, body, repo, rev, sub=""):
            if self._missing_repo(repo) or (oid := self._resolve(repo, rev)) is None:
                return None
            tree = hub.repos[repo].trees[oid]
            entries = [
                {"type": "file", "path": path, "size": len(content), "oid": git_blob_sha(content)}
                for path, content in sorted(tree.items())
                if not sub or path.startswith(sub.rstrip("/") + "/")
            ]
            return self._json(200, entries)

        def _route_resolve(self, method, body, repo, rev, file):
            if self._missing_repo(repo) or (oid := self._resolve(repo, rev)) is None:
                return None
            tree = hub.repos[repo].trees[oid]
            if file not in tree:
                return self._json(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": oid})
            content = tree[file]
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

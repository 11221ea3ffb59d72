"""A Hugging Face Hub-compatible HTTP server for tests: the unmodified ``huggingface_hub`` client on 127.0.0.1.

Three layers, as in the serving code: ``HubStore`` holds repos in memory and knows no HTTP; ``HubHandler`` maps
the Hub's routes onto it, with every error answered in one place (``HubError`` -> 4xx + ``X-Error-Code``); and
``HubServer`` runs it in a daemon thread on a free port. The protocol facts (which request, which response
fields the client reads) are in shared/notes/hub-http-api.md.

Store layout::

    (repo type, repo id) -> Repo
        refs     {"refs/heads/main": oid, "refs/tags/v1": oid, "refs/convert/parquet": oid}
        commits  {oid: Commit(parent, summary, files {path: bytes})}   every commit is a full snapshot

Implemented: resolve (HEAD/GET, Range -> 206, revisions URL-encoded or not), repo/model/dataset info, tree,
refs, branch and tag creation, create/delete repo, validate-yaml, preupload (always ``regular``), NDJSON commit
(files, deletedFile, deletedFolder), whoami. Not implemented: LFS/Xet uploads, pull requests, pagination,
chunked request bodies, auth (any token, or none, is accepted; private repos are readable by everyone; the
``Authorization`` header of every request is recorded in ``HubServer.tokens`` for assertions).

One file past 400 lines on purpose: store, routes and server are only used together, and a single module is
what conftest and other test modules import.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import logging
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger(__name__)

# repo type -> URL prefix in resolve URLs and in /api/{prefix}/...
TYPE_PREFIX = {"model": "models", "dataset": "datasets", "space": "spaces", "kernel": "kernels"}
PREFIX_TYPE = {v: k for k, v in TYPE_PREFIX.items()}
USER = "test-user"  # whoami, and the namespace of repos created without one


class HubError(Exception):
    """An error answer: HTTP status plus the ``X-Error-Code`` the client turns into its exception types."""

    def __init__(self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def blob_oid(data: bytes) -> str:
    """Git's blob id, which the Hub sends as the ``ETag`` of a non-LFS file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def full_ref(revision: str) -> str:
    """``main`` -> ``refs/heads/main``; names already under ``refs/`` are kept."""
    return revision if revision.startswith("refs/") else f"refs/heads/{revision}"


@dataclass
class Commit:
    oid: str
    parent: str | None
    summary: str
    files: dict[str, bytes]
    date: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"))


@dataclass
class Repo:
    type: str
    id: str
    private: bool = False
    refs: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def has_ref(self, revision: str) -> bool:
        return any(r in self.refs for r in (revision, f"refs/heads/{revision}", f"refs/tags/{revision}"))

    def resolve(self, revision: str | None) -> Commit:
        """A branch, tag or full ref name, or a full commit id -> that commit; else ``RevisionNotFound``."""
        revision = revision or "main"
        for ref in (revision, f"refs/heads/{revision}", f"refs/tags/{revision}"):
            if ref in self.refs:
                return self.commits[self.refs[ref]]
        if revision in self.commits:
            return self.commits[revision]
        raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")

    def url_path(self) -> str:
        return self.id if self.type == "model" else f"{TYPE_PREFIX[self.type]}/{self.id}"


class HubStore:
    """Repos in memory, thread-safe; tests seed it directly with ``put`` and read it back with ``files``."""

    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lock = threading.RLock()
        self._counter = itertools.count()

    def reset(self) -> None:
        with self.lock:
            self.repos.clear()

    def get(self, repo_id: str, repo_type: str = "model") -> Repo:
        with self.lock:
            repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "RepoNotFound", "Repository not found")
        return repo

    def create_repo(self, repo_id: str, repo_type: str = "model", private: bool = False,
                    exist_ok: bool = False) -> Repo:
        """A new repo whose ``main`` holds one commit with an empty ``.gitattributes``, as on the Hub."""
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                if exist_ok:
                    return self.repos[(repo_type, repo_id)]
                raise HubError(409, None, "You already created this repo")
            repo = self.repos[(repo_type, repo_id)] = Repo(repo_type, repo_id, private)
            self.commit(repo_id, {".gitattributes": b""}, repo_type=repo_type, summary="initial commit")
            return repo

    def delete_repo(self, repo_id: str, repo_type: str = "model") -> None:
        with self.lock:
            self.get(repo_id, repo_type)
            del self.repos[(repo_type, repo_id)]

    def commit(self, repo_id: str, add: dict[str, bytes] | None = None, delete: tuple[str, ...] = (), *,
               repo_type: str = "model", revision: str = "main", summary: str = "upload",
               parent: str | None = None) -> str:
        """Commit on branch (or full ref) ``revision``, created from nothing if missing; returns the commit id.

        ``delete`` entries ending in ``/`` remove a folder. ``parent``, when given, must be the ref's head.
        """
        with self.lock:
            repo = self.get(repo_id, repo_type)
            ref = full_ref(revision)
            head = repo.refs.get(ref)
            if parent is not None and parent != head:
                raise HubError(412, None, "A commit has happened since. Please refresh and try again.")
            files = dict(repo.commits[head].files) if head else {}
            for path in delete:
                gone = [p for p in files if p == path or (path.endswith("/") and p.startswith(path))]
                if not gone:
                    raise HubError(404, "EntryNotFound", f"{path} does not exist")
                for p in gone:
                    del files[p]
            files.update(add or {})
            seed = f"{repo_type}/{repo_id}/{head}/{summary}/{next(self._counter)}".encode()
            oid = hashlib.sha1(seed).hexdigest()
            repo.commits[oid] = Commit(oid, head, summary, files)
            repo.refs[ref] = oid
            return oid

    def put(self, repo_id: str, files: dict[str, bytes], *, repo_type: str = "model", revision: str = "main",
            summary: str = "upload") -> str:
        """Create the repo if needed and commit ``files`` on ``revision``: the usual way to seed a test."""
        self.create_repo(repo_id, repo_type, exist_ok=True)
        return self.commit(repo_id, files, repo_type=repo_type, revision=revision, summary=summary)

    def create_ref(self, repo_id: str, ref: str, revision: str | None, repo_type: str = "model") -> str:
        """Point the full ref name ``ref`` at ``revision`` (a new branch or tag)."""
        with self.lock:
            repo = self.get(repo_id, repo_type)
            if ref in repo.refs:
                raise HubError(409, None, f"Reference {ref} already exists")
            repo.refs[ref] = repo.resolve(revision).oid
            return repo.refs[ref]

    def files(self, repo_id: str, revision: str | None = None, repo_type: str = "model") -> dict[str, bytes]:
        with self.lock:
            return dict(self.get(repo_id, repo_type).resolve(revision).files)


def tree_entries(commit: Commit, under: str, recursive: bool) -> list[dict]:
    """Files and folders of ``commit`` below ``under``, in the shape of ``/api/{t}/{id}/tree``."""
    prefix = f"{under.strip('/')}/" if under.strip("/") else ""
    if prefix and not any(p.startswith(prefix) for p in commit.files):
        raise HubError(404, "EntryNotFound", f"{under} does not exist on {commit.oid}")
    dirs, out = set(), []
    for path in sorted(commit.files):
        if not path.startswith(prefix):
            continue
        rest = path[len(prefix):].split("/")
        for i in range(1, len(rest) if recursive else min(len(rest), 2)):
            dirs.add(prefix + "/".join(rest[:i]))
        if recursive or len(rest) == 1:
            data = commit.files[path]
            out.append({"type": "file", "oid": blob_oid(data), "size": len(data), "path": path})
    tree_oid = lambda d: hashlib.sha1(f"tree {commit.oid} {d}".encode()).hexdigest()  # noqa: E731
    out += [{"type": "directory", "oid": tree_oid(d), "size": 0, "path": d} for d in sorted(dirs)]
    return sorted(out, key=lambda e: e["path"])


def parse_range(header: str, size: int) -> tuple[int, int]:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> inclusive (start, end); 416 when unsatisfiable."""
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if m and m.group(1):
        start, end = int(m.group(1)), min(int(m.group(2) or size - 1), size - 1)
    elif m and m.group(2):
        start, end = max(size - int(m.group(2)), 0), size - 1
    else:
        start, end = size, -1
    if start > end:
        raise HubError(416, None, "Range Not Satisfiable", {"Content-Range": f"bytes */{size}"})
    return start, end


# --- HTTP ---------------------------------------------------------------------------------------------------

_ID = r"(?P<id>[^/]+(?:/[^/]+)?)"  # "name" or "namespace/name"
_API = rf"/api/(?P<t>{'|'.join(PREFIX_TYPE)})/{_ID}"
ROUTES: list[tuple[str, re.Pattern, str]] = [
    (m, re.compile(p), h) for m, p, h in [
        ("GET", r"/api/whoami-v2", "whoami"),
        ("POST", r"/api/repos/create", "create_repo"),
        ("DELETE", r"/api/repos/delete", "delete_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("GET", rf"{_API}/refs", "refs"),
        ("GET", rf"{_API}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree"),
        ("POST", rf"{_API}/preupload/(?P<rev>[^/]+)", "preupload"),
        ("POST", rf"{_API}/commit/(?P<rev>[^/]+)", "commit"),
        ("POST", rf"{_API}/branch/(?P<rev>[^/]+)", "branch"),
        ("POST", rf"{_API}/tag/(?P<rev>[^/]+)", "tag"),
        ("GET", rf"{_API}(?:/revision/(?P<rev>[^/]+))?", "info"),
        ("HEAD", rf"/(?:(?P<t>{'|'.join(PREFIX_TYPE)})/)?{_ID}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
        ("GET", rf"/(?:(?P<t>{'|'.join(PREFIX_TYPE)})/)?{_ID}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ]
]


class HubHandler(BaseHTTPRequestHandler):
    """Routes one request onto the ``HubStore``; handlers ``h_*`` return ``(status, body, headers)``."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    server: _Server

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_DELETE = do_PUT = do_GET

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - BaseHTTPRequestHandler's signature
        log.debug("hub %s - %s", self.address_string(), format % args)

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.server.hub.requests.append((self.command, self.path))
        self.server.hub.tokens.append(self.headers.get("Authorization"))
        try:
            body = self._read_body()  # always drained, or the next request on this connection breaks
            for method, pattern, name in ROUTES:
                m = pattern.fullmatch(url.path)
                if m and method == self.command:
                    args = {k: unquote(v) for k, v in m.groupdict().items() if v is not None}
                    with self.store.lock:  # one request at a time sees or changes the store
                        status, payload, headers = getattr(self, f"h_{name}")(body=body, **args)
                    break
            else:
                raise HubError(404, None, f"no route for {self.command} {url.path} in tests/hub_server.py")
        except HubError as e:  # the one place errors become HTTP
            status, payload = e.status, {"error": e.message}
            headers = {**e.headers, **({"X-Error-Code": e.code} if e.code else {}), "X-Error-Message": e.message}
        except Exception as e:  # a bug here: answer it rather than drop the connection
            log.exception("hub server error on %s %s", self.command, self.path)
            status, payload, headers = 500, {"error": repr(e)}, {"X-Error-Message": repr(e)}
        self._send(status, payload, headers)

    def _read_body(self) -> bytes:
        # The client sends every body with a Content-Length (no chunked or gzip bodies in huggingface_hub 2.4).
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, payload: bytes | dict | list | None, headers: dict[str, str]) -> None:
        if isinstance(payload, (dict, list)):
            payload, headers = json.dumps(payload).encode(), {"Content-Type": "application/json", **headers}
        payload = payload or b""
        self.send_response(status)
        for k, v in {"Content-Length": str(len(payload)), **headers}.items():
            self.send_header(k, v.encode("ascii", "replace").decode())  # headers are latin-1 on the wire
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    # --- helpers -------------------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://{self.headers.get('Host') or self.server.hub.host_port}"

    def _json(self, body: bytes) -> dict:
        try:
            return json.loads(body or b"{}")
        except ValueError as e:
            raise HubError(400, None, f"body is not JSON: {e}") from None

    @property
    def store(self) -> HubStore:
        return self.server.hub.store

    # --- routes --------------------------------------------------------------------------------------------

    def h_resolve(self, body: bytes, id: str, rev: str, path: str, t: str = "models"):  # noqa: A002
        repo = self.store.get(id, PREFIX_TYPE[t])
        # An unencoded ref such as refs/convert/parquet spans several segments: take the longest known one.
        segments = path.split("/")
        for i in range(len(segments) - 1, 0, -1):
            if repo.has_ref("/".join([rev, *segments[:i]])):
                rev, path = "/".join([rev, *segments[:i]]), "/".join(segments[i:])
                break
        commit = repo.resolve(rev)
        commit_header = {"X-Repo-Commit": commit.oid}
        if path not in commit.files:
            raise HubError(404, "EntryNotFound", f"{path} does not exist on {rev}", commit_header)
        data = commit.files[path]
        headers = {**commit_header, "ETag": f'"{blob_oid(data)}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if "Range" in self.headers and data:
            start, end = parse_range(self.headers["Range"], len(data))
            return 206, data[start:end + 1], {**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"}
        return 200, data, headers

    def h_info(self, body: bytes, t: str, id: str, rev: str | None = None):  # noqa: A002
        repo = self.store.get(id, PREFIX_TYPE[t])
        commit = repo.resolve(rev)
        return 200, {
            "_id": hashlib.sha1(f"{repo.type}/{repo.id}".encode()).hexdigest()[:24], "id": repo.id,
            "author": repo.id.split("/")[0] if "/" in repo.id else USER, "sha": commit.oid,
            "lastModified": commit.date, "private": repo.private, "gated": False, "disabled": False,
            "downloads": 0, "likes": 0, "tags": [], "siblings": [{"rfilename": p} for p in sorted(commit.files)],
        }, {}

    def h_tree(self, body: bytes, t: str, id: str, rev: str, path: str = ""):  # noqa: A002
        commit = self.store.get(id, PREFIX_TYPE[t]).resolve(rev)
        return 200, tree_entries(commit, path, self.query.get("recursive", "false").lower() in ("1", "true")), {}

    def h_refs(self, body: bytes, t: str, id: str):  # noqa: A002
        out: dict[str, list] = {"branches": [], "tags": [], "converts": []}
        for ref, oid in sorted(self.store.get(id, PREFIX_TYPE[t]).refs.items()):
            if m := re.fullmatch(r"refs/(heads|tags|convert)/(.+)", ref):
                key = {"heads": "branches", "tags": "tags", "convert": "converts"}[m.group(1)]
                out[key].append({"name": m.group(2), "ref": ref, "targetCommit": oid})
        return 200, out, {}

    def h_branch(self, body: bytes, t: str, id: str, rev: str):  # noqa: A002
        start = self._json(body).get("startingPoint")
        self.store.create_ref(id, f"refs/heads/{rev}", start, PREFIX_TYPE[t])
        return 200, {}, {}

    def h_tag(self, body: bytes, t: str, id: str, rev: str):  # noqa: A002
        tag = self._json(body).get("tag") or ""
        if not tag:
            raise HubError(400, None, "tag name is required")
        self.store.create_ref(id, f"refs/tags/{tag}", rev, PREFIX_TYPE[t])
        return 200, {}, {}

    def h_whoami(self, body: bytes):
        return 200, {"type": "user", "id": "0" * 24, "name": USER, "fullname": "Test User", "orgs": [],
                     "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}}, {}

    def _repo_from_body(self, body: bytes) -> tuple[str, str, dict]:
        data = self._json(body)
        if not data.get("name"):
            raise HubError(400, None, "name is required")
        repo_type = data.get("type") or "model"
        if repo_type not in TYPE_PREFIX:
            raise HubError(400, None, f"invalid repo type {repo_type!r}")
        return f"{data.get('organization') or USER}/{data['name']}", repo_type, data

    def h_create_repo(self, body: bytes):
        repo_id, repo_type, data = self._repo_from_body(body)
        private = bool(data.get("private")) or data.get("visibility") == "private"
        prefix = "" if repo_type == "model" else f"{TYPE_PREFIX[repo_type]}/"
        answer = {"url": f"{self.endpoint}/{prefix}{repo_id}", "name": repo_id}
        try:
            self.store.create_repo(repo_id, repo_type, private)
        except HubError as e:
            if e.status == 409:
                return 409, {**answer, "error": e.message}, {"X-Error-Message": e.message}
            raise
        return 200, answer, {}

    def h_delete_repo(self, body: bytes):
        repo_id, repo_type, _ = self._repo_from_body(body)
        self.store.delete_repo(repo_id, repo_type)
        return 200, {}, {}

    def h_validate_yaml(self, body: bytes):
        return 200, {"errors": [], "warnings": []}, {}

    def h_preupload(self, body: bytes, t: str, id: str, rev: str):  # noqa: A002
        repo = self.store.get(id, PREFIX_TYPE[t])
        head = repo.refs.get(full_ref(rev))
        # Always "regular": any other mode routes the bytes through LFS/Xet storage, which does not run here.
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                 for f in self._json(body).get("files", [])]
        return 200, {"files": files, "commitOid": head}, {}

    def h_commit(self, body: bytes, t: str, id: str, rev: str):  # noqa: A002
        if self.query.get("create_pr") in ("1", "true"):
            raise HubError(400, None, "pull requests are not implemented by tests/hub_server.py")
        header: dict = {}
        add: dict[str, bytes] = {}
        delete: list[str] = []
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, None, f"unsupported encoding {value.get('encoding')!r}")
                add[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                delete.append(value["path"])
            elif key == "deletedFolder":
                delete.append(value["path"].rstrip("/") + "/")
            else:  # lfsFile, copies: never asked for, since preupload always answers "regular"
                raise HubError(400, None, f"commit operation {key!r} is not implemented by tests/hub_server.py")
        repo = self.store.get(id, PREFIX_TYPE[t])
        if full_ref(rev) not in repo.refs:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        oid = self.store.commit(id, add, tuple(delete), repo_type=repo.type, revision=rev,
                                summary=header.get("summary", ""), parent=header.get("parentCommit"))
        return 200, {"commitUrl": f"{self.endpoint}/{repo.url_path()}/commit/{oid}", "commitOid": oid,
                     "pullRequestUrl": None}, {}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: HubServer


class HubServer:
    """``with HubServer() as hub: ...`` serves ``hub.store`` at ``hub.url`` from a background thread."""

    def __init__(self, store: HubStore | None = None, host: str = "127.0.0.1", port: int = 0):
        self.store = store or HubStore()
        self.requests: list[tuple[str, str]] = []  # (method, raw path with query), for assertions
        self.tokens: list[str | None] = []  # the Authorization header of each request (never checked here)
        self._httpd = _Server((host, port), HubHandler)
        self._httpd.hub = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)

    @property
    def host_port(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"{host}:{port}"

    @property
    def url(self) -> str:
        return f"http://{self.host_port}"

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

"""A model hub on loopback that huggingface_hub downloads from when HF_ENDPOINT points at it.

No packaged local hub fits: hf-local-hub's wheel needs a Go server binary it does not ship,
and olah is a caching proxy of the real hub (20 unpinned dependencies) whose offline mode
serves git repositories without LFS metadata, so SHA-256 checks could not be tested.
This one serves exactly what `hf_hub_download` and `model_info(files_metadata=True)` call:

    GET  /api/models/{repo}[/revision/{rev}]       model info, siblings with size, blobId, lfs
    HEAD /{repo}/resolve/{rev}/{path}              ETag, X-Repo-Commit, sizes (X-Linked-* for LFS)
    GET  /{repo}/resolve/{rev}/{path}              the bytes, with Range (resume) support
    GET  /raw/{path}                               plain files (the RAM++ tag list's source)

Repositories are folders; their metadata is computed once when added, like a commit, so a
file altered on disk afterwards is served altered under the original checksums (a corrupt
mirror). Bytes served are counted per file, and a file can be stalled after N bytes so a
test can kill a client mid-download.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

# As upstream .gitattributes: these are stored with Git LFS (ETag = SHA-256 of the content).
LFS_SUFFIXES = (".pth", ".safetensors", ".bin", ".model", ".onnx", ".pt")
CHUNK = 64 * 1024


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class HubFile:
    path: Path  # where the bytes live (read at every request)
    size: int
    sha256: str
    blob_id: str  # git OID: of the LFS pointer for LFS files, of the content otherwise
    lfs: bool

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.blob_id


@dataclass
class HubRepo:
    repo_id: str
    commit: str
    files: dict[str, HubFile]
    branches: dict[str, str] = field(default_factory=dict)


def describe_file(path: Path, name: str) -> HubFile:
    data = path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    lfs = name.endswith(LFS_SUFFIXES)
    if lfs:
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n".encode()
        blob_id = git_blob_sha1(pointer)
    else:
        blob_id = git_blob_sha1(data)
    return HubFile(path, len(data), sha256, blob_id, lfs)


@dataclass
class Response:
    key: str
    start: int  # first byte (the Range asked for)
    sent: int = 0


class LocalHub:
    """Start with `with LocalHub() as hub:`; `hub.url` is the HF_ENDPOINT to use."""

    def __init__(self):
        self.repos: dict[str, HubRepo] = {}
        self.raw: dict[str, Path] = {}
        self.served: dict[str, int] = {}  # "repo/path" or "raw/path" → body bytes sent
        self.responses: list[Response] = []  # every body sent, in order
        self.requests: list[tuple[str, str]] = []
        self.stalls: dict[str, int] = {}  # key → stop sending after this many bytes of a response
        self.released = threading.Event()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # -- content ------------------------------------------------------------------------
    def add_repo(self, repo_id: str, folder: Path, commit: str, branch: str = "main") -> HubRepo:
        files = {p.relative_to(folder).as_posix(): describe_file(p, p.name)
                 for p in sorted(folder.rglob("*")) if p.is_file()}
        repo = HubRepo(repo_id, commit, files, {branch: commit})
        self.repos[repo_id] = repo
        return repo

    def add_raw(self, path: str, file: Path) -> str:
        self.raw[path.strip("/")] = file
        return f"{self.url}/raw/{path.strip('/')}"

    def bytes_served(self, key: str) -> int:
        with self.lock:
            return self.served.get(key, 0)

    def responses_for(self, key: str) -> list[Response]:
        with self.lock:
            return [r for r in self.responses if r.key == key]

    def stall(self, key: str, after_bytes: int) -> None:
        """Responses for key send after_bytes, then wait for release() (or the client to go)."""
        self.released.clear()
        self.stalls[key] = after_bytes

    def release(self) -> None:
        self.stalls.clear()
        self.released.set()

    # -- server -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "LocalHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()

    def _resolve(self, repo_id: str, revision: str) -> HubRepo | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            return None
        if revision == repo.commit or revision in repo.branches:
            return repo
        return None

    def _info(self, repo: HubRepo, with_blobs: bool) -> dict:
        siblings = []
        for name, f in repo.files.items():
            entry: dict = {"rfilename": name}
            if with_blobs:
                entry.update(size=f.size, blobId=f.blob_id)
                if f.lfs:
                    entry["lfs"] = {"size": f.size, "sha256": f.sha256, "pointerSize": 134}
            siblings.append(entry)
        return {"_id": repo.repo_id, "id": repo.repo_id, "modelId": repo.repo_id, "sha": repo.commit,
                "private": False, "disabled": False, "gated": False, "tags": [], "siblings": siblings}

    def _handler_class(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet: the tests read hub.requests instead
                pass

            def do_HEAD(self) -> None:
                self._route(send_body=False)

            def do_GET(self) -> None:
                self._route(send_body=True)

            def _route(self, send_body: bool) -> None:
                url = urlsplit(self.path)
                path = unquote(url.path)
                with hub.lock:
                    hub.requests.append((self.command, path))
                api = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
                if api:
                    return self._api(api.group(1), api.group(2) or "main", "blobs=" in url.query)
                resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if resolve:
                    return self._resolve_file(*resolve.groups(), send_body=send_body)
                if path.startswith("/raw/") and path[5:] in hub.raw:
                    file = hub.raw[path[5:]]
                    data = file.read_bytes()
                    return self._send_bytes(data, f"raw/{path[5:]}", {"ETag": f'"{git_blob_sha1(data)}"'},
                                            send_body, len(data))
                self._error(404, "Entry not found")

            def _api(self, repo_id: str, revision: str, with_blobs: bool) -> None:
                repo = hub._resolve(repo_id, revision)
                if repo is None:
                    code, message = (404, "Repository not found") if repo_id not in hub.repos else \
                        (404, f"Invalid rev id: {revision}")
                    return self._error(code, message, {"X-Error-Code": "RevisionNotFound"}
                                       if repo_id in hub.repos else {"X-Error-Code": "RepoNotFound"})
                body = json.dumps(hub._info(repo, with_blobs)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(body)

            def _resolve_file(self, repo_id: str, revision: str, name: str, send_body: bool) -> None:
                repo = hub._resolve(repo_id, revision)
                if repo is None:
                    return self._error(404, "Repository or revision not found",
                                       {"X-Error-Code": "RevisionNotFound" if repo_id in hub.repos else "RepoNotFound"})
                entry = repo.files.get(name)
                if entry is None:
                    return self._error(404, "Entry not found", {"X-Error-Code": "EntryNotFound",
                                                                "X-Repo-Commit": repo.commit})
                headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{entry.etag}"'}
                if entry.lfs:  # the real hub redirects these to a CDN and says their size and hash here
                    headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
                data = entry.path.read_bytes()
                self._send_bytes(data, f"{repo_id}/{name}", headers, send_body, entry.size)

            def _send_bytes(self, data: bytes, key: str, headers: dict, send_body: bool, recorded_size: int) -> None:
                start = 0
                ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
                if ranged and send_body:
                    start = int(ranged.group(1))
                    if start >= len(data):
                        return self._error(416, "Range Not Satisfiable", {"Content-Range": f"bytes */{len(data)}"})
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Accept-Ranges", "bytes")
                # HEAD says what the commit holds; GET sends what is stored now.
                self.send_header("Content-Length", str(len(data) - start if send_body else recorded_size))
                self.end_headers()
                if not send_body:
                    return
                response = Response(key, start)
                with hub.lock:
                    hub.responses.append(response)
                self._stream(data[start:], response)

            def _stream(self, body: bytes, response: Response) -> None:
                key, sent = response.key, 0
                while sent < len(body):
                    limit = hub.stalls.get(key)
                    if limit is not None and sent >= limit:
                        hub.released.wait(120)  # the client is killed meanwhile, or the test releases
                        continue
                    end = min(len(body), sent + CHUNK, limit if limit is not None else len(body))
                    try:
                        self.wfile.write(body[sent:end])
                        self.wfile.flush()
                    except (BrokenPipeError, ConnectionResetError):
                        return
                    with hub.lock:
                        hub.served[key] = hub.served.get(key, 0) + (end - sent)
                        response.sent += end - sent
                    sent = end

            def _error(self, code: int, message: str, headers: dict | None = None) -> None:
                body = json.dumps({"error": message}).encode()
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("X-Error-Message", message)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(body)

        return Handler

"""A local stand-in for the Hugging Face Hub's HTTP API, for testing pushes and downloads offline.

It serves the endpoints huggingface_hub calls to create a repo, create a branch, commit (regular files
inline, large files through the Git LFS batch API with the "basic" transfer) and download (model info,
resolve), keeps everything in memory, and records each request. Point HF_ENDPOINT at `url`. It does not
speak the Xet storage protocol, so clients must set HF_HUB_DISABLE_XET=1 (the real Hub takes LFS as well).

Hand-written because no maintained package provides a Hub server to test against; it follows the
behaviour of huggingface_hub's client, not the Hub's code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")


@dataclass
class Repo:
    private: bool
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    heads: dict[str, str] = field(default_factory=lambda: {"main": "0" * 40})
    lfs_paths: set[str] = field(default_factory=set)


class HubStandIn:
    def __init__(self, token: str):
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.commits: list[dict] = []  # {"repo", "branch", "summary", "files", "lfs_files"}
        self.unauthorized: list[str] = []  # write requests refused for a missing or wrong token
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HubStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        return self.repos[repo_id].branches[branch]

    # -- request handling --------------------------------------------------------------------------------

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                hub._dispatch(self, "GET")

            def do_HEAD(self):
                hub._dispatch(self, "HEAD")

            def do_POST(self):
                hub._dispatch(self, "POST")

            def do_PUT(self):
                hub._dispatch(self, "PUT")

        return Handler

    def _dispatch(self, req, method: str) -> None:
        path = unquote(urlsplit(req.path).path)
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        self.requests.append((method, path))
        req.head_only = method == "HEAD"
        authorized = req.headers.get("Authorization") == f"Bearer {self.token}"
        parts = path.strip("/").split("/")
        try:
            if method == "POST" and path == "/api/validate-yaml":
                return self._json(req, 200, {"errors": [], "warnings": []})
            if method == "POST" and path == "/api/repos/create":
                return self._create_repo(req, json.loads(body), authorized)
            if method == "PUT" and parts[0] == "lfs-upload":
                return self._lfs_put(req, parts[1], body)
            if method == "POST" and parts[0] == "lfs-verify":
                oid = json.loads(body)["oid"]
                return self._json(req, 200 if oid in self.lfs else 404, {})
            if method == "POST" and path.endswith(".git/info/lfs/objects/batch"):
                repo_id = path.strip("/").removesuffix(".git/info/lfs/objects/batch")
                return self._lfs_batch(req, repo_id, json.loads(body), authorized)
            if parts[:2] == ["api", "models"]:
                return self._api_models(req, method, parts[2:], body, authorized)
            if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
                return self._resolve(req, method, "/".join(parts[:2]), parts[3], "/".join(parts[4:]), authorized)
            return self._error(req, 404, "EntryNotFound", f"no route for {method} {path}")
        except (KeyError, ValueError) as err:
            return self._error(req, 400, None, f"bad request: {err}")

    def _api_models(self, req, method, rest, body, authorized):
        repo_id, action = "/".join(rest[:2]), rest[2:]
        repo = self._readable(req, repo_id, authorized)
        if repo is None:
            return None
        if method == "POST" and action and action[0] in ("preupload", "commit", "branch"):
            if not authorized:
                self.unauthorized.append(repo_id)
                return self._error(req, 401, None, "Invalid credentials in Authorization header")
            branch = "/".join(action[1:])
            if action[0] == "branch":
                if branch in repo.branches:
                    return self._error(req, 409, None, "Reference already exists")
                repo.branches[branch] = dict(repo.branches["main"])
                repo.heads[branch] = repo.heads["main"]
                return self._json(req, 200, {})
            if branch not in repo.branches:
                return self._error(req, 404, "RevisionNotFound", f"Invalid rev id: {branch}")
            if action[0] == "preupload":
                return self._preupload(req, json.loads(body))
            return self._commit(req, repo_id, repo, branch, body)
        if method == "GET" and action and action[0] == "tree":
            recursive = "recursive=true" in urlsplit(req.path).query
            return self._tree(req, repo, action[1], "/".join(action[2:]), recursive)
        if method == "GET" and (not action or action[0] == "revision"):
            branch = "/".join(action[1:]) or "main"
            if branch not in repo.branches:
                return self._error(req, 404, "RevisionNotFound", f"Invalid rev id: {branch}")
            siblings = [{"rfilename": name} for name in sorted(repo.branches[branch])]
            info = {
                "id": repo_id,
                "modelId": repo_id,
                "sha": repo.heads[branch],
                "private": repo.private,
                "siblings": siblings,
                "tags": [],
                "downloads": 0,
                "likes": 0,
            }
            return self._json(req, 200, info)
        return self._error(req, 404, "EntryNotFound", f"not served here: {method} /api/models/{'/'.join(rest)}")

    def _tree(self, req, repo, revision, folder, recursive=False):
        # a branch, or a commit id as snapshot_download asks for the one it resolved (the head of a branch here)
        branch = next((b for b, head in repo.heads.items() if head == revision), revision)
        files = repo.branches.get(branch)
        if files is None:
            return self._error(req, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
        prefix = f"{folder.rstrip('/')}/" if folder else ""
        entries = {}
        for name, content in files.items():
            if name.startswith(prefix):
                head, sep, _ = name[len(prefix) :].partition("/")
                if sep and not recursive:
                    entries[prefix + head] = {"type": "directory", "path": prefix + head, "oid": "0" * 40, "size": 0}
                else:
                    oid = hashlib.sha1(content).hexdigest()
                    entries[name] = {"type": "file", "path": name, "oid": oid, "size": len(content)}
        if folder and not entries:
            return self._error(req, 404, "EntryNotFound", f"{folder} does not exist on {revision}")
        return self._json(req, 200, [entries[k] for k in sorted(entries)])

    def _readable(self, req, repo_id, authorized):
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and not authorized):
            self._error(req, 401 if not authorized else 404, "RepoNotFound", f"Repository not found: {repo_id}")
            return None
        return repo

    def _create_repo(self, req, payload, authorized):
        if not authorized:
            self.unauthorized.append(str(payload.get("name")))
            return self._error(req, 401, None, "Invalid credentials in Authorization header")
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        url = f"{self.url}/{repo_id}"
        if repo_id in self.repos:
            return self._json(req, 409, {"error": "You already created this model repo", "url": url})
        self.repos[repo_id] = Repo(private=payload.get("visibility") == "private" or bool(payload.get("private")))
        return self._json(req, 200, {"url": url, "name": repo_id})

    def _preupload(self, req, payload):
        files = []
        for f in payload["files"]:
            lfs = f["path"].endswith(LFS_SUFFIXES) or "tfevents" in f["path"] or f["size"] >= 10 * 1024 * 1024
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False})
        return self._json(req, 200, {"files": files, "commitOid": "0" * 40})

    def _lfs_batch(self, req, repo_id, payload, authorized):
        if not authorized:
            self.unauthorized.append(repo_id)
            return self._error(req, 401, None, "Invalid credentials in Authorization header")
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.lfs:
                entry["actions"] = {
                    "upload": {"href": f"{self.url}/lfs-upload/{obj['oid']}"},
                    "verify": {"href": f"{self.url}/lfs-verify"},
                }
            objects.append(entry)
        return self._json(req, 200, {"transfer": "basic", "objects": objects})

    def _lfs_put(self, req, oid, body):
        if hashlib.sha256(body).hexdigest() != oid:
            return self._error(req, 400, None, "content does not match its oid")
        self.lfs[oid] = body
        return self._json(req, 200, {})

    def _commit(self, req, repo_id, repo, branch, body):
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = lines[0]["value"]
        files = dict(repo.branches[branch])
        added, lfs_added = [], []
        for item in lines[1:]:
            key, value = item["key"], item["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
                added.append(value["path"])
            elif key == "lfsFile":
                if value["oid"] not in self.lfs:
                    return self._error(req, 400, None, f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = self.lfs[value["oid"]]
                repo.lfs_paths.add(value["path"])
                lfs_added.append(value["path"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
        sha = hashlib.sha1(json.dumps([repo.heads[branch], header, sorted(files)]).encode()).hexdigest()
        repo.branches[branch], repo.heads[branch] = files, sha
        self.commits.append(
            {"repo": repo_id, "branch": branch, "summary": header["summary"], "files": added, "lfs_files": lfs_added}
        )
        return self._json(
            req, 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None}
        )

    def _resolve(self, req, method, repo_id, revision, filename, authorized):
        repo = self._readable(req, repo_id, authorized)
        if repo is None:
            return None
        branch = next((b for b, sha in repo.heads.items() if revision in (b, sha)), None)
        if branch is None:
            return self._error(req, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
        content = repo.branches[branch].get(filename)
        if content is None:
            return self._error(req, 404, "EntryNotFound", f"{filename} does not exist on {revision}")
        etag = hashlib.sha256(content).hexdigest() if filename in repo.lfs_paths else hashlib.sha1(content).hexdigest()
        headers = {"X-Repo-Commit": repo.heads[branch], "ETag": f'"{etag}"'}
        return self._send(req, 200, content, "application/octet-stream", headers)

    # -- responses -----------------------------------------------------------------------------------------

    def _json(self, req, status, payload):
        return self._send(req, status, json.dumps(payload).encode(), "application/json")

    def _error(self, req, status, code, message):
        return self._send(
            req,
            status,
            json.dumps({"error": message}).encode(),
            "application/json",
            {"X-Error-Code": code, "X-Error-Message": message} if code else {"X-Error-Message": message},
        )

    def _send(self, req, status, body, content_type, headers=None):
        req.send_response(status)
        req.send_header("Content-Type", content_type)
        req.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            req.send_header(key, value)
        req.end_headers()
        if not req.head_only:
            req.wfile.write(body)


def run_card_code(card: str, env: dict) -> subprocess.CompletedProcess:
    """What a Hub user does with a model card: run its Python blocks, as written, in a fresh process."""
    code = "\n".join(re.findall(r"```python\n(.*?)```", card, flags=re.S))
    assert code, "the card has no Python block"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, cwd="/")

"""A loopback HTTP server speaking the part of the Hugging Face Hub protocol that file downloads
(``hf_hub_download``) and commits (``create_repo``, model-card validation, ``create_commit`` with
regular uploads) use.

The real ``huggingface_hub`` client talks to it when ``HF_ENDPOINT`` points here. Repositories live
in memory: ``{repo_id: {"refs": {branch or tag: commit}, "commits": {commit: {path: bytes}}}}``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml


class FakeHub:
    """The server and its repositories; ``url`` is the ``HF_ENDPOINT`` to use."""

    def __init__(self, token: str = "hf_loopback_test_token") -> None:
        self.token = token
        self.repos: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.cards: list[str] = []  # model cards sent for validation
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------ repository state
    def commit(self, repo_id: str, files: dict[str, bytes], ref: str = "main", parent: str | None = None) -> str:
        """Commit ``files`` (added to the parent's files) on ``ref``; return the 40-hex commit id."""
        with self._lock:
            repo = self.repos.setdefault(repo_id, {"refs": {}, "commits": {}})
            base = repo["commits"].get(parent or repo["refs"].get(ref, ""), {})
            tree = {**base, **files}
            digest = hashlib.sha1(json.dumps({k: hashlib.sha256(v).hexdigest() for k, v in sorted(tree.items())})
                                  .encode() + str(len(repo["commits"])).encode()).hexdigest()
            repo["commits"][digest] = tree
            repo["refs"][ref] = digest
            return digest

    def files(self, repo_id: str, ref: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo["commits"][repo["refs"][ref]]

    def _resolve(self, repo_id: str, revision: str) -> tuple[str | None, str | None]:
        """(commit, error code) for a repository and a branch, tag or commit id."""
        repo = self.repos.get(repo_id)
        if repo is None:
            return None, "RepoNotFound"
        if revision in repo["commits"]:
            return revision, None
        if revision in repo["refs"]:
            return repo["refs"][revision], None
        return None, "RevisionNotFound"


def _handler_for(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        # -------------------------------------------------------------- plumbing
        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                  content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, code: str | None, message: str) -> None:
            headers = {"X-Error-Message": message}
            if code:
                headers["X-Error-Code"] = code
            self._send(status, json.dumps({"error": message}).encode(), headers)

        def _json(self, payload: Any, status: int = 200) -> None:
            self._send(status, json.dumps(payload).encode())

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def _authorised(self) -> bool:
            if self.headers.get("Authorization") == f"Bearer {hub.token}":
                return True
            self._error(401, None, "Invalid credentials in Authorization header")
            return False

        # -------------------------------------------------------------- routes
        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            hub.requests.append((self.command, path))
            parts = [unquote(p) for p in path.strip("/").split("/")]
            if len(parts) >= 5 and parts[2] == "resolve":  # /{org}/{name}/resolve/{revision}/{file}
                self._resolve_file("/".join(parts[:2]), parts[3], "/".join(parts[4:]))
            elif len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] == "revision":
                self._model_info("/".join(parts[2:4]), "/".join(parts[5:]))
            else:
                self._error(404, None, f"no route {path}")

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            hub.requests.append((self.command, path))
            parts = [unquote(p) for p in path.strip("/").split("/")]
            body = self._body()
            if not self._authorised():
                return
            if parts == ["api", "repos", "create"]:
                payload = json.loads(body)
                repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
                if repo_id in hub.repos:
                    self._error(409, None, "You already created this model repo")
                    return
                hub.commit(repo_id, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"})
                self._json({"url": f"{hub.url}/{repo_id}", "name": repo_id})
            elif parts == ["api", "validate-yaml"]:  # the README.md front matter of a commit
                self._validate_card(json.loads(body)["content"])
            elif len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] == "preupload":
                files = json.loads(body)["files"]
                self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                      for f in files]})
            elif len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] == "commit":
                self._commit("/".join(parts[2:4]), "/".join(parts[5:]), body)
            else:
                self._error(404, None, f"no route {path}")

        def _validate_card(self, content: str) -> None:
            errors = []
            if not content.startswith("---\n") or "\n---\n" not in content[4:]:
                errors.append("README.md has no YAML front matter")
            else:
                try:
                    meta = yaml.safe_load(content[4 : content.index("\n---\n", 4)])
                except yaml.YAMLError as exc:
                    meta, errors = None, [f"invalid YAML: {exc}"]
                if not errors and not (isinstance(meta, dict) and isinstance(meta.get("tags", []), list)):
                    errors.append("front matter must be a mapping with a list of tags")
            hub.cards.append(content)
            self._json({"errors": [{"message": e} for e in errors], "warnings": []}, 400 if errors else 200)

        def _resolve_file(self, repo_id: str, revision: str, filename: str) -> None:
            commit, code = hub._resolve(repo_id, revision)
            if commit is None:
                self._error(404, code, f"{code} {repo_id}@{revision}")
                return
            files = hub.repos[repo_id]["commits"][commit]
            if filename not in files:
                self._error(404, "EntryNotFound", f"{filename} not in {repo_id}@{revision}")
                return
            data = files[filename]
            headers = {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
            self._send(200, data, headers, content_type="application/octet-stream")

        def _model_info(self, repo_id: str, revision: str) -> None:
            commit, code = hub._resolve(repo_id, revision)
            if commit is None:
                self._error(404, code, f"{code} {repo_id}@{revision}")
                return
            siblings = [{"rfilename": name} for name in sorted(hub.repos[repo_id]["commits"][commit])]
            self._json({"id": repo_id, "modelId": repo_id, "sha": commit, "siblings": siblings, "private": False})

        def _commit(self, repo_id: str, revision: str, body: bytes) -> None:
            commit, code = hub._resolve(repo_id, revision)
            if commit is None:
                self._error(404, code, f"{code} {repo_id}@{revision}")
                return
            files: dict[str, bytes] = {}
            for line in body.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    assert item["value"]["encoding"] == "base64"
                    files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] != "header":
                    self._error(400, None, f"unsupported commit operation {item['key']}")
                    return
            new = hub.commit(repo_id, files, ref=revision)
            self._json({"commitUrl": f"{hub.url}/{repo_id}/commit/{new}", "commitOid": new, "pullRequestUrl": None})

    return Handler

"""A loopback Hugging Face Hub for tests: the few endpoints `create_repo`, `upload_folder` and `from_pretrained` use,
in memory. One user (`test-user`, token `hf_test_token`); the namespace `forbidden-org` is refused (403).

Every commit is recorded (`server.commits`), so a test can check what one push sent and that it was one commit.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

USER, TOKEN, REFUSED_NAMESPACE = "test-user", "hf_test_token", "forbidden-org"


@dataclass
class Repository:
    files: dict[str, bytes] = field(default_factory=dict)
    sha: str = "0" * 40


@dataclass
class Commit:
    repo_id: str
    summary: str
    files: dict[str, bytes]


class HubState:
    def __init__(self):
        self.repos: dict[str, Repository] = {}
        self.commits: list[Commit] = []
        self.requests: list[str] = []
        self.lock = threading.Lock()
        #: Failure to inject into commits: None, an HTTP status (e.g. 500), "drop" (close the connection unanswered)
        #: or "drop-after" (apply the commit, then close the connection unanswered: the answer is lost).
        self.fail_commits: int | str | None = None

    def commit(self, repo_id: str, summary: str, files: dict[str, bytes]) -> str:
        with self.lock:
            repo = self.repos.setdefault(repo_id, Repository())
            repo.files.update(files)
            digest = hashlib.sha1(repo.sha.encode())  # the new commit id follows from the parent and the files
            for path in sorted(files):
                digest.update(path.encode() + files[path])
            repo.sha = digest.hexdigest()
            self.commits.append(Commit(repo_id, summary, dict(files)))
            return repo.sha


def _handler(state: HubState, endpoint: list[str]):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _reply(self, status: int, body=b"", headers: dict | None = None, send_body: bool = True):
            payload = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
            self.send_response(status)
            content_type = "application/json" if isinstance(body, (dict, list)) else "application/octet-stream"
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if send_body:
                self.wfile.write(payload)

        def _authorized(self) -> bool:
            return self.headers.get("Authorization", "") == f"Bearer {TOKEN}"

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _not_allowed(self, repo_id: str) -> bool:
            if not self._authorized():
                self._reply(401, {"error": "Invalid credentials in Authorization header"})
                return True
            if repo_id.split("/")[0] == REFUSED_NAMESPACE:
                self._reply(403, {"error": f"You don't have the rights to create a model under '{REFUSED_NAMESPACE}'"})
                return True
            return False

        def _requested_repo(self, body: bytes) -> str | None:
            """The repository a create / delete request names, or None when it was refused (already answered)."""
            request = json.loads(body or b"{}")
            repo_id = f"{request.get('organization') or USER}/{request['name']}"
            return None if self._not_allowed(repo_id) else repo_id

        def do_GET(self):  # noqa: N802
            self._read(send_body=True)

        def do_HEAD(self):  # noqa: N802
            self._read(send_body=False)

        def _read(self, send_body: bool):
            path = self.path.split("?")[0]
            state.requests.append(f"{self.command} {path}")
            if path == "/api/whoami-v2":
                if not self._authorized():
                    return self._reply(401, {"error": "Invalid credentials"}, send_body=send_body)
                return self._reply(200, {"type": "user", "name": USER, "orgs": [],
                                         "auth": {"accessToken": {"role": "write"}}}, send_body=send_body)  # fmt: skip
            if path.startswith("/api/models/"):
                parts = path[len("/api/models/") :].split("/")
                repo = state.repos.get("/".join(parts[:2]))
                if repo is None:
                    return self._reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepositoryNotFound"},
                                       send_body)  # fmt: skip
                info = {"id": "/".join(parts[:2]), "modelId": "/".join(parts[:2]), "sha": repo.sha, "private": False,
                        "siblings": [{"rfilename": name} for name in sorted(repo.files)]}  # fmt: skip
                return self._reply(200, info, send_body=send_body)
            if "/resolve/" in path:
                repo_id, _, rest = path.lstrip("/").partition("/resolve/")
                filename = rest.partition("/")[2]
                repo = state.repos.get(repo_id)
                if repo is None:
                    return self._reply(404, b"", {"X-Error-Code": "RepositoryNotFound"}, send_body)
                if filename not in repo.files:
                    return self._reply(
                        404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.sha}, send_body
                    )
                content = repo.files[filename]
                etag = f'"{hashlib.sha256(content).hexdigest()}"'
                return self._reply(200, content, {"X-Repo-Commit": repo.sha, "ETag": etag}, send_body)
            self._reply(404, {"error": f"not served by the test hub: {path}"}, send_body=send_body)

        def do_POST(self):  # noqa: N802
            path, body = self.path.split("?")[0], self._body()
            state.requests.append(f"POST {path}")
            if path == "/api/validate-yaml":
                return self._reply(200, {"errors": [], "warnings": []})
            if path == "/api/repos/create":
                repo_id = self._requested_repo(body)
                if repo_id is None:
                    return None
                with state.lock:
                    if repo_id in state.repos:  # as the Hub: 409 for an existing repository
                        return self._reply(409, {"error": "You already created this model repo", "url":
                                                 f"{endpoint[0]}/{repo_id}"})  # fmt: skip
                    state.repos[repo_id] = Repository()
                return self._reply(200, {"url": f"{endpoint[0]}/{repo_id}", "name": repo_id})
            if path.startswith("/api/models/") and "/preupload/" in path:
                repo_id = path[len("/api/models/") :].partition("/preupload/")[0]
                if self._not_allowed(repo_id):
                    return None
                files = json.loads(body)["files"]
                return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                   for f in files]})  # fmt: skip
            if path.startswith("/api/models/") and "/commit/" in path:
                repo_id = path[len("/api/models/") :].partition("/commit/")[0]
                if self._not_allowed(repo_id):
                    return None
                if state.fail_commits == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return None
                if isinstance(state.fail_commits, int):
                    return self._reply(state.fail_commits, {"error": "Internal Error - We're working hard to fix this"})
                summary, files = "", {}
                for line in body.decode().splitlines():
                    entry = json.loads(line)
                    if entry["key"] == "header":
                        summary = entry["value"].get("summary", "")
                    elif entry["key"] == "file":
                        files[entry["value"]["path"]] = base64.b64decode(entry["value"]["content"])
                sha = state.commit(repo_id, summary, files)
                if state.fail_commits == "drop-after":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return None
                return self._reply(200, {"commitUrl": f"{endpoint[0]}/{repo_id}/commit/{sha}", "commitOid": sha,
                                         "pullRequestUrl": None})  # fmt: skip
            self._reply(404, {"error": f"not served by the test hub: {path}"})

        def do_DELETE(self):  # noqa: N802
            path, body = self.path.split("?")[0], self._body()
            state.requests.append(f"DELETE {path}")
            if path == "/api/repos/delete":
                repo_id = self._requested_repo(body)
                if repo_id is None:
                    return None
                with state.lock:
                    if state.repos.pop(repo_id, None) is None:
                        return self._reply(404, {"error": "Repository not found"})
                return self._reply(200, {})
            self._reply(404, {"error": f"not served by the test hub: {path}"})

    return Handler


class LoopbackHub:
    """`with LoopbackHub() as hub:` a server on 127.0.0.1 at `hub.endpoint`, its state in `hub.state`."""

    def __init__(self):
        self.state = HubState()
        self._endpoint = [""]
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state, self._endpoint))
        self.endpoint = self._endpoint[0] = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

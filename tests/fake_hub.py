"""A local stand-in for the few Hugging Face Hub endpoints that `create_repo`, `upload_folder`
and `snapshot_download` call, on 127.0.0.1 (an `http.server` in a thread; no network).

Point huggingface_hub at it with `HF_ENDPOINT` (and `huggingface_hub.constants.ENDPOINT` in a
process that already imported it). LFS uploads use the classic LFS batch protocol ("basic"
transfer: one PUT per file), so set `HF_HUB_DISABLE_XET=1`: the Xet storage protocol that
huggingface_hub prefers when `hf_xet` is installed is not implemented here.

Endpoints:
  POST /api/repos/create                          {name, organization, visibility} -> {url} | 409
  POST /api/validate-yaml                         -> {} (README metadata accepted)
  POST /api/models/{repo}/preupload/{rev}         -> uploadMode lfs for *.safetensors, else regular
  POST /{repo}.git/info/lfs/objects/batch         -> a PUT href per object
  PUT  /lfs-objects/{repo}/{oid}                  stores the bytes (sha256 checked)
  POST /api/models/{repo}/commit/{rev}            ndjson: header, file (base64), lfsFile -> commit
  GET  /api/models/{repo}[/revision/{rev}]        repo info (sha, siblings)
  GET  /api/models/{repo}/tree/{rev}[/path]       file listing
  HEAD/GET /{repo}/resolve/{rev}/{path}           file download
Write endpoints require `Authorization: Bearer <token>` equal to the server's token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    def __init__(self, token: str, user: str = "tester") -> None:
        self.token = token
        self.user = user
        self.repos: dict[str, dict] = {}  # repo_id -> {"private": bool, "files": {path: bytes}, "sha": str}
        self.lfs: dict[str, bytes] = {}  # sha256 -> bytes
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.auth_headers: list[str] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------------------------
    def _handler_class(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            # -- helpers --------------------------------------------------------------------
            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _send(self, status: int, payload=None, headers: dict | None = None, raw: bytes | None = None,
                      head: bool = False) -> None:
                body = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else b"")
                self.send_response(status)
                if raw is None:
                    self.send_header("Content-Type", "application/json")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _authorised(self) -> bool:
                auth = self.headers.get("Authorization", "")
                hub.auth_headers.append(auth)
                if auth != f"Bearer {hub.token}":
                    self._send(401, {"error": "Invalid credentials in Authorization header"})
                    return False
                return True

            def _record(self) -> str:
                path = unquote(urlparse(self.path).path)
                hub.requests.append((self.command, path))
                return path

            def _fail(self, message: str) -> None:
                hub.errors.append(message)
                self._send(400, {"error": message})

            # -- verbs -------------------------------------------------------------------------
            def do_POST(self):
                path = self._record()
                body = self._body()
                if path == "/api/repos/create":
                    if not self._authorised():
                        return
                    data = json.loads(body)
                    repo_id = f"{data.get('organization') or hub.user}/{data['name']}"
                    with hub._lock:
                        if repo_id in hub.repos:
                            return self._send(409, {"error": "You already created this model repo", "url": f"{hub.endpoint}/{repo_id}"})
                        hub.repos[repo_id] = {"private": data.get("visibility") == "private", "files": {},
                                              "sha": "0" * 40}
                    return self._send(200, {"url": f"{hub.endpoint}/{repo_id}", "name": repo_id})
                if path == "/api/validate-yaml":
                    return self._send(200, {})
                m = re.fullmatch(r"/api/models/(.+?)/(preupload|commit)/([^/]+)", path)
                if m:
                    if not self._authorised():
                        return
                    repo_id, what = m.group(1), m.group(2)
                    if repo_id not in hub.repos:
                        return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                    if what == "preupload":
                        files = json.loads(body)["files"]
                        return self._send(200, {"files": [
                            {"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(".safetensors") else "regular",
                             "shouldIgnore": False, "oid": None}
                            for f in files
                        ]})
                    return self._commit(repo_id, body)
                m = re.fullmatch(r"/(.+?)\.git/info/lfs/objects/batch", path)
                if m:
                    if not self._authorised():
                        return
                    repo_id = m.group(1)
                    objects = json.loads(body)["objects"]
                    return self._send(200, {"transfer": "basic", "objects": [
                        {"oid": o["oid"], "size": o["size"], "authenticated": True,
                         "actions": {"upload": {"href": f"{hub.endpoint}/lfs-objects/{repo_id}/{o['oid']}"}}}
                        for o in objects
                    ]})
                return self._send(404, {"error": f"no such endpoint POST {path}"})

            def _commit(self, repo_id: str, body: bytes):
                lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                if not lines or lines[0].get("key") != "header":
                    return self._fail("commit payload must start with a header line")
                new_files = {}
                for item in lines[1:]:
                    value = item["value"]
                    if item["key"] == "file":
                        new_files[value["path"]] = base64.b64decode(value["content"])
                    elif item["key"] == "lfsFile":
                        data = hub.lfs.get(value["oid"])
                        if data is None or len(data) != value["size"]:
                            return self._fail(f"LFS object {value['oid']} of {value['path']} was not uploaded")
                        new_files[value["path"]] = data
                    else:
                        return self._fail(f"unsupported commit operation {item['key']}")
                with hub._lock:
                    repo = hub.repos[repo_id]
                    repo["files"].update(new_files)
                    sha = hashlib.sha1(repr(sorted((p, hashlib.sha256(d).hexdigest()) for p, d in repo["files"].items())).encode()).hexdigest()
                    repo["sha"] = sha
                return self._send(200, {"commitUrl": f"{hub.endpoint}/{repo_id}/commit/{sha}", "commitOid": sha,
                                        "success": True})

            def do_PUT(self):
                path = self._record()
                m = re.fullmatch(r"/lfs-objects/(.+)/([0-9a-f]{64})", path)
                if not m:
                    return self._send(404, {"error": f"no such endpoint PUT {path}"})
                data = self._body()
                if hashlib.sha256(data).hexdigest() != m.group(2):
                    return self._fail("LFS upload does not match its sha256")
                hub.lfs[m.group(2)] = data
                return self._send(200, {})

            def _entries(self, repo: dict) -> list[dict]:
                out = []
                for p, data in sorted(repo["files"].items()):
                    entry = {"type": "file", "path": p, "size": len(data), "oid": _git_blob_sha1(data)}
                    if p.endswith(".safetensors"):
                        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                    out.append(entry)
                return out

            def _get(self, head: bool):
                path = self._record()
                m = re.fullmatch(r"/api/models/(.+?)(?:/revision/([^/]+))?", path)
                if m and "/tree/" not in path and m.group(1) in hub.repos:
                    repo = hub.repos[m.group(1)]
                    return self._send(200, {"id": m.group(1), "modelId": m.group(1), "sha": repo["sha"],
                                            "private": repo["private"],
                                            "siblings": [{"rfilename": p} for p in sorted(repo["files"])]}, head=head)
                m = re.fullmatch(r"/api/models/(.+?)/tree/([^/]+)(?:/(.*))?", path)
                if m and m.group(1) in hub.repos:
                    return self._send(200, self._entries(hub.repos[m.group(1)]), head=head)
                m = re.fullmatch(r"/(.+?)/resolve/([^/]+)/(.+)", path)
                if m and m.group(1) in hub.repos and m.group(3) in hub.repos[m.group(1)]["files"]:
                    repo = hub.repos[m.group(1)]
                    data = repo["files"][m.group(3)]
                    etag = hashlib.sha256(data).hexdigest() if m.group(3).endswith(".safetensors") else _git_blob_sha1(data)
                    headers = {"X-Repo-Commit": repo["sha"], "ETag": f'"{etag}"', "Content-Type": "application/octet-stream"}
                    return self._send(200, raw=data, headers=headers, head=head)
                return self._send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"}, head=head)

            def do_GET(self):
                self._get(head=False)

            def do_HEAD(self):
                self._get(head=True)

        return Handler

"""Checkpoint downloads (hg_lmm.utils.downloads, scripts/download_checkpoints.py) against a local
HTTP server on 127.0.0.1 that serves byte ranges and can cut a response short."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import runpy
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from hg_lmm.utils import downloads
from hg_lmm.utils.downloads import Artifact, DownloadError
from tests.conftest import REPO

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, every byte value
CLI = str(REPO / "scripts" / "download_checkpoints.py")


class _Server(http.server.ThreadingHTTPServer):
    files: dict[str, bytes]
    cut_next: set[str]  # paths whose next GET stops half-way (a dropped connection)
    requests: list[tuple[str, str | None]]  # (path, Range header)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get("Range")))
        data = self.server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match:
            start = int(match[1])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        body = data[start:]
        if self.path in self.server.cut_next:
            self.server.cut_next.discard(self.path)
            body = body[: len(body) // 2]
            self.close_connection = True
        self.wfile.write(body)


@pytest.fixture()
def server(monkeypatch) -> Iterator[_Server]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.files, srv.cut_next, srv.requests = {}, set(), []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=10)


def _base(srv: _Server) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}/mirror"


def _artifact(**fields) -> Artifact:
    return Artifact(name="head", filename="head.pth", description="a head", **fields)


def test_table_uses_the_names_the_configs_expect() -> None:
    names = [a.filename for a in downloads.ARTIFACTS]
    assert len(set(names)) == len(names)
    ids = {a.name: a.gdrive_id for a in downloads.ARTIFACTS if a.gdrive_id}
    # HG-LMM's three HG heads, F-LMM's ten U-Net+SAM heads.
    assert ids["hg_deepseek_vl_1_3b"] == "1kDZnM1UREePvdfnPB5RoC0e4FNxxuaWH"
    assert ids["hg_deepseek_vl_7b"] == "15X73eHgj25g6SzvHPM0P3JSdGMQIKPIr"
    assert ids["hg_llava_1_5_7b"] == "1k5Jp3iEoxKMASBI2vm1jPaV8uHTEwL6w"
    assert ids["deepseek_vl_1_3b"] == "1UXcjJrrpTm1bNphvPNjvol9gUfvzNbjA"
    assert ids["hpt_air"] == "1_gU4olEjsYvBvcq6yWGklSxNAv-Yz44T"
    assert ids["hpt_air_1_5"] == "1Q-asMx7C3onXnmxqEZzecMHHCccqkzaP"
    assert len(ids) == 13
    for item in downloads.ARTIFACTS:
        assert item.source().startswith("https://")
        if item.config:  # a head checkpoint keeps the name of the config it belongs to
            assert item.filename == Path(item.config).stem + ".pth"
            assert ("unet_sam" in item.config) != item.name.startswith("hg_")
            # Supported exactly when its config is here: adding a config updates the table.
            assert (REPO / item.config).is_file() == (item.unsupported is None), item.name
    default = {a.name for a in downloads.artifacts()}
    assert {"hg_deepseek_vl_1_3b", "hg_deepseek_vl_7b", "hg_llava_1_5_7b", "sam_vit_l"} <= default
    assert not {"hpt_air", "hpt_air_1_5"} & default
    assert {"mgm_gemma_2b", "mgm_vicuna_7b", "mgm_vicuna_7b_hd"} <= default
    sam = next(a for a in downloads.ARTIFACTS if a.name == "sam_vit_l")
    head_base = (REPO / "configs/_base_/models/unet_sam_l_head.py").read_text()
    assert f'"checkpoints/{sam.filename}"' in head_base
    for model in downloads.HUB_MODELS:  # the LMM, or one of MGM's two towers
        text = (REPO / model.config).read_text()
        assert any(
            f'{k} = "{model.repo_id}"' in text for k in ("model_path", "clip_path", "convnext_path")
        )


def test_unsupported_checkpoints_are_refused_with_the_reason(tmp_path, capsys) -> None:
    with pytest.raises(downloads.UnsupportedError, match="hpt_air .*trust_remote_code"):
        downloads.artifacts(["sam_vit_l", "hpt_air"])
    hpt = next(a for a in downloads.ARTIFACTS if a.name == "hpt_air")
    with pytest.raises(downloads.UnsupportedError):
        downloads.download(hpt, tmp_path)
    with pytest.raises(SystemExit) as error:
        _cli(["hpt_air_1_5", "--dir", str(tmp_path)])
    assert error.value.code == 2
    assert "trust_remote_code" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing fetched


def test_download_from_a_mirror(server, tmp_path, capfd) -> None:
    server.files["/mirror/head.pth"] = PAYLOAD
    path = downloads.download(_artifact(), tmp_path, base_url=_base(server))
    assert path == tmp_path / "head.pth" and path.read_bytes() == PAYLOAD
    assert not list((tmp_path / downloads.PARTIAL_DIR).iterdir())  # nothing left behind
    assert "100%" in capfd.readouterr().err  # gdown's progress bar
    assert downloads.status(_artifact(), tmp_path).startswith("present, 1.0 MB")
    # Present and checking out: no second transfer.
    server.requests.clear()
    assert downloads.download(_artifact(), tmp_path, base_url=_base(server)) == path
    assert server.requests == []


def test_an_interrupted_download_resumes_where_it_stopped(server, tmp_path) -> None:
    server.files["/mirror/head.pth"] = PAYLOAD
    server.cut_next.add("/mirror/head.pth")
    with pytest.raises(DownloadError, match="is kept, run again to resume"):
        downloads.download(_artifact(), tmp_path, base_url=_base(server), retries=0, quiet=True)
    assert not (tmp_path / "head.pth").exists()  # never under the final name while partial
    (partial,) = downloads.partial_files(_artifact(), tmp_path)
    kept = partial.stat().st_size
    assert 0 < kept < len(PAYLOAD)
    assert downloads.status(_artifact(), tmp_path).startswith("partial")

    path = downloads.download(_artifact(), tmp_path, base_url=_base(server), quiet=True)
    assert path.read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/mirror/head.pth", f"bytes={kept}-")  # only the rest
    assert downloads.partial_files(_artifact(), tmp_path) == []


def test_retries_resume_within_one_call(server, tmp_path) -> None:
    server.files["/mirror/head.pth"] = PAYLOAD
    server.cut_next.add("/mirror/head.pth")
    path = downloads.download(_artifact(), tmp_path, base_url=_base(server), retries=2, quiet=True)
    assert path.read_bytes() == PAYLOAD
    assert [r for _, r in server.requests][0] is None
    assert server.requests[-1][1] is not None and server.requests[-1][1].startswith("bytes=")


def test_size_and_sha256_are_checked_when_known(server, tmp_path) -> None:
    server.files["/mirror/head.pth"] = PAYLOAD
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    good = _artifact(size=len(PAYLOAD), sha256=digest)
    for wrong, message in (
        (replace(good, size=len(PAYLOAD) + 1), r"has 1,048,576 bytes, but head has 1,048,577"),
        (replace(good, sha256="0" * 64), f"has SHA-256 {digest}, but head has 0000"),
    ):
        with pytest.raises(DownloadError, match=message):
            downloads.download(wrong, tmp_path, base_url=_base(server), quiet=True)
        assert not (tmp_path / "head.pth").exists()
        assert not list((tmp_path / downloads.PARTIAL_DIR).iterdir())  # the bad file is gone
    assert downloads.download(good, tmp_path, base_url=_base(server), quiet=True).is_file()
    # A file already under the name but of the wrong size is reported, not trusted.
    (tmp_path / "head.pth").write_bytes(b"short")
    with pytest.raises(DownloadError, match="delete it first"):
        downloads.download(good, tmp_path, base_url=_base(server), quiet=True)
    assert downloads.status(good, tmp_path).startswith("WRONG SIZE")


def test_a_missing_file_on_the_server_is_a_clear_error(server, tmp_path) -> None:
    with pytest.raises(
        DownloadError,
        match=r"downloading head from http://127\.0\.0\.1:\d+/mirror/head\.pth failed",
    ):
        downloads.download(_artifact(), tmp_path, base_url=_base(server), quiet=True, retries=0)


def _cli(argv) -> None:
    runpy.run_path(CLI, run_name="__cli__")["main"](list(argv))


def test_cli_downloads_lists_and_reports_failures(server, tmp_path, capsys, caplog) -> None:
    head = next(a for a in downloads.ARTIFACTS if a.name == "deepseek_vl_1_3b")
    server.files[f"/mirror/{head.filename}"] = PAYLOAD
    server.files["/mirror/sam_vit_l_0b3195.pth"] = PAYLOAD  # not SAM: its size is known
    common = ["--dir", str(tmp_path), "--base-url", _base(server), "--quiet"]
    _cli(["deepseek_vl_1_3b", *common])
    assert (tmp_path / head.filename).read_bytes() == PAYLOAD
    assert f"[deepseek_vl_1_3b] ok: {tmp_path / head.filename}" in capsys.readouterr().out
    # Its size and digest are not in the table yet: printed so that they can be added.
    assert hashlib.sha256(PAYLOAD).hexdigest() in caplog.text

    with pytest.raises(SystemExit, match="1 download.s. failed: sam_vit_l"):
        _cli(["sam_vit_l", *common])
    assert "has 1,048,576 bytes, but sam_vit_l has 1,249,524,607" in capsys.readouterr().out

    _cli(["--list", "--dir", str(tmp_path)])
    listed = capsys.readouterr().out
    table, _, notes = listed.partition("known but unsupported")
    rows = {line.split()[0]: line for line in table.splitlines()[1:] if line.strip()}
    assert "present, 1.0 MB (size not published)" in rows["deepseek_vl_1_3b"]
    hg = rows["hg_deepseek_vl_1_3b"]  # per config: the file it needs and whether it is there
    assert "hg_frozen_deepseek_vl_1_3b_chat_refcoco_png.py" in hg and "missing" in hg
    assert "unsupported" in rows["hpt_air"] and "hpt_air: HPT's model code" in notes
    assert "missing" in rows["sam_vit_l"] and "dl.fbaipublicfiles.com" in rows["sam_vit_l"]
    assert "drive.google.com/uc?id=1LOwIAYVyR51e34ksV9jz-GGiFfmkZLj_" in rows["deepseek_vl_7b"]
    assert set(rows) >= {"lmm_deepseek_vl_1_3b", "lmm_deepseek_vl_7b", "lmm_llava_1_5_7b"}

    with pytest.raises(SystemExit) as error:
        _cli(["no_such_checkpoint", *common])
    assert error.value.code == 2


HUB_SHA = "0123456789abcdef0123456789abcdef01234567"


class _HubHandler(_Handler):
    """The two hub routes `snapshot_download` uses: a revision's file list, and each file."""

    def _route(self) -> tuple[int, dict[str, str], bytes]:
        repo = "deepseek-ai/deepseek-vl-1.3b-chat"
        if self.path.split("?")[0] == f"/api/models/{repo}/revision/main":
            siblings = [{"rfilename": name} for name in self.server.files]
            body = json.dumps({"id": repo, "sha": HUB_SHA, "siblings": siblings}).encode()
            return 200, {"Content-Type": "application/json"}, body
        prefix = f"/{repo}/resolve/{HUB_SHA}/"
        if self.path.startswith(prefix) and self.path[len(prefix) :] in self.server.files:
            data = self.server.files[self.path[len(prefix) :]]
            etag = hashlib.sha256(data).hexdigest()
            return 200, {"X-Repo-Commit": HUB_SHA, "ETag": f'"{etag}"'}, data
        return 404, {}, b""

    def _reply(self, with_body: bool) -> None:
        self.server.requests.append((self.path, None))
        status, headers, body = self._route()
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._reply(True)

    def do_HEAD(self) -> None:
        self._reply(False)


def test_cli_fetches_an_lmm_into_the_hub_cache(tmp_path) -> None:
    """`--lmms` through huggingface_hub against a local hub endpoint, in a process of its own
    (this test session is offline by design: HF_HUB_OFFLINE=1)."""
    srv = _Server(("127.0.0.1", 0), _HubHandler)
    srv.files = {"config.json": b'{"model_type": "tiny"}', "weights.bin": PAYLOAD}
    srv.cut_next, srv.requests = set(), []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{srv.server_address[1]}"
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="0", NO_PROXY="127.0.0.1")
    env.pop("HF_ENDPOINT", None)
    cmd = [sys.executable, CLI, "lmm_deepseek_vl_1_3b", "--hf-endpoint", endpoint]
    cmd += ["--hf-cache", str(tmp_path / "hub"), "--dir", str(tmp_path), "--quiet"]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=10)
    assert done.returncode == 0, done.stdout + done.stderr
    snapshot = (
        tmp_path / "hub" / "models--deepseek-ai--deepseek-vl-1.3b-chat" / "snapshots" / HUB_SHA
    )
    assert (snapshot / "weights.bin").read_bytes() == PAYLOAD
    assert f"[lmm_deepseek_vl_1_3b] ok: {snapshot}" in done.stdout
    assert not list(tmp_path.glob("*.pth"))  # naming an LMM fetches only that LMM

    cmd = [
        sys.executable,
        CLI,
        "--list",
        "--hf-cache",
        str(tmp_path / "hub"),
        "--dir",
        str(tmp_path),
    ]
    listed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    row = next(
        line for line in listed.stdout.splitlines() if line.startswith("lmm_deepseek_vl_1_3b")
    )
    assert "in the Hugging Face cache" in row

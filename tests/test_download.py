"""Dataset download against a local HTTP server: good, truncated and malicious zips, resume, errors, the CLI."""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import socket
import stat
import sys
import threading
import types
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from odinw_bench.cli import main
from odinw_bench.data import download
from odinw_bench.data.download import download_tasks, raise_for_layout, safe_extract
from odinw_bench.errors import UserError
from odinw_bench.tasks.spec import CategorySpec, SplitSpec, TaskSpec

ANN = "annotations_without_background.json"


def make_task(name="tiny", zip_name="Tiny", root="Tiny/export") -> TaskSpec:
    return TaskSpec(
        name=name,
        display_name=name.title(),
        download=zip_name,
        root=root,
        categories=[CategorySpec(id=1, name="cat")],
        splits={"train": SplitSpec(f"train/{ANN}", "train"), "val": SplitSpec(f"valid/{ANN}", "valid")},
        fewshot={"train": "train/fewshot_train_shot{shots}_seed{seed}.json"},
    )


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def good_members(root="Tiny/export", with_val=True) -> dict[str, bytes]:
    ann = json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "cat"}]}).encode()
    # Incompressible image bytes make the archive large enough for a meaningful partial download.
    members = {
        f"{root}/train/{ANN}": ann,
        f"{root}/train/img0.jpg": random.Random(0).randbytes(150_000),
        f"{root}/train/fewshot_train_shot1_seed3.json": ann,
    }
    if with_val:
        members[f"{root}/valid/{ANN}"] = ann
        members[f"{root}/valid/img1.jpg"] = random.Random(1).randbytes(50_000)
    return members


class ServerState:
    """What the local server serves and what it saw."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.ignore_range = False
        self.cut_after: dict[str, int] = {}  # announce the full length but close after this many bytes
        self.bytes_sent = 0


class RangeHandler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server API)
        state: ServerState = self.server.state
        name, rng = self.path.lstrip("/"), self.headers.get("Range")
        state.requests.append((name, rng))
        data = state.files.get(name)
        if data is None:
            self.send_error(404)
            return
        status, body = 200, data
        match = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if match and not state.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status, body = 206, data[start:]
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        body = body[: state.cut_after.pop(name, len(body))]
        state.bytes_sent += len(body)  # counted before sending: the client may assert as soon as it has the bytes
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    httpd.state = ServerState()
    httpd.state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/odinw_35"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield httpd.state
    httpd.shutdown()
    httpd.server_close()


def visible_files(root: Path) -> list[str]:
    """Everything under root except the per-zip lock files, as sorted relative paths."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.name.endswith(".zip.lock"))


def test_good_zip_downloads_extracts_and_passes_layout(server, tmp_path):
    members = good_members()
    server.files["odinw_35/Tiny.zip"] = make_zip(members)
    root = tmp_path / "data"
    [result] = download_tasks([make_task()], root, base_url=server.base_url, progress=False)
    assert result.action == "downloaded" and result.url == f"{server.base_url}/Tiny.zip"
    [layout] = result.layouts
    assert layout.ok and layout.fewshot_present == 1 and layout.fewshot_expected == 12
    for name, data in members.items():
        assert (root / name).read_bytes() == data
    assert not (root / "Tiny.zip").exists() and not (root / "Tiny.zip.part").exists()
    assert not [p for p in root.iterdir() if ".extract-" in p.name]
    raise_for_layout([result])

    again = download_tasks([make_task()], root, base_url=server.base_url, progress=False)
    assert again[0].action == "present" and len(server.requests) == 1


def test_tasks_sharing_a_zip_download_it_once_and_keep_zip(server, tmp_path):
    members = {**good_members("Shared/a"), **good_members("Shared/b")}
    server.files["odinw_35/Shared.zip"] = make_zip(members)
    a, b = make_task("a", "Shared", "Shared/a"), make_task("b", "Shared", "Shared/b")
    tasks = [a, b, a]
    [result] = download_tasks(tasks, tmp_path, base_url=server.base_url, keep_zip=True, progress=False)
    assert [lay.task for lay in result.layouts] == ["a", "b"] and all(lay.ok for lay in result.layouts)
    assert len(server.requests) == 1
    assert (tmp_path / "Shared.zip").read_bytes() == server.files["odinw_35/Shared.zip"]


def test_truncated_zip_fails_cleanly_without_extracting(server, tmp_path):
    good = make_zip(good_members())
    server.files["odinw_35/Tiny.zip"] = good[: len(good) // 2]  # honest Content-Length, broken archive
    with pytest.raises(UserError, match="not a valid zip archive") as info:
        download_tasks([make_task()], tmp_path, base_url=server.base_url, progress=False)
    assert info.value.path == str(tmp_path / "Tiny.zip")
    assert visible_files(tmp_path) == []  # no extracted files, no zip, no .part, no staging folder


def test_connection_cut_short_fails_size_check_then_resumes(server, tmp_path):
    data = make_zip(good_members())
    server.files["odinw_35/Tiny.zip"] = data
    server.cut_after["odinw_35/Tiny.zip"] = 70_000  # announces the full length, sends less
    with pytest.raises(UserError, match="run the command again to resume") as info:
        download_tasks([make_task()], tmp_path, base_url=server.base_url, progress=False)
    assert info.value.path == f"{server.base_url}/Tiny.zip"
    part = tmp_path / "Tiny.zip.part"
    assert part.read_bytes() == data[:70_000]
    assert not (tmp_path / "Tiny").exists()

    [result] = download_tasks([make_task()], tmp_path, base_url=server.base_url, progress=False)
    assert result.layouts[0].ok
    assert server.requests[-1] == ("odinw_35/Tiny.zip", "bytes=70000-")
    assert server.bytes_sent == len(data)  # the second request sent only the rest
    assert (tmp_path / "Tiny/export/train/img0.jpg").read_bytes() == good_members()["Tiny/export/train/img0.jpg"]


def test_resume_of_a_partial_file_uses_a_range_request(server, tmp_path):
    data = make_zip(good_members())
    server.files["odinw_35/Tiny.zip"] = data
    (tmp_path / "Tiny.zip.part").write_bytes(data[:100_000])
    dest = download.fetch(f"{server.base_url}/Tiny.zip", tmp_path / "Tiny.zip", progress=False)
    assert server.requests == [("odinw_35/Tiny.zip", "bytes=100000-")]
    assert server.bytes_sent == len(data) - 100_000
    assert dest.read_bytes() == data
    assert not (tmp_path / "Tiny.zip.part").exists()


def test_server_ignoring_the_range_restarts_the_file(server, tmp_path):
    data = make_zip(good_members())
    server.files["odinw_35/Tiny.zip"] = data
    server.ignore_range = True
    (tmp_path / "Tiny.zip.part").write_bytes(b"stale bytes from another file" * 100)
    dest = download.fetch(f"{server.base_url}/Tiny.zip", tmp_path / "Tiny.zip", progress=False)
    assert server.requests[0][1] is not None  # it did ask for a range ...
    assert dest.read_bytes() == data  # ... and the 200 reply replaced the stale prefix


def test_complete_part_file_answered_416_is_finished(server, tmp_path):
    data = make_zip(good_members())
    server.files["odinw_35/Tiny.zip"] = data
    (tmp_path / "Tiny.zip.part").write_bytes(data)
    dest = download.fetch(f"{server.base_url}/Tiny.zip", tmp_path / "Tiny.zip", progress=False)
    assert dest.read_bytes() == data and server.bytes_sent == 0


def test_checksum_is_checked(server, tmp_path):
    data = make_zip(good_members())
    server.files["odinw_35/Tiny.zip"] = data
    with pytest.raises(UserError, match="sha256 mismatch"):
        download_tasks([make_task()], tmp_path, base_url=server.base_url, checksums={"Tiny": "0" * 64},
                       progress=False)  # fmt: skip
    assert visible_files(tmp_path) == []
    sha = hashlib.sha256(data).hexdigest()
    [result] = download_tasks([make_task()], tmp_path, base_url=server.base_url, checksums={"Tiny": sha},
                              progress=False)  # fmt: skip
    assert result.layouts[0].ok


def test_zip_escaping_the_target_is_refused_and_writes_nothing(server, tmp_path):
    root = tmp_path / "data"
    server.files["odinw_35/Tiny.zip"] = make_zip({**good_members(), "../evil.txt": b"pwned"})
    with pytest.raises(UserError, match=r"refusing to extract: 1 unsafe members.*\.\./evil\.txt"):
        download_tasks([make_task()], root, base_url=server.base_url, progress=False)
    assert not (tmp_path / "evil.txt").exists()
    assert not (root / "Tiny").exists()


@pytest.mark.parametrize("name", ["/abs.txt", "Tiny/../../evil.txt", "C:/evil.txt", "Tiny/link"])
def test_safe_extract_refuses_absolute_parent_and_symlink_members(tmp_path, name):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("Tiny/ok.txt", b"ok")
        info = zipfile.ZipInfo(name)
        if name.endswith("link"):
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, b"/etc/passwd")
    target = tmp_path / "out"
    with pytest.raises(UserError, match="unsafe"):
        safe_extract(archive, target)
    assert not target.exists() and not (tmp_path / "evil.txt").exists()


def test_unreachable_server_gives_a_clear_error(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/odinw_35"
    with pytest.raises(UserError) as info:
        download_tasks([make_task()], tmp_path, base_url=url, progress=False)
    message = str(info.value)
    assert message.startswith(f"{url}/Tiny.zip: cannot download")
    assert "--base-url" in message and "ODINW_BENCH_DOWNLOAD_URL" in message


def test_missing_file_on_server_says_404(server, tmp_path):
    with pytest.raises(UserError, match="not found \\(HTTP 404\\)"):
        download_tasks([make_task()], tmp_path, base_url=server.base_url, progress=False)


def test_layout_check_lists_missing_split_files(server, tmp_path):
    server.files["odinw_35/Tiny.zip"] = make_zip(good_members(with_val=False))
    results = download_tasks([make_task()], tmp_path, base_url=server.base_url, progress=False)
    assert results[0].layouts[0].missing == [
        f"split 'val': annotation file {tmp_path / 'Tiny/export/valid' / ANN}",
        f"split 'val': image folder {tmp_path / 'Tiny/export/valid'}",
    ]
    with pytest.raises(UserError, match="tiny: split 'val': annotation file"):
        raise_for_layout(results)


def test_base_url_comes_from_flag_then_environment_then_default(monkeypatch):
    monkeypatch.delenv(download.URL_ENV, raising=False)
    assert download.zip_url("Aquarium") == "https://huggingface.co/GLIPModel/GLIP/resolve/main/odinw_35/Aquarium.zip"
    monkeypatch.setenv(download.URL_ENV, "http://mirror/odinw/")
    assert download.zip_url("North America") == "http://mirror/odinw/North%20America.zip"
    assert download.zip_url("X", "http://flag") == "http://flag/X.zip"


@pytest.fixture
def fake_task_registry(monkeypatch):
    """Stands in for odinw_bench.tasks.registry so the command test does not depend on the real task YAMLs."""
    module = types.ModuleType("odinw_bench.tasks.registry")
    known = {"tiny": make_task()}

    def resolve_tasks(spec):
        try:
            return [(known[name], None) for name in spec.split(",")]
        except KeyError as err:
            raise UserError(f"unknown task {err}", field="--task") from None

    module.resolve_tasks = resolve_tasks
    module.resolve_data_root = lambda task, data_root=None: Path(data_root or "DATASET/odinw")
    monkeypatch.setitem(sys.modules, "odinw_bench.tasks.registry", module)


def test_cli_download_uses_the_environment_url(server, tmp_path, monkeypatch, capsys, fake_task_registry):
    server.files["odinw_35/Tiny.zip"] = make_zip(good_members())
    monkeypatch.setenv(download.URL_ENV, server.base_url)
    assert main(["download", "--task", "tiny", "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"Tiny: downloaded ({server.base_url}/Tiny.zip)" in out and "tiny: ok; few-shot files 1/12" in out
    assert main(["download", "--task", "tiny", "--data-root", str(tmp_path)]) == 0
    assert "Tiny: present" in capsys.readouterr().out


def test_cli_download_errors_exit_2(server, tmp_path, monkeypatch, capsys, fake_task_registry):
    server.files["odinw_35/Tiny.zip"] = make_zip(good_members(with_val=False))
    args = ["download", "--task", "tiny", "--data-root", str(tmp_path), "--base-url", server.base_url]
    assert main(args) == 2
    assert "split 'val': annotation file" in capsys.readouterr().err
    assert main(["download", "--task", "nope", "--data-root", str(tmp_path)]) == 2
    assert "unknown task" in capsys.readouterr().err

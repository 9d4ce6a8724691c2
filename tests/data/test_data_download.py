"""The download helper against a local HTTP server on 127.0.0.1: resume with HTTP Range,
restart when the server ignores it, verification, atomic rename, tar and zip extraction.
Publishers are never contacted."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from urllib.parse import urlparse

import pytest

from fcnseg.data import DatasetError, VOCSegmentation
from fcnseg.data import voc as voc_module
from fcnseg.data.camvid import CAMVID_RESOURCE
from fcnseg.data.context import CONTEXT_RESOURCES
from fcnseg.data.download import Resource, extract, fetch, fetch_and_extract
from fcnseg.data.nyud import NYUD_RESOURCE
from fcnseg.data.sbd import SBD_RESOURCE
from fcnseg.data.siftflow import SIFTFLOW_RESOURCE

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes


def resource(server, path="/file.bin", data=PAYLOAD, **overrides) -> Resource:
    server.files[path] = data
    fields = {
        "url": server.url + path,
        "filename": path.rsplit("/", 1)[-1],
        "size": len(data),
        "md5": hashlib.md5(data).hexdigest(),
        "archive": False,
    }
    fields.update(overrides)
    return Resource(**fields)


def test_fetch_downloads_and_verifies(tmp_path, http_server):
    seen = []
    path = fetch(
        resource(http_server), tmp_path, progress=lambda done, total: seen.append((done, total))
    )
    assert path.read_bytes() == PAYLOAD and not (tmp_path / "file.bin.part").exists()
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert http_server.requests == [("/file.bin", None)]
    fetch(resource(http_server), tmp_path)  # already there and verified: no request
    assert len(http_server.requests) == 1


def test_fetch_resumes_a_partial_file_with_a_range_request(tmp_path, http_server):
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:40_000])
    path = fetch(resource(http_server, sha256=hashlib.sha256(PAYLOAD).hexdigest()), tmp_path)
    assert http_server.requests == [("/file.bin", "bytes=40000-")]
    assert path.read_bytes() == PAYLOAD


def test_fetch_restarts_when_the_server_ignores_the_range(tmp_path, http_server):
    http_server.honor_range = False
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:1000])
    assert fetch(resource(http_server), tmp_path).read_bytes() == PAYLOAD


def test_interrupted_download_resumes_on_the_next_call(tmp_path, http_server):
    http_server.cut_after = 30_000
    spec = resource(http_server)
    with pytest.raises(DatasetError, match="interrupted after 30000 .*run again to resume"):
        fetch(spec, tmp_path, chunk_size=4096)
    assert (tmp_path / "file.bin.part").stat().st_size == 30_000
    assert not (tmp_path / "file.bin").exists()  # the final name only ever holds a verified file
    assert fetch(spec, tmp_path).read_bytes() == PAYLOAD
    assert http_server.requests[-1] == ("/file.bin", "bytes=30000-")


def test_complete_partial_file_is_verified_without_a_request(tmp_path, http_server):
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD)
    fetch(resource(http_server), tmp_path)
    assert http_server.requests == []


def test_checksum_mismatch_removes_the_partial_file(tmp_path, http_server):
    bad = resource(http_server, md5="0" * 32)
    with pytest.raises(DatasetError) as error:
        fetch(bad, tmp_path)
    message = str(error.value)
    assert "md5" in message and "0" * 32 in message and "\n" not in message
    assert not (tmp_path / "file.bin.part").exists() and not (tmp_path / "file.bin").exists()


def test_size_mismatch_and_http_errors(tmp_path, http_server):
    with pytest.raises(DatasetError, match="size 102400 bytes, expected 5"):
        fetch(resource(http_server, size=5), tmp_path)
    with pytest.raises(DatasetError, match="HTTP 404"):
        fetch(Resource(url=http_server.url + "/missing", filename="m"), tmp_path)
    (tmp_path / "file.bin").write_bytes(b"stale")
    with pytest.raises(DatasetError, match="exists but does not verify"):
        fetch(resource(http_server), tmp_path)


def tar_bytes(files: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["tar.gz", "tar", "zip"])
def test_archives_are_extracted_once_next_to_existing_files(tmp_path, http_server, kind):
    files = {"top/a.txt": b"a", "top/sub/b.txt": b"b"}
    data = (
        zip_bytes(files) if kind == "zip" else tar_bytes(files, "w:gz" if kind == "tar.gz" else "w")
    )
    (tmp_path / "top").mkdir()
    (tmp_path / "top" / "mine.txt").write_text("kept")
    spec = resource(http_server, f"/archive.{kind}", data, archive=True)
    assert fetch_and_extract(spec, tmp_path) == tmp_path
    assert (tmp_path / "top/sub/b.txt").read_bytes() == b"b"
    assert (tmp_path / "top/mine.txt").read_text() == "kept"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".archive")] == [
        f".archive.{kind}.extracted"
    ]
    (tmp_path / "top/a.txt").unlink()
    fetch_and_extract(spec, tmp_path)  # done before: nothing extracted again
    assert not (tmp_path / "top/a.txt").exists()


def test_unsafe_or_broken_archives_are_refused(tmp_path):
    unsafe = tmp_path / "evil.tar"
    unsafe.write_bytes(tar_bytes({"../outside.txt": b"x"}, "w"))
    with pytest.raises(DatasetError, match="unsafe path"):
        extract(unsafe, tmp_path / "out")
    assert not (tmp_path / "outside.txt").exists()
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(tar_bytes({"a": b"a" * 1000})[:40])
    with pytest.raises(DatasetError, match="cannot be extracted|neither a tar nor a zip"):
        extract(broken, tmp_path / "out2")


def test_voc_download_then_read(tmp_path, http_server, make, monkeypatch):
    make.voc(tmp_path / "source")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(tmp_path / "source" / "VOCdevkit", arcname="VOCdevkit")
    spec = resource(http_server, "/VOCtrainval_11-May-2012.tar", buffer.getvalue(), archive=True)
    monkeypatch.setitem(voc_module.VOC_RESOURCES, "2012", spec)
    root = VOCSegmentation.download(tmp_path / "data")
    assert len(VOCSegmentation(root, "train")) == 2


def test_publisher_resources_are_well_formed():
    resources = [
        *voc_module.VOC_RESOURCES.values(),
        SBD_RESOURCE,
        CAMVID_RESOURCE,
        SIFTFLOW_RESOURCE,
        NYUD_RESOURCE,
        *CONTEXT_RESOURCES.values(),
    ]
    hosts = {urlparse(r.url).hostname for r in resources}
    assert hosts == {
        "host.robots.ox.ac.uk",
        "www2.eecs.berkeley.edu",
        "github.com",
        "www.cs.unc.edu",
        "dl.caffe.berkeleyvision.org",
        "cs.stanford.edu",
    }
    for spec in resources:
        assert spec.url.startswith(("http://", "https://")) and "/" not in spec.filename
        assert spec.md5 is None or len(spec.md5) == 32
    assert voc_module.VOC_RESOURCES["2012"].size == 1999639040

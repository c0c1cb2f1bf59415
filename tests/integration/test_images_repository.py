"""The image repository of the bootstrap (/images) against a real local cluster and real
qemu-img: upload, list, download, delete (refused while a VM uses the image), hostile uploads
refused with a 4xx and nothing stored, and the libvirt storage pool mode on a private libvirtd."""

from __future__ import annotations

import hashlib
import http.client as httpclient
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from snooze.dev.localcluster import LocalCluster
from tests.support import get, http, run_virtual_cluster, start_vm, wait_for

pytestmark = pytest.mark.integration

LIMIT = 8 * 1024 * 1024  # [images] max_upload_bytes in these tests


def qcow2(path: Path, size: str = "64M", data: bool = True, *options: str) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *options, str(path), size], check=True)
    if data:
        subprocess.run(["qemu-io", "-c", "write -P 0xab 0 1M", str(path)], check=True, capture_output=True)
    return path


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def request(base: str, method: str, target: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    """One request with http.client (the target sent as given: no normalisation)."""
    u = urlsplit(base)
    conn = httpclient.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        h = dict(headers or {})
        if body is not None and "Content-Length" not in h:
            h["Content-Length"] = str(len(body))
        for k, v in h.items():
            conn.putheader(k, v)
        conn.endheaders()
        if body is not None:
            conn.send(body)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def put(base: str, name: str, data: bytes, query: str = "", **headers: str) -> tuple[int, Any]:
    status, _h, raw = request(base, "PUT", f"/images/{name}{query}", data, headers)
    return status, json.loads(raw) if raw else None


def stored(directory: Path) -> list[str]:
    """Everything in the repository's directory and its staging area but the metadata."""
    if not directory.exists():
        return []
    names = [p.name for p in directory.iterdir() if p.name not in (".staging", ".meta")]
    staging = directory / ".staging"
    return sorted(names + ([f".staging/{p.name}" for p in staging.iterdir()] if staging.exists() else []))


@pytest.fixture
def repository(cluster_factory: Callable[..., LocalCluster], tmp_path: Path) -> tuple[LocalCluster, Path]:
    directory = tmp_path / "repository"
    cluster = cluster_factory(gms=2, lcs=1, extra={"images.directory": str(directory),
                                                   "images.max_upload_bytes": LIMIT,
                                                   "node.http_body_timeout": 3.0})
    return cluster, directory


def test_upload_list_download_and_delete(repository: tuple[LocalCluster, Path], tmp_path: Path) -> None:
    cluster, directory = repository
    base = cluster.bootstrap_url
    assert get(base + "/images") == {"images": []}
    data = qcow2(tmp_path / "a.qcow2").read_bytes()
    t0 = time.monotonic()
    status, img = put(base, "tiny", data, **{"X-Snooze-Checksum": sha256(data)})
    print(f"upload of {len(data)} bytes checked and stored in {time.monotonic() - t0:.2f}s")
    assert status == 201, img
    assert img == {"id": "tiny", "name": "tiny", "format": "qcow2", "capacity": 64 * 1024 * 1024,
                   "allocation": img["allocation"], "backingStore": None, "path": str(directory / "tiny"),
                   "size": len(data), "checksum": sha256(data), "usedBy": []}
    assert img["allocation"] > 0
    # A raw disk, named so.
    raw = os.urandom(1024 * 1024)
    status, rimg = put(base, "disk.raw", raw, "?format=raw")
    assert status == 201, rimg
    assert (rimg["format"], rimg["capacity"], rimg["checksum"]) == ("raw", len(raw), sha256(raw))

    listing = get(base + "/images")["images"]
    assert [i["id"] for i in listing] == ["disk.raw", "tiny"]
    assert listing[1] == img
    assert get(base + "/images/tiny") == img

    status, headers, body = request(base, "GET", "/images/tiny/content")
    assert status == 200
    assert body == data
    assert headers["content-length"] == str(len(data))
    assert headers["x-snooze-checksum"] == sha256(data)
    assert headers["x-snooze-image-format"] == "qcow2"

    # The same name again: refused before the body is read, the image unchanged.
    status, err = put(base, "tiny", b"x" * 1000)
    assert (status, err["error"]["code"], err["error"]["field"]) == (409, "IMAGE_EXISTS", "name")

    status, err = http("GET", base + "/images/nope")
    assert (status, err["error"]["code"], err["error"]["field"]) == (404, "IMAGE_NOT_FOUND", "id")
    status, _h, raw_err = request(base, "GET", "/images/nope/content")
    assert (status, json.loads(raw_err)["error"]["code"]) == (404, "IMAGE_NOT_FOUND")

    assert http("DELETE", base + "/images/tiny") == (200, True)
    assert http("DELETE", base + "/images/tiny")[0] == 404
    assert http("DELETE", base + "/images/disk.raw") == (200, True)
    assert get(base + "/images") == {"images": []}
    assert stored(directory) == []


def test_hostile_uploads_are_refused_and_nothing_is_stored(repository: tuple[LocalCluster, Path], tmp_path: Path) -> None:
    cluster, directory = repository
    base = cluster.bootstrap_url
    good = qcow2(tmp_path / "good.qcow2").read_bytes()
    truncated = good[: len(good) // 2]
    backing_passwd = qcow2(tmp_path / "b1.qcow2", "1M", False, "-u", "-b", "/etc/passwd", "-F", "raw").read_bytes()
    (tmp_path / "x").write_bytes(b"\0" * 65536)
    backing_relative = qcow2(tmp_path / "b2.qcow2", "1M", False, "-u", "-b", "../x", "-F", "raw").read_bytes()
    data_file = qcow2(tmp_path / "d.qcow2", "1M", False, "-o", f"data_file={tmp_path / 'd.raw'}").read_bytes()
    text = b"<html>502 Bad Gateway</html>\n" * 100

    cases: list[tuple[str, bytes, str, dict[str, str], int, str, str]] = [
        ("text", text, "", {}, 400, "INVALID_IMAGE", "body"),
        ("text", text, "?format=qcow2", {}, 400, "INVALID_IMAGE", "body"),
        ("text", text, "?format=vmdk", {}, 400, "INVALID_IMAGE", "format"),
        ("truncated", truncated, "", {}, 400, "INVALID_IMAGE", "body"),
        ("short", good[:-70000], "", {}, 400, "INVALID_IMAGE", "body"),
        ("truncated", truncated, "?format=raw", {}, 400, "INVALID_IMAGE", "body"),  # qcow2 named raw
        ("passwd", backing_passwd, "", {}, 400, "INVALID_IMAGE", "body"),
        ("relative", backing_relative, "", {}, 400, "INVALID_IMAGE", "body"),
        ("datafile", data_file, "", {}, 400, "INVALID_IMAGE", "body"),
        ("sum", good, "", {"X-Snooze-Checksum": sha256(good + b"x")}, 400, "IMAGE_CHECKSUM_MISMATCH", "X-Snooze-Checksum"),
        ("sum", good, "", {"X-Snooze-Checksum": "md5:abc"}, 400, "BAD_REQUEST", "X-Snooze-Checksum"),
        ("%2E%2E", good, "", {}, 400, "INVALID_ID", "name"),
        ("a%2Fb", good, "", {}, 400, "INVALID_ID", "name"),
        ("-x", good, "", {}, 400, "INVALID_ID", "name"),
        ("x" * 64, good, "", {}, 400, "INVALID_ID", "name"),
        ("empty", b"", "", {}, 400, "INVALID_IMAGE", "body"),
    ]
    for name, body, query, headers, status, code, field in cases:
        got, err = put(base, name, body, query, **headers)
        assert (got, err["error"]["code"], err["error"].get("field")) == (status, code, field), (name, query, err)
        print(f"{name}{query}: {status} {code}: {err['error']['message']}")
    for target in ("/images/..", "/images/a/b", "/images/"):
        status, _h, raw = request(base, "PUT", target, good)
        assert 400 <= status < 500, (target, status)
        assert "error" in json.loads(raw)
    assert stored(directory) == []
    assert get(base + "/images") == {"images": []}


def test_oversize_slow_and_cut_short_uploads(repository: tuple[LocalCluster, Path]) -> None:
    cluster, directory = repository
    u = urlsplit(cluster.bootstrap_url)

    def raw_put(name: str, length: int, send: bytes, extra: str = "") -> socket.socket:
        s = socket.create_connection((u.hostname or "127.0.0.1", u.port or 80), timeout=30)
        s.sendall(f"PUT /images/{name} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n{extra}\r\n".encode() + send)
        return s

    def answer(s: socket.socket) -> tuple[int, Any]:
        raw = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            raw += chunk
            head, sep, rest = raw.partition(b"\r\n\r\n")
            if sep and b"content-length:" in head.lower():
                n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(rest) >= n:
                    break
        s.close()
        head, _, rest = raw.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(rest)

    # Over the limit: answered at once from the headers, the body never read.
    t0 = time.monotonic()
    status, err = answer(raw_put("big", LIMIT + 1, b""))
    assert (status, err["error"]["code"], err["error"]["field"]) == (413, "IMAGE_TOO_LARGE", "Content-Length")
    print(f"oversize refused in {time.monotonic() - t0:.2f}s without a body")
    # Expect: 100-continue gets the refusal instead of the go-ahead.
    status, err = answer(raw_put("big", LIMIT + 1, b"", "Expect: 100-continue\r\n"))
    assert (status, err["error"]["code"]) == (413, "IMAGE_TOO_LARGE")
    # No Content-Length (chunked): refused.
    s = socket.create_connection((u.hostname or "127.0.0.1", u.port or 80), timeout=30)
    s.sendall(b"PUT /images/chunky HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    status, err = answer(s)
    assert (status, err["error"]["field"]) == (411, "Content-Length")
    # A slow client: part of the body, then silence past [node] http_body_timeout (3 s here).
    t0 = time.monotonic()
    status, err = answer(raw_put("slow", 1024 * 1024, b"QFI\xfb" + b"\0" * 1000))
    assert (status, err["error"]["code"]) == (408, "REQUEST_TIMEOUT")
    print(f"a stalled upload refused after {time.monotonic() - t0:.1f}s")
    # [images] max_concurrent_uploads (4) under way: a fifth is told to retry.
    stalled = [raw_put(f"stall{i}", 1024 * 1024, b"QFI\xfb") for i in range(4)]
    time.sleep(0.5)
    s = raw_put("fifth", 1024 * 1024, b"")
    status, err = answer(s)
    assert (status, err["error"]["code"]) == (503, "IMAGE_REPOSITORY_UNAVAILABLE"), err
    for s in stalled:
        assert answer(s)[0] == 408
    # Cut short: the client goes away mid-body.
    s = raw_put("cut", 1024 * 1024, b"QFI\xfb" + b"\0" * 5000)
    time.sleep(0.3)
    s.close()
    wait_for(lambda: stored(directory) == [], 10, "the cut-short upload's staging file to go")
    assert get(cluster.bootstrap_url + "/images") == {"images": []}


def test_an_image_in_use_is_not_deleted(repository: tuple[LocalCluster, Path], tmp_path: Path) -> None:
    cluster, directory = repository
    base = cluster.bootstrap_url
    data = qcow2(tmp_path / "a.qcow2", "16M").read_bytes()
    assert put(base, "base-img", data)[0] == 201
    start_vm(cluster, "vm-img-1", imageId="base-img")
    # The 2.1 client's paths name the image by their last component.
    resp = run_virtual_cluster(cluster, [{"vcpus": 1, "memory": 262144, "name": "vm-img-2", "imageId": "/some/where/base-img"}], 30)
    assert resp["virtualMachineMetaData"][0]["status"] == "RUNNING", resp
    assert get(base + "/images/base-img")["usedBy"] == ["vm-img-1", "vm-img-2"]
    status, err = http("DELETE", base + "/images/base-img")
    assert (status, err["error"]["code"]) == (409, "IMAGE_IN_USE"), err
    assert "vm-img-1" in err["error"]["message"] and "vm-img-2" in err["error"]["message"]
    for name in ("vm-img-1", "vm-img-2"):
        assert http("POST", base + "/bootstrap?destroyVirtualMachine", name) == (200, True)
    wait_for(lambda: get(base + "/images/base-img")["usedBy"] == [], 30, "the destroyed VMs to stop using the image")
    assert http("DELETE", base + "/images/base-img") == (200, True)
    assert stored(directory) == []


@pytest.mark.slow
def test_libvirt_storage_pool_mode(cluster_factory: Callable[..., LocalCluster], tmp_path: Path,
                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    import libvirt

    from snooze.dev.sim.libvirtd import LibvirtdCluster

    directory = tmp_path / "pool"
    # A short directory for the daemon: its socket's path must fit in 107 bytes.
    with LibvirtdCluster(tmp_path_factory.mktemp("lv"), count=1) as hosts:
        uri = hosts.hosts[0].uri
        cluster = cluster_factory(gms=2, lcs=1, extra={"images.directory": str(directory), "images.libvirt_uri": uri,
                                                       "images.pool": "test-images"})
        base = cluster.bootstrap_url
        conn = libvirt.open(uri)
        try:
            pool = wait_for(lambda: conn.storagePoolLookupByName("test-images"), 10, "the pool to be defined")
            assert pool.isActive()
            data = qcow2(tmp_path / "a.qcow2", "32M").read_bytes()
            status, img = put(base, "pooled", data)
            assert status == 201, img
            assert (img["capacity"], img["path"]) == (32 * 1024 * 1024, str(directory / "pooled"))
            vol = pool.storageVolLookupByName("pooled")
            assert vol.path() == str(directory / "pooled")
            assert vol.info()[1] == img["capacity"]
            assert [i["id"] for i in get(base + "/images")["images"]] == ["pooled"]
            # Stopped, then undefined behind the repository's back: started, defined again.
            pool.destroy()
            assert [i["id"] for i in get(base + "/images")["images"]] == ["pooled"]
            assert pool.isActive()
            pool.destroy()
            pool.undefine()
            assert [i["id"] for i in get(base + "/images")["images"]] == ["pooled"]
            pool = conn.storagePoolLookupByName("test-images")
            # A hostile upload leaves no volume behind either.
            assert put(base, "bad", b"not an image" * 100)[0] == 400
            pool.refresh(0)
            assert sorted(v.name() for v in pool.listAllVolumes(0) if not v.name().startswith(".")) == ["pooled"]
            assert http("DELETE", base + "/images/pooled") == (200, True)
            pool.refresh(0)
            assert [v.name() for v in pool.listAllVolumes(0) if not v.name().startswith(".")] == []
            assert not (directory / "pooled").exists()
        finally:
            conn.close()


def test_clients_cli_and_libcloud(repository: tuple[LocalCluster, Path], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio

    from libcloud.compute.providers import get_driver

    import snooze.client.libcloud_driver  # noqa: F401  (registers Provider.SNOOZE)
    from snooze.cli import main
    from snooze.client import SnoozeClient, SnoozeClientError, SyncSnoozeClient

    cluster, directory = repository
    base = cluster.bootstrap_url
    path = qcow2(tmp_path / "cli.qcow2", "16M")
    # The CLI: upload (named after the file), list, delete.
    assert main(["images", "upload", str(path), "--url", base]) == 0
    assert capsys.readouterr().out.startswith("cli.qcow2: qcow2, 16.0 MiB virtual")
    assert main(["--url", base, "images"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["ID", "FORMAT", "VIRTUAL", "SIZE", "FILE", "SIZE", "USED", "BY", "CHECKSUM"]
    assert out.splitlines()[1].startswith("cli.qcow2")
    assert main(["images", "list", "--json", "--url", base]) == 0
    assert [i["id"] for i in json.loads(capsys.readouterr().out)["images"]] == ["cli.qcow2"]
    # A raw file without --format: the server's refusal, on one line.
    (tmp_path / "notes.txt").write_text("not a disk\n")
    assert main(["images", "upload", str(tmp_path / "notes.txt"), "--url", base]) == 1
    assert "INVALID_IMAGE" in capsys.readouterr().err
    assert main(["images", "upload", str(tmp_path / "notes.txt"), "--format", "raw", "--name", "notes", "--url", base]) == 0
    capsys.readouterr()

    # The blocking client and the asynchronous one.
    with SyncSnoozeClient(base) as c:
        assert [i["id"] for i in c.list_images()] == ["cli.qcow2", "notes"]
        assert c.get_image("notes")["format"] == "raw"
        img = c.upload_image(path, "sync-copy")
        assert img["checksum"] == c.get_image("cli.qcow2")["checksum"]
        with pytest.raises(SnoozeClientError) as err:
            c.get_image("nope")
        assert (err.value.code, err.value.status, err.value.field) == ("IMAGE_NOT_FOUND", 404, "id")
        with pytest.raises(SnoozeClientError) as err:
            c.upload_image(path, "../etc")
        assert (err.value.code, err.value.field) == ("INVALID_ID", "name")
        assert c.delete_image("sync-copy") is True

    async def aio() -> None:
        async with SnoozeClient(base) as c:
            assert (await c.get_image("cli.qcow2"))["size"] == path.stat().st_size
            assert (await c.upload_image(path, "aio-copy"))["id"] == "aio-copy"
            assert await c.delete_image("aio-copy") is True

    asyncio.run(aio())

    # libcloud: list_images gives NodeImages with the repository's record as extra.
    driver = get_driver("snooze")(base)
    try:
        images = driver.list_images()
        assert [(i.id, i.name, i.extra["format"]) for i in images] == [("cli.qcow2", "cli.qcow2", "qcow2"), ("notes", "notes", "raw")]
        assert images[0].extra["checksum"].startswith("sha256:")
        assert driver.delete_image(images[1]) is True
    finally:
        driver.close()
    assert main(["images", "delete", "cli.qcow2", "--url", base]) == 0
    assert main(["images", "delete", "cli.qcow2", "--url", base]) == 1
    assert "IMAGE_NOT_FOUND" in capsys.readouterr().err
    assert stored(directory) == []


def test_expect_continue_head_and_concurrent_uploads(repository: tuple[LocalCluster, Path], tmp_path: Path) -> None:
    import concurrent.futures

    cluster, directory = repository
    base = cluster.bootstrap_url
    u = urlsplit(base)
    data = qcow2(tmp_path / "a.qcow2", "32M").read_bytes()
    # Expect: 100-continue: the go-ahead first, then the body.
    s = socket.create_connection((u.hostname or "127.0.0.1", u.port or 80), timeout=30)
    s.sendall(f"PUT /images/expect HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\nExpect: 100-continue\r\n\r\n".encode())
    assert s.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    s.sendall(data)
    assert s.recv(100).startswith(b"HTTP/1.1 201")
    s.close()
    # HEAD of the content: its headers, no body.
    status, headers, body = request(base, "HEAD", "/images/expect/content")
    assert (status, headers["content-length"], headers["x-snooze-checksum"], body) == (200, str(len(data)), sha256(data), b"")
    # Four uploads of one name at once: one stored, the others refused, nothing left staged.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: put(base, "same", data)[0], range(4)))
    assert sorted(answers) == [201, 409, 409, 409], answers
    assert stored(directory) == ["expect", "same"]
    # A bigger image, to print the rate of upload + checks.
    big = tmp_path / "big.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(big), "1G"], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 0 6M", str(big)], check=True, capture_output=True)
    payload = big.read_bytes()
    t0 = time.monotonic()
    assert put(base, "big", payload, **{"X-Snooze-Checksum": sha256(payload)})[0] == 201
    took = time.monotonic() - t0
    print(f"upload of {len(payload) / 2**20:.1f} MiB with checksum and qemu-img checks: {took:.2f}s "
          f"({len(payload) / 2**20 / took:.0f} MiB/s)")
    t0 = time.monotonic()
    status, _h, body = request(base, "GET", "/images/big/content")
    took = time.monotonic() - t0
    assert (status, sha256(body)) == (200, sha256(payload))
    print(f"download: {took:.2f}s ({len(body) / 2**20 / took:.0f} MiB/s)")

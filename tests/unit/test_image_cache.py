"""The local controller's image cache against a real HTTP repository of the same contract
(GET /images/{id}, GET /images/{id}/content with X-Snooze-Checksum): fetch once, concurrent
fetches share one download, checksums checked, LRU bound that never evicts an image in use."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from localcontroller.images.cache import (
    ImageCache,
    ImageNotFound,
    InvalidImage,
    RepositoryUnavailable,
)
from localcontroller.images.disks import InstanceFiles, guest_network


class TinyRepository:
    """A directory served with the repository's read contract; counts content downloads."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.downloads: dict[str, int] = {}
        self.lie: set[str] = set()  # images whose content does not match their checksum
        self.delay = 0.0

    def record(self, image_id: str) -> dict[str, Any] | None:
        path = self.directory / image_id
        if not path.is_file():
            return None
        data = path.read_bytes()
        fmt = "qcow2" if data[:4] == b"QFI\xfb" else "raw"
        return {"id": image_id, "name": image_id, "format": fmt, "capacity": len(data), "allocation": len(data),
                "backingStore": None, "path": str(path), "size": len(data),
                "checksum": "sha256:" + hashlib.sha256(data).hexdigest(), "usedBy": []}

    def app(self) -> web.Application:
        async def get(request: web.Request) -> web.StreamResponse:
            rec = self.record(request.match_info["id"])
            if rec is None:
                return web.json_response({"error": {"code": "IMAGE_NOT_FOUND", "field": "id"}}, status=404)
            return web.json_response(rec)

        async def content(request: web.Request) -> web.StreamResponse:
            image_id = request.match_info["id"]
            rec = self.record(image_id)
            if rec is None:
                return web.json_response({"error": {"code": "IMAGE_NOT_FOUND", "field": "id"}}, status=404)
            self.downloads[image_id] = self.downloads.get(image_id, 0) + 1
            data = (self.directory / image_id).read_bytes()
            if image_id in self.lie:
                data = data[::-1]
            resp = web.StreamResponse(headers={"X-Snooze-Checksum": rec["checksum"], "X-Snooze-Image-Format": rec["format"],
                                               "Content-Length": str(len(data))})
            await resp.prepare(request)
            for i in range(0, len(data), 4096):
                if self.delay:
                    await asyncio.sleep(self.delay)
                await resp.write(data[i:i + 4096])
            await resp.write_eof()
            return resp

        app = web.Application()
        app.router.add_get("/images/{id}", get)
        app.router.add_get("/images/{id}/content", content)
        return app


async def serve(repo: TinyRepository) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(repo.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def repo(tmp_path: Path) -> AsyncIterator[tuple[TinyRepository, str]]:
    d = tmp_path / "repo"
    d.mkdir()
    r = TinyRepository(d)
    runner, url = await serve(r)
    try:
        yield r, url
    finally:
        await runner.cleanup()


def _image(repo: TinyRepository, name: str, size: int) -> bytes:
    data = os.urandom(size)
    (repo.directory / name).write_bytes(data)
    return data


async def test_an_image_is_fetched_once_and_checked(tmp_path: Path, repo: tuple[TinyRepository, str]) -> None:
    r, url = repo
    data = _image(r, "disk-a", 100_000)
    cache = ImageCache(tmp_path / "cache", 10**9, url)
    try:
        first = await cache.acquire("disk-a")
        cache.release(first.path)
        second = await cache.acquire("disk-a")
        cache.release(second.path)
    finally:
        await cache.close()
    assert first.fetched and not second.fetched
    assert first.path == second.path and first.path.read_bytes() == data
    assert first.format == "raw" and first.path.name.startswith("disk-a.")
    assert r.downloads == {"disk-a": 1}
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.path.name], "no temporary file left"


async def test_concurrent_starts_share_one_download(tmp_path: Path, repo: tuple[TinyRepository, str]) -> None:
    r, url = repo
    _image(r, "disk-b", 64 * 4096)
    r.delay = 0.002
    cache = ImageCache(tmp_path / "cache", 10**9, url)
    try:
        got = await asyncio.gather(*(cache.acquire("disk-b") for _ in range(5)))
    finally:
        await cache.close()
    assert r.downloads == {"disk-b": 1}
    assert len({g.path for g in got}) == 1 and sum(g.fetched for g in got) == 5  # all waited on the one fetch


async def test_unknown_unreachable_and_lying_repositories(tmp_path: Path, repo: tuple[TinyRepository, str]) -> None:
    r, url = repo
    _image(r, "liar", 10_000)
    r.lie.add("liar")
    cache = ImageCache(tmp_path / "cache", 10**9, url)
    try:
        with pytest.raises(ImageNotFound):
            await cache.acquire("nope")
        with pytest.raises(ImageNotFound):
            await cache.acquire("../etc")
        with pytest.raises(InvalidImage):
            await cache.acquire("liar")
    finally:
        await cache.close()
    assert not any((tmp_path / "cache").iterdir()), "nothing stored from a bad download"
    assert cache._held == {}
    gone = ImageCache(tmp_path / "cache2", 10**9, "http://127.0.0.1:9")
    try:
        with pytest.raises(RepositoryUnavailable) as err:
            await gone.acquire("disk-a")
    finally:
        await gone.close()
    assert err.value.code.name == "IMAGE_REPOSITORY_UNAVAILABLE"


async def test_lru_bound_never_evicts_an_image_in_use(tmp_path: Path, repo: tuple[TinyRepository, str]) -> None:
    r, url = repo
    for name in ("one", "two", "three"):
        _image(r, name, 40_000)
    instances = InstanceFiles(tmp_path / "inst")
    cache = ImageCache(tmp_path / "cache", 100_000, url, in_use=instances.backing_files)
    try:
        one = await cache.acquire("one")
        instances.write_record("vm-1", imageId="one", backing=str(one.path))  # a VM boots from "one"
        cache.release(one.path)
        two = await cache.acquire("two")
        cache.release(two.path)
        os.utime(one.path, (1, 1))  # "one" is the least recently used, but in use
        three = await cache.acquire("three")
        cache.release(three.path)
        names = sorted(p.name.split(".")[0] for p in cache.entries())
        assert names == ["one", "three"], "two evicted (LRU among the unused), one kept (in use)"
        instances.remove("vm-1")
        os.utime(one.path, (1, 1))
        _image(r, "four", 40_000)
        four = await cache.acquire("four")
        cache.release(four.path)
        assert sorted(p.name.split(".")[0] for p in cache.entries()) == ["four", "three"]
        assert cache.size() <= 100_000
    finally:
        await cache.close()


def test_guest_network_from_the_order() -> None:
    assert guest_network("54:56:c0:a8:7a:06", "192.168.122.6", "192.168.122.0/24") == (
        "54:56:c0:a8:7a:06", "192.168.122.6", 24, "192.168.122.1")
    assert guest_network("54:56:0a:00:00:05", "10.0.0.5", "10.0.0.0/16") == ("54:56:0a:00:00:05", "10.0.0.5", 16, "10.0.0.1")
    assert guest_network(None, "10.0.0.5", "10.0.0.0/16") is None
    assert guest_network("m", "10.1.0.5", "10.0.0.0/16") is None  # not in the subnet
    assert guest_network("m", "bad", None) is None


async def test_a_slow_first_fetch_is_a_temporary_refusal_and_goes_on(tmp_path: Path,
                                                                     repo: tuple[TinyRepository, str]) -> None:
    r, url = repo
    data = _image(r, "big", 100 * 4096)
    r.delay = 0.005  # about 0.5 s in all
    cache = ImageCache(tmp_path / "cache", 10**9, url)
    try:
        with pytest.raises(RepositoryUnavailable, match="still being fetched"):
            await cache.acquire("big", wait=0.05)
        with pytest.raises(RepositoryUnavailable, match="still being fetched"):
            await cache.acquire("big", wait=0)  # a batch whose time is up: no wait at all
        assert cache._held == {}
        image = await cache.acquire("big", wait=30)  # the same download, finished
        cache.release(image.path)
    finally:
        await cache.close()
    assert image.path.read_bytes() == data and r.downloads == {"big": 1}

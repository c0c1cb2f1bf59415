"""The repository's checks of an uploaded file (bootstrap.images.inspect) with the real qemu-img,
and its store's atomic, no-overwrite put-in-place (bootstrap.images.store)."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from bootstrap.images.inspect import InvalidImage, check_qcow2_header, inspect
from bootstrap.images.store import ImageExists, ImageStore
from snooze.config import ImagesSettings


def qcow2(path: Path, size: str = "8M", *options: str, data: bool = False, fmt: str = "qcow2") -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, *options, str(path), size], check=True)
    if data:
        subprocess.run(["qemu-io", "-c", "write -P 0xcd 0 2M", str(path)], check=True, capture_output=True)
    return path


async def test_a_clean_qcow2_and_a_named_raw_disk_are_accepted(tmp_path: Path) -> None:
    facts = await inspect(qcow2(tmp_path / "a.qcow2"), None)
    assert (facts.format, facts.capacity) == ("qcow2", 8 * 1024 * 1024)
    assert (await inspect(tmp_path / "a.qcow2", "qcow2")).format == "qcow2"
    raw = tmp_path / "disk.img"
    raw.write_bytes(b"\0" * 4096)
    facts = await inspect(raw, "raw")
    assert (facts.format, facts.capacity) == ("raw", 4096)


@pytest.mark.parametrize("declared", [None, "qcow2"])
async def test_raw_bytes_are_not_guessed_to_be_a_disk(tmp_path: Path, declared: str | None) -> None:
    text = tmp_path / "page.html"
    text.write_text("<html>not found</html>")
    with pytest.raises(InvalidImage, match="not a qcow2 image"):
        await inspect(text, declared)


@pytest.mark.parametrize("declared", [None, "raw"])
async def test_other_image_formats_are_refused_even_as_raw(tmp_path: Path, declared: str | None) -> None:
    # A VMDK descriptor naming a host file as its extent: probed by anyone later, it would read it.
    vmdk = tmp_path / "x.vmdk"
    vmdk.write_text('# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n'
                    'RW 2048 FLAT "/etc/shadow" 0\n')
    with pytest.raises(InvalidImage, match="vmdk image"):
        await inspect(vmdk, declared)
    made = qcow2(tmp_path / "y.vhdx", fmt="vhdx")
    with pytest.raises(InvalidImage, match="vhdx image"):
        await inspect(made, declared)


async def test_a_qcow2_uploaded_as_raw_is_refused(tmp_path: Path) -> None:
    # Stored as raw, the guest would see a qcow2 header as its disk's first bytes (and a later
    # probe would read it as qcow2: the format confusion attack).
    with pytest.raises(InvalidImage, match="uploaded as format=raw"):
        await inspect(qcow2(tmp_path / "a.qcow2"), "raw")


@pytest.mark.parametrize("backing", ["/etc/passwd", "../x", "json:{\"file.filename\": \"/etc/shadow\"}"])
async def test_any_backing_file_is_refused_before_qemu_img_runs(tmp_path: Path, backing: str) -> None:
    path = qcow2(tmp_path / "b.qcow2", "1M", "-u", "-b", backing, "-F", "raw")
    with pytest.raises(InvalidImage, match="backing file"):
        check_qcow2_header(path)
    with pytest.raises(InvalidImage, match="backing file"):
        await inspect(path, None)


async def test_an_external_data_file_is_refused(tmp_path: Path) -> None:
    path = qcow2(tmp_path / "d.qcow2", "1M", "-o", f"data_file={tmp_path / 'd.raw'}")
    with pytest.raises(InvalidImage, match="external data file"):
        await inspect(path, None)


async def test_truncated_and_garbled_qcow2_are_refused(tmp_path: Path) -> None:
    good = qcow2(tmp_path / "a.qcow2", "64M", data=True)
    data = good.read_bytes()
    for i, cut in enumerate((40, 100, 70000, len(data) // 2, len(data) - 70000)):
        bad = tmp_path / f"t{i}.qcow2"
        bad.write_bytes(data[:cut])
        with pytest.raises(InvalidImage):
            await inspect(bad, None)
    # Unknown version, absurd cluster size, encryption, dirty bit: refused from the header.
    for offset, value, fmt in ((4, 9, ">I"), (20, 40, ">I"), (32, 1, ">I"), (72, 1, ">Q")):
        bad = tmp_path / f"h{offset}.qcow2"
        bad.write_bytes(data[:offset] + struct.pack(fmt, value) + data[offset + struct.calcsize(fmt):])
        with pytest.raises(InvalidImage):
            await inspect(bad, None)


def test_the_store_puts_an_image_in_place_once(tmp_path: Path) -> None:
    store = ImageStore(ImagesSettings(directory=str(tmp_path / "repo")))
    store.prepare()
    first = store.stage()
    first.write(b"one")
    checksum = first.finish()
    img = store.commit(first, "disk", "raw", 3, checksum)
    assert (img.id, img.size, img.checksum, img.format) == ("disk", 3, checksum, "raw")
    assert not first.path.exists()
    second = store.stage()
    second.write(b"two!")
    with pytest.raises(ImageExists):
        store.commit(second, "disk", "raw", 4, second.finish())
    assert not second.path.exists()
    assert (tmp_path / "repo" / "disk").read_bytes() == b"one"
    # A file put there by hand is listed, its facts computed once; names that are no ids are not.
    (tmp_path / "repo" / "by-hand").write_bytes(b"\0" * 512)
    (tmp_path / "repo" / "-not-an-id").write_bytes(b"x")
    (tmp_path / "repo" / "link").symlink_to("/etc/passwd")
    assert [i.id for i in store.list()] == ["by-hand", "disk"]
    with pytest.raises(KeyError), store.open("link"):
        pass
    assert store.delete("disk") and not store.delete("disk")
    assert [i.id for i in store.list()] == ["by-hand"]

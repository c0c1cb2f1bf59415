"""The NoCloud config drive: its files' fixed layout (read back with the same sed the
snooze-tiny guest uses), bad input refused naming the field, and a real vfat volume labelled
cidata built with mkfs.vfat + mtools and read back with mtools and blkid."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from localcontroller.images.configdrive import (
    ConfigDriveError,
    GuestNetwork,
    nocloud_files,
    write_config_drive,
)
from snooze.dev.guestimage import INIT

NET = GuestNetwork(mac="54:56:C0:A8:7A:06", address="192.168.122.6", prefix=24,
                   gateway="192.168.122.1", dns=("192.168.122.1", "192.168.122.2"))

# The expressions snooze-tiny's init runs on the drive (snooze.dev.guestimage).
SED = {
    "hostname": ("meta-data", r's/^local-hostname: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p'),
    "mac": ("network-config", r's/^ *macaddress: *"\{0,1\}\([0-9a-fA-F:]*\)"\{0,1\} *$/\1/p'),
    "cidr": ("network-config", r's/^ *- *"\{0,1\}\([0-9a-fA-F.:]*\/[0-9]*\)"\{0,1\} *$/\1/p'),
    "via": ("network-config", r's/^ *via: *"\{0,1\}\([0-9a-fA-F.:]*\)"\{0,1\} *$/\1/p'),
    "dns": ("network-config", r'/^ *nameservers:/,$ s/^ *- *"\{0,1\}\([0-9a-fA-F.:]*\)"\{0,1\} *$/nameserver \1/p'),
}


def sed(files: dict[str, bytes], what: str) -> str:
    name, expr = SED[what]
    out = subprocess.run(["sed", "-n", expr], input=files.get(name, b""), capture_output=True, check=True)
    return out.stdout.decode().strip()


def test_the_guest_runs_these_expressions() -> None:
    for _, expr in SED.values():
        assert f"sed -n '{expr}'" in INIT


def test_files_layout_read_with_sed() -> None:
    files = nocloud_files(instance_id="vm-7", hostname="vm-7", network=NET)
    assert sorted(files) == ["meta-data", "network-config", "user-data"]
    assert files["meta-data"] == b'instance-id: "vm-7"\nlocal-hostname: "vm-7"\n'
    assert files["user-data"].startswith(b"#cloud-config\n")
    text = files["network-config"].decode()
    assert text.startswith("version: 2\nethernets:\n  eth0:\n    match:\n")
    assert '      macaddress: "54:56:c0:a8:7a:06"\n' in text  # normalised to lower case
    assert "    routes:\n      - to: \"0.0.0.0/0\"\n        via: \"192.168.122.1\"\n" in text
    assert '        - "192.168.122.2"\n' in text
    assert sed(files, "hostname") == "vm-7"
    assert sed(files, "mac") == "54:56:c0:a8:7a:06"
    # The name servers are bare addresses: only the interface's address has a prefix.
    assert sed(files, "cidr") == "192.168.122.6/24"
    assert sed(files, "via") == "192.168.122.1"
    assert sed(files, "dns") == "nameserver 192.168.122.1\nnameserver 192.168.122.2"


@pytest.mark.parametrize("name", ["vm_1", "web.", "a" * 63, "a" * 64, "123", "db-2.cluster"])
def test_every_snooze_id_is_a_hostname(name: str) -> None:
    files = nocloud_files(instance_id=name, hostname=name, network=NET)
    assert sed(files, "hostname") == name


def test_without_network_or_gateway() -> None:
    files = nocloud_files(instance_id="i-1", hostname="guest", network=None, user_data="#!/bin/sh\necho hi\n")
    assert "network-config" not in files
    assert files["user-data"] == b"#!/bin/sh\necho hi\n"
    isolated = GuestNetwork(mac="52:54:00:12:34:56", address="10.1.2.3", prefix=8, gateway=None)
    files = nocloud_files(instance_id="i-1", hostname="guest", network=isolated)
    text = files["network-config"].decode()
    assert "routes" not in text and "nameservers" not in text
    # A MAC of digits only stays a quoted string (YAML 1.1 would read it as a base-60 number).
    assert sed(files, "mac") == "52:54:00:12:34:56" and '"52:54:00:12:34:56"' in text
    assert sed(files, "via") == ""


def test_ipv6() -> None:
    net = GuestNetwork(mac="52:54:00:00:00:01", address="fd00::6", prefix=64, gateway="fd00::1")
    files = nocloud_files(instance_id="i-6", hostname="six", network=net)
    assert 'to: "::/0"' in files["network-config"].decode()
    assert sed(files, "cidr") == "fd00::6/64"
    assert sed(files, "via") == "fd00::1"


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"hostname": "bad name"}, "hostname"),
    ({"hostname": 'x"\nroot: 1'}, "hostname"),
    ({"hostname": "-lead"}, "hostname"),
    ({"hostname": ""}, "hostname"),
    ({"hostname": "a" * 65}, "hostname"),
    ({"hostname": "_x"}, "hostname"),
    ({"hostname": "a/b"}, "hostname"),
    ({"instance_id": "a/b"}, "instance_id"),
    ({"instance_id": "x\ny"}, "instance_id"),
    ({"instance_id": ""}, "instance_id"),
    ({"network": GuestNetwork(mac="54:56:c0:a8:7a", address="10.0.0.2", prefix=24, gateway=None)}, "network.mac"),
    ({"network": GuestNetwork(mac="54:56:c0:a8:7a:06", address="10.0.0.300", prefix=24, gateway=None)}, "network.address"),
    ({"network": GuestNetwork(mac="54:56:c0:a8:7a:06", address="10.0.0.2", prefix=33, gateway=None)}, "network.prefix"),
    ({"network": GuestNetwork(mac="54:56:c0:a8:7a:06", address="10.0.0.2", prefix=0, gateway=None)}, "network.prefix"),
    ({"network": GuestNetwork(mac="54:56:c0:a8:7a:06", address="10.0.0.2", prefix=24, gateway="gw")}, "network.gateway"),
    ({"network": GuestNetwork(mac="54:56:c0:a8:7a:06", address="10.0.0.2", prefix=24, gateway="fd00::1")}, "network.gateway"),
    ({"network": GuestNetwork(mac="54:56:c0:a8:7a:06", address="10.0.0.2", prefix=24, gateway=None,
                              dns=("10.0.0.1", "x\n"))}, "network.dns"),
])
def test_bad_input_names_the_field(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"instance_id": "vm-1", "hostname": "vm-1", "network": NET, **kwargs}
    with pytest.raises(ValueError) as info:
        nocloud_files(**args)  # type: ignore[arg-type]
    assert str(info.value).startswith(field + ":")


needs_tools = pytest.mark.skipif(not (shutil.which("mkfs.vfat") and shutil.which("mcopy")),
                                 reason="dosfstools and mtools are not installed (scripts/install-qemu.sh)")


def mtools(*argv: str) -> str:
    out = subprocess.run(argv, capture_output=True, check=True, env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"})
    return out.stdout.decode()


@needs_tools
def test_drive_is_a_cidata_vfat_volume(tmp_path: Path) -> None:
    files = nocloud_files(instance_id="vm-7", hostname="vm-7", network=NET)
    drive = tmp_path / "instances" / "vm-7-cidata.img"
    write_config_drive(drive, files)
    assert drive.is_file() and drive.stat().st_size == 1024 * 1024
    assert [p.name for p in drive.parent.iterdir()] == ["vm-7-cidata.img"]  # no temporary left
    for name, content in files.items():
        assert mtools("mtype", "-i", str(drive), f"::{name}").encode() == content
    label = mtools("mlabel", "-s", "-i", str(drive), "::")
    assert "CIDATA" in label
    blkid = shutil.which("blkid") or "/usr/sbin/blkid"
    if Path(blkid).exists():
        probe = subprocess.run([blkid, "-p", "-o", "export", str(drive)], capture_output=True, check=False)
        assert b"TYPE=vfat" in probe.stdout and b"LABEL=CIDATA" in probe.stdout
    # Replaced atomically with new content; the same files make the same volume id.
    files2 = nocloud_files(instance_id="vm-7", hostname="renamed", network=None)
    write_config_drive(drive, files2)
    assert mtools("mtype", "-i", str(drive), "::meta-data").encode() == files2["meta-data"]
    assert "network-config" not in mtools("mdir", "-b", "-i", str(drive), "::")


@needs_tools
def test_large_user_data_grows_the_drive(tmp_path: Path) -> None:
    big = "#cloud-config\n# " + "x" * (3 * 1024 * 1024) + "\n"
    files = nocloud_files(instance_id="i", hostname="h", network=None, user_data=big)
    drive = tmp_path / "d.img"
    write_config_drive(drive, files)
    assert drive.stat().st_size > 6 * 1024 * 1024
    assert mtools("mtype", "-i", str(drive), "::user-data").encode() == big.encode()


def test_bad_file_name_and_failures(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="files"):
        write_config_drive(tmp_path / "d.img", {"../x": b""})
    with pytest.raises(ConfigDriveError, match="exceed"):
        write_config_drive(tmp_path / "d.img", {"user-data": b"x" * (17 * 1024 * 1024)})
    assert not (tmp_path / "d.img").exists()


@needs_tools
def test_tool_failure_is_a_config_drive_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # mtools refusing to write (a PATH where mcopy is a failing program) leaves nothing behind.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mcopy").write_text("#!/bin/sh\necho 'disk full' >&2\nexit 1\n")
    (bin_dir / "mcopy").chmod(0o755)
    mkfs = shutil.which("mkfs.vfat")
    assert mkfs is not None
    (bin_dir / "mkfs.vfat").symlink_to(mkfs)
    monkeypatch.setenv("PATH", str(bin_dir))
    out = tmp_path / "out"
    with pytest.raises(ConfigDriveError, match="mcopy failed .*disk full"):
        write_config_drive(out / "d.img", {"meta-data": b"x"})
    assert list(out.iterdir()) == []

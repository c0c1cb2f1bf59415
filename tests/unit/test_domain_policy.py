"""The template policy: hostile domain XML refused with the element named, safe parsing (XXE,
billion laughs), the rebuilt XML, numeric bounds of submissions, the operator's settings, and
the local controller's own re-check before it defines a domain (real libvirt test driver)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localcontroller.hypervisor import InvalidDomainXML, LibvirtHypervisor
from localcontroller.hypervisor.adapt import adapt_domain_xml
from snooze import config as cfg
from snooze.dev.localcluster import host_xml
from snooze.domainxml import MAX_XML_CHARS, DomainPolicy, PolicyViolation, rebuild_domain
from snooze.virtualcluster import InvalidSubmission, parse_submission
from tests.hostile_domains import HOSTILE, STORE, domain

FIELD = "virtualMachineTemplates[0].libVirtTemplate"


def refusal(xml: str, policy: DomainPolicy | None = None) -> InvalidSubmission:
    with pytest.raises(InvalidSubmission) as err:
        parse_submission({"virtualMachineTemplates": [{"libVirtTemplate": xml}]}, policy)
    assert err.value.field == FIELD, err.value
    return err.value


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_templates_are_refused_naming_the_element(case: str) -> None:
    xml, named = HOSTILE[case]
    err = refusal(xml)
    assert named in str(err), (case, str(err))
    assert str(err).startswith(FIELD)


def test_every_hostile_template_is_also_refused_by_the_hosts_own_check() -> None:
    # The local controller's re-check refuses each of them too, whoever sent it.
    for case, (xml, _named) in HOSTILE.items():
        with pytest.raises(PolicyViolation):
            rebuild_domain(xml, DomainPolicy.default(), on_host=True, test_driver=True)
            pytest.fail(f"{case} was accepted on the host")


# -- safe parsing -----------------------------------------------------------------------------
def test_xxe_is_refused_and_nothing_is_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("TOPSECRET")
    xxe = (f'<?xml version="1.0"?><!DOCTYPE domain [<!ENTITY x SYSTEM "file://{secret}">]>'
           "<domain type=\"kvm\"><name>vm1</name><memory>262144</memory><description>&x;</description></domain>")
    err = refusal(xxe)
    assert "DOCTYPE" in str(err) and "TOPSECRET" not in str(err)
    external_dtd = f'<!DOCTYPE domain SYSTEM "file://{secret}"><domain type="kvm"><name>vm1</name><memory>262144</memory></domain>'
    assert "DOCTYPE" in str(refusal(external_dtd))
    parameter = (f'<!DOCTYPE domain [<!ENTITY % p SYSTEM "file://{secret}"> %p;]>'
                 '<domain type="kvm"><name>vm1</name><memory>262144</memory></domain>')
    assert "DOCTYPE" in str(refusal(parameter))


def test_billion_laughs_is_refused_at_once() -> None:
    lol = "".join(f'<!ENTITY l{i} "{("&l" + str(i - 1) + ";") * 10}">' for i in range(1, 10))
    bomb = (f'<?xml version="1.0"?><!DOCTYPE domain [<!ENTITY l0 "lol">{lol}]>'
            '<domain type="kvm"><name>vm1</name><memory>262144</memory><description>&l9;</description></domain>')
    err = refusal(bomb)
    assert "DOCTYPE" in str(err)
    # Even without the DOCTYPE rule, entity declarations are refused (defusedxml's own rule).
    with pytest.raises(PolicyViolation):
        rebuild_domain(bomb)


@pytest.mark.parametrize("text, expected", [
    ("", "expected domain XML"),
    ("<domain><name>x", "does not parse"),
    ("<domain type=\"kvm\"><name>\ud800</name><memory>262144</memory></domain>", "surrogate"),
    ("x" * (MAX_XML_CHARS + 1), "longer than"),
    ("<domain>" + "<a>" * 100_000 + "</a>" * 100_000 + "</domain>", "longer than"),
    ('<domain type="kvm"><name>vm1</name><memory>262144</memory>' + "<a>" * 20_000 + "</a>" * 20_000 + "</domain>", "<a>"),
])
def test_unusable_xml_is_a_clear_refusal(text: str, expected: str) -> None:
    assert expected in str(refusal(text))


def test_non_string_templates_are_refused() -> None:
    for value in (1, ["<domain/>"], {"a": 1}, True):
        refusal(value)  # type: ignore[arg-type]


# -- the rebuilt XML --------------------------------------------------------------------------
def test_the_stored_xml_is_rebuilt_not_the_clients_text() -> None:
    xml = ('<?xml version="1.0"?><!-- hello --><?pi data?><domain type="kvm" id="7"><name> vm1 </name>'
           '<memory unit="MiB">256</memory><vcpu placement="static">2</vcpu><os><type>hvm</type></os><devices>'
           '<emulator>/usr/bin/qemu-system-x86_64</emulator>'
           '<disk type="file" device="disk"><source file="debian.qcow2"/><target dev="vda" bus="virtio"/>'
           '<alias name="virtio-disk0"/></disk>'
           '<interface type="bridge"><source bridge="virbr0"/><target dev="vnet0"/><model type="virtio"/></interface>'
           '<graphics type="vnc" port="5000" autoport="no" listen="0.0.0.0"><listen type="address" address="0.0.0.0"/></graphics>'
           "</devices>extra text</domain>")
    [spec] = parse_submission({"virtualMachineTemplates": [{"libVirtTemplate": xml}]})
    assert spec.id == "vm1" and spec.requested[:2] == (2.0, 262144.0)
    assert "hello" not in spec.xml and "pi data" not in spec.xml and "extra text" not in spec.xml
    root = ET.fromstring(spec.xml)
    assert root.get("id") is None and root.findtext("name") == "vm1"
    assert root.find("devices/disk/alias") is None and root.find("devices/interface/target") is None
    graphics = root.find("devices/graphics")
    assert graphics is not None and dict(graphics.attrib) == {"type": "vnc", "autoport": "yes"} and len(graphics) == 0
    assert root.find("devices/disk/source").get("file") == "debian.qcow2"  # type: ignore[union-attr]
    assert root.findtext("devices/emulator") == "/usr/bin/qemu-system-x86_64"


def test_relative_disks_stay_inside_the_store_and_paths_are_normalised() -> None:
    [spec] = parse_submission({"virtualMachineTemplates": [{"libVirtTemplate": domain(
        f'<disk type="file"><source file="a/./b/../c.qcow2"/></disk><disk type="file" device="cdrom">'
        f'<source file="{STORE}//iso/../x.iso"/><readonly/></disk>')}]})
    sources = [s.get("file") for s in ET.fromstring(spec.xml).iter("source")]
    assert sources == ["a/c.qcow2", f"{STORE}/x.iso"]


def test_the_original_seed_template_is_accepted() -> None:
    xml = ('<?xml version="1.0" encoding="UTF-8" standalone="no"?><domain type="kvm"> <name>debian1</name> '
           "<uuid>0f476e56-67ea-11e1-858e-00216a972a36</uuid> <memory>200000</memory> <currentMemory>200000</currentMemory> "
           '<vcpu>1</vcpu> <os> <type arch="x86_64" machine="pc-0.12">hvm</type> <boot dev="hd"/> </os> <features> <acpi/> '
           '<apic/> <pae/> </features> <clock offset="utc"/> <on_poweroff>destroy</on_poweroff> <on_reboot>restart</on_reboot> '
           "<on_crash>restart</on_crash> <devices> <emulator>/usr/bin/kvm</emulator> <disk device=\"disk\" type=\"file\"> "
           '<driver name="qemu" type="qcow2"/> <source file="path_to_disk_image"/> <target bus="virtio" dev="vda"/> '
           '<address bus="0x00" domain="0x0000" function="0x0" slot="0x05" type="pci"/> </disk> <controller index="0" type="ide"> '
           '<address bus="0x00" domain="0x0000" function="0x1" slot="0x01" type="pci"/> </controller> <interface type="bridge"> '
           '<mac address="52:54:01:84:26:2c"/> <source bridge="virbr0"/> </interface> <serial type="pty"> <target port="0"/> '
           '</serial> <console type="pty"> <target port="0" type="serial"/> </console> <graphics autoport="yes" '
           'listen="0.0.0.0" port="-1" type="vnc"/> <input bus="usb" type="tablet"/> <input bus="ps2" type="mouse"/> '
           '<memballoon model="virtio"> <address bus="0x00" domain="0x0000" function="0x0" slot="0x06" type="pci"/> '
           "</memballoon> </devices> </domain>")
    [spec] = parse_submission({"virtualMachineTemplates": [{"libVirtTemplate": xml}]})
    assert spec.id == "debian1" and spec.requested[:2] == (1.0, 200000.0)
    assert "0.0.0.0" not in spec.xml, "where the console listens is the host's choice"


# -- numbers ----------------------------------------------------------------------------------
BIG = 2**64
NUMERIC = ["vcpus", "memory", "networkCapacityDemand.rxBytes", "networkCapacityDemand.txBytes"]


def template_with(path: str, value: Any) -> dict[str, Any]:
    t: dict[str, Any] = {"vcpus": 1, "memory": 262144, "name": "n1", "networkCapacityDemand": {"rxBytes": 1.0, "txBytes": 1.0}}
    if "." in path:
        outer, inner = path.split(".")
        t[outer][inner] = value
    else:
        t[path] = value
    return t


@pytest.mark.parametrize("path", NUMERIC)
# Numbers written as strings are read as the original's Jackson read them ("2"): only text that
# is no plain number, or one out of bounds once read, is refused.
@pytest.mark.parametrize("value", [BIG, BIG + 1, 2**70, -BIG, math.nan, math.inf, -math.inf, "1e400", "NaN", "0x10",
                                   "one", "1_0", "\u0663", str(BIG), True, False, [], {}, 1e308])
def test_numbers_out_of_bounds_or_of_the_wrong_type_name_their_field(path: str, value: Any) -> None:
    with pytest.raises(InvalidSubmission) as err:
        parse_submission({"virtualMachineTemplates": [template_with(path, value)]})
    assert err.value.field == f"virtualMachineTemplates[0].{path}"


def test_numbers_as_json_decodes_them() -> None:
    # What aiohttp's json.loads makes of hostile literals reaches parse_submission as these.
    for literal in ("18446744073709551616", "NaN", "Infinity", "-Infinity", "1e400", '"two"', '"Infinity"', "true"):
        body = json.loads('{"virtualMachineTemplates": [{"vcpus": ' + literal + ', "memory": 262144, "name": "n"}]}')
        with pytest.raises(InvalidSubmission) as err:
            parse_submission(body)
        assert err.value.field == "virtualMachineTemplates[0].vcpus", literal


@pytest.mark.parametrize("vcpu", [str(BIG), "1e3", "1_0", "\u0663", "-1", "0", "nan", "inf", "0x10", "1025", " "])
def test_vcpu_in_xml_must_be_a_plain_bounded_whole_number(vcpu: str) -> None:
    xml = f'<domain type="kvm"><name>vm1</name><memory>262144</memory><vcpu>{vcpu}</vcpu></domain>'
    assert "vcpu" in str(refusal(xml))


@pytest.mark.parametrize("memory", [str(BIG), str(2**80), "1e9", "1_000_000", "inf", "nan", "-262144", "12", "\u0663\u0663"])
def test_memory_in_xml_must_be_a_plain_bounded_whole_number(memory: str) -> None:
    xml = f'<domain type="kvm"><name>vm1</name><memory>{memory}</memory></domain>'
    assert "memory" in str(refusal(xml))


def test_memory_bounds_apply_after_units_and_current_memory_and_vcpus_are_consistent() -> None:
    assert "memory" in str(refusal('<domain type="kvm"><name>vm1</name><memory unit="TiB">17</memory></domain>'))
    assert "memory" in str(refusal('<domain type="kvm"><name>vm1</name><memory unit="parsecs">1</memory></domain>'))
    assert "currentMemory" in str(refusal('<domain type="kvm"><name>vm1</name><memory>262144</memory>'
                                          "<currentMemory>262145</currentMemory></domain>"))
    assert "current" in str(refusal('<domain type="kvm"><name>vm1</name><memory>262144</memory>'
                                    '<vcpu current="4">2</vcpu></domain>'))
    [spec] = parse_submission({"virtualMachineTemplates": [
        {"libVirtTemplate": '<domain type="kvm"><name>vm1</name><memory unit="GiB">16</memory><vcpu>1024</vcpu></domain>'}]})
    assert spec.requested[:2] == (1024.0, 16 * 1024**2)


# -- names and ids ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a\n", ".", "..", "a/b", "\ud800", "x" * 64, "-a", "", "a b", "\u00e9"])
def test_vm_names_follow_the_shared_id_rule(name: str) -> None:
    with pytest.raises(InvalidSubmission) as err:
        parse_submission({"virtualMachineTemplates": [{"vcpus": 1, "memory": 262144, "name": name}]})
    assert err.value.field == "virtualMachineTemplates[0].name"


def test_names_in_xml_and_other_ids_follow_the_shared_rule() -> None:
    assert "name" in str(refusal('<domain type="kvm"><name>a/b</name><memory>262144</memory></domain>'))
    assert "name" in str(refusal('<domain type="kvm"><name>..</name><memory>262144</memory></domain>'))
    ok = parse_submission({"virtualMachineTemplates": [{"vcpus": 1, "memory": 262144, "name": "x" * 63}]})
    assert ok[0].id == "x" * 63
    for key, value in (("imageId", "../etc/shadow"), ("imageId", "/images/"), ("hostId", "a\n"), ("hostId", 5),
                       ("affinityGroup", ".."), ("antiAffinityGroup", 3)):
        with pytest.raises(InvalidSubmission) as err:
            parse_submission({"virtualMachineTemplates": [{"vcpus": 1, "memory": 262144, "name": "n", key: value}]})
        assert err.value.field == f"virtualMachineTemplates[0].{key}"
    # A path (as the 2.1 client sent): only its last component is kept, naming the image.
    [spec] = parse_submission({"virtualMachineTemplates": [{"vcpus": 1, "memory": 262144, "name": "n",
                                                            "imageId": "/var/lib/images/snooze-tiny"}]})
    assert spec.image_id == "snooze-tiny"


# -- the operator's policy --------------------------------------------------------------------
def test_the_policy_is_the_operators(tmp_path: Path) -> None:
    settings = cfg.from_dict({"templates": {
        "image_directory": str(tmp_path), "devices": ["disk", "interface"], "bridges": ["br-guests"],
        "default_bridge": "br-guests", "block_devices": ["/dev/vg-guests"], "emulators": []}}).templates
    policy = DomainPolicy.from_settings(settings)
    assert "devices" in str(refusal(domain('<graphics type="vnc"/>'), policy))
    assert "virbr0" in str(refusal(domain('<interface type="bridge"><source bridge="virbr0"/></interface>'), policy))
    assert "emulator" in str(refusal(domain("<emulator>/usr/bin/kvm</emulator>"), policy))
    assert "outside" in str(refusal(domain('<disk type="block"><source dev="/dev/sda"/></disk>'), policy))
    [spec] = parse_submission({"virtualMachineTemplates": [{"libVirtTemplate": domain(
        '<disk type="block"><source dev="/dev/vg-guests/vm1"/></disk>'
        f'<disk type="file"><source file="{tmp_path}/a.qcow2"/></disk>'
        '<interface type="bridge"><source bridge="br-guests"/></interface>')}]}, policy)
    assert "/dev/vg-guests/vm1" in spec.xml
    [generated] = parse_submission({"virtualMachineTemplates": [{"vcpus": 1, "memory": 262144, "name": "g"}]}, policy)
    assert 'bridge="br-guests"' in generated.xml, "generated domains join an allowed bridge"


def test_settings_that_cannot_make_a_safe_policy_are_configuration_errors() -> None:
    for bad, match in (({"devices": ["hostdev"]}, "never allowed"), ({"devices": ["toaster"]}, "unknown device kind"),
                       ({"image_directory": "images"}, "absolute"), ({"block_devices": ["/"]}, "other than /"),
                       ({"emulators": [""]}, "non-empty")):
        with pytest.raises(cfg.ConfigError, match=match):
            cfg.from_dict({"templates": bad})


# -- on the host: symlinks, relative paths, the local controller's re-check --------------------
def host_policy(store: Path) -> DomainPolicy:
    return dataclasses.replace(DomainPolicy.default(), image_directory=str(store))


def test_on_the_host_symlinks_are_followed_and_relative_paths_land_in_the_store(tmp_path: Path) -> None:
    store = tmp_path / "images"
    store.mkdir()
    (store / "ok.qcow2").write_bytes(b"")
    (store / "shadow.qcow2").symlink_to("/etc/shadow")
    policy = host_policy(store)
    with pytest.raises(PolicyViolation, match="outside the image store"):
        rebuild_domain(domain('<disk type="file"><source file="shadow.qcow2"/></disk>'), policy, on_host=True)
    # The leader cannot see the host's symlinks: it only checks the text.
    rebuild_domain(domain('<disk type="file"><source file="shadow.qcow2"/></disk>'), policy)
    out = rebuild_domain(domain('<disk type="file"><source file="ok.qcow2"/></disk>'), policy, on_host=True)
    assert out.root.find("devices/disk/source").get("file") == str((store / "ok.qcow2").resolve())  # type: ignore[union-attr]
    with pytest.raises(PolicyViolation, match="domain"):
        rebuild_domain(domain(attrs='type="test"'), dataclasses.replace(policy, domain_types=frozenset({"kvm"})), on_host=True)
    rebuild_domain(domain(attrs='type="test"'), dataclasses.replace(policy, domain_types=frozenset({"kvm"})), on_host=True,
                   test_driver=True)


def test_adaptation_refuses_what_the_hosts_policy_refuses() -> None:
    for xml in (HOSTILE["emulator /bin/sh"][0], HOSTILE["disk on /etc/shadow"][0], HOSTILE["hostdev"][0]):
        with pytest.raises(InvalidDomainXML) as err:
            adapt_domain_xml(xml, name="vm1", mac=None, test_driver=True, image_id=None, policy=DomainPolicy.default())
        assert err.value.code == "INVALID_LIBVIRT_TEMPLATE" and "template policy" in str(err.value)


def test_the_local_controller_rechecks_before_defining(tmp_path: Path) -> None:
    host = tmp_path / "host.xml"
    host.write_text(host_xml(4, 8 * 1024 * 1024))

    async def run() -> None:
        hv = LibvirtHypervisor(f"test://{host}", policy=host_policy(tmp_path / "images"))
        await hv.open()
        try:
            for xml in (domain('<disk type="file"><source file="/etc/shadow"/></disk>', attrs='type="test"'),
                        domain("<hostdev/>", attrs='type="test"'),
                        domain('<serial type="file"><source path="/tmp/x"/></serial>', attrs='type="test"')):
                with pytest.raises(InvalidDomainXML):
                    await hv.start(xml)
            assert await hv.domains() == [], "nothing refused was defined"
            info = await hv.start(domain('<graphics type="vnc" listen="0.0.0.0" port="5000" autoport="no"/>',
                                         attrs='type="test" id="9"'))
            assert info.name == "vm1" and info.state == "RUNNING"
            graphics = ET.fromstring(await hv.xml("vm1")).find("devices/graphics")
            assert graphics is not None and graphics.get("port") != "5000", "the rebuilt XML was defined"
        finally:
            await hv.close()

    asyncio.run(run())


# -- property: whatever arrives, the answer is a spec list or InvalidSubmission ---------------
_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_xmlish = st.sampled_from([x for x, _ in HOSTILE.values()] + [domain()]).flatmap(
    lambda base: st.tuples(st.integers(0, len(base)), st.integers(0, len(base)), st.text(max_size=12)).map(
        lambda cut: base[:cut[0]] + cut[2] + base[cut[1]:]))
_field_values = {"vcpus": _json, "memory": _json, "name": _json | st.text(max_size=70), "imageId": _json,
                 "hostId": _json, "affinityGroup": _json, "networkCapacityDemand": _json | st.fixed_dictionaries(
                     {"rxBytes": _json, "txBytes": _json}), "libVirtTemplate": _json | _xmlish}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.fixed_dictionaries({}, optional=_field_values), min_size=1, max_size=3))
def test_any_template_is_a_spec_or_a_refusal_naming_a_field(templates: list[dict[str, Any]]) -> None:
    try:
        specs = parse_submission({"virtualMachineTemplates": templates})
    except InvalidSubmission as exc:
        assert exc.field.startswith("virtualMachineTemplates[")
        return
    for spec in specs:
        assert all(math.isfinite(x) and 0 <= x < 2**64 for x in spec.requested)
        ET.fromstring(spec.xml)

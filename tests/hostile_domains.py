"""Hostile libVirtTemplates, each with what its refusal must name: shared by the template
policy's unit tests and the end-to-end test through the bootstrap."""

from __future__ import annotations

STORE = "/var/lib/snooze/images"


def domain(devices: str = "", extra: str = "", *, attrs: str = 'type="kvm"', os: str = "") -> str:
    return (f"<domain {attrs}><name>vm1</name><memory>262144</memory><vcpu>1</vcpu>"
            f"<os><type arch=\"x86_64\">hvm</type>{os}</os>{extra}<devices>{devices}</devices></domain>")


# -- hostile templates: each refused, naming the offending element ---------------------------
HOSTILE = {
    "disk on /etc/shadow": (domain('<disk type="file" device="disk"><source file="/etc/shadow"/></disk>'), "/etc/shadow"),
    "disk on /dev/sda as a file": (domain('<disk type="file"><source file="/dev/sda"/></disk>'), "devices/disk/source"),
    "block disk /dev/sda": (domain('<disk type="block"><source dev="/dev/sda"/></disk>'), "devices/disk"),
    "relative escape": (domain('<disk type="file"><source file="../../etc/shadow"/></disk>'), "leaves the image store"),
    "escape through ..": (domain(f'<disk type="file"><source file="{STORE}/../../../etc/shadow"/></disk>'), "outside the image store"),
    "store prefix trick": (domain(f'<disk type="file"><source file="{STORE}-evil/x.qcow2"/></disk>'), "outside the image store"),
    "second disk bad": (domain(f'<disk type="file"><source file="{STORE}/ok.qcow2"/></disk>'
                               '<disk type="file"><source file="/root/.ssh/id_rsa"/></disk>'), "devices/disk[2]/source"),
    "network disk": (domain('<disk type="network"><source protocol="nbd" name="x"><host name="10.0.0.1"/></source></disk>'),
                     "type 'network'"),
    "dir disk": (domain('<disk type="dir"><source dir="/etc"/></disk>'), "devices/disk"),
    "volume disk": (domain('<disk type="volume"><source pool="default" volume="x"/></disk>'), "devices/disk"),
    "lun passthrough": (domain('<disk type="block" device="lun"><source dev="/dev/sdb"/></disk>'), "devices/disk"),
    "backing store on the host": (domain(f'<disk type="file"><source file="{STORE}/a.qcow2"/><backingStore type="file">'
                                         '<source file="/etc/shadow"/></backingStore></disk>'), "backingStore"),
    "emulator /bin/sh": (domain("<emulator>/bin/sh</emulator>"), "devices/emulator"),
    "emulator path trick": (domain("<emulator>/usr/bin/../../bin/sh</emulator>"), "devices/emulator"),
    "qemu:commandline": ('<domain type="kvm" xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0"><name>vm1</name>'
                         '<memory>262144</memory><qemu:commandline><qemu:arg value="-device"/></qemu:commandline></domain>',
                         "qemu:commandline"),
    "other namespace": ('<domain type="kvm" xmlns:x="urn:x"><name>vm1</name><memory>262144</memory><x:y/></domain>', "namespace"),
    "namespaced attribute": ('<domain type="kvm" xmlns:x="urn:x" x:a="1"><name>vm1</name><memory>262144</memory></domain>',
                             "namespace"),
    "hostdev": (domain('<hostdev mode="subsystem" type="pci"><source><address domain="0" bus="0" slot="2"/></source></hostdev>'),
                "devices/hostdev"),
    "filesystem passthrough": (domain('<filesystem type="mount"><source dir="/"/><target dir="root"/></filesystem>'),
                               "devices/filesystem"),
    "seclabel none": (domain(extra='<seclabel type="none"/>'), "seclabel"),
    "disk seclabel": (domain(f'<disk type="file"><source file="{STORE}/a.qcow2"><seclabel relabel="no"/></source></disk>'),
                      "seclabel"),
    "ethernet with script": (domain('<interface type="ethernet"><script path="/tmp/x.sh"/></interface>'), "devices/interface"),
    "bridge with script": (domain('<interface type="bridge"><source bridge="virbr0"/><script path="/tmp/x.sh"/></interface>'),
                           "script"),
    "direct to host nic": (domain('<interface type="direct"><source dev="eth0" mode="bridge"/></interface>'), "devices/interface"),
    "user networking": (domain('<interface type="user"/>'), "devices/interface"),
    "bridge not allowed": (domain('<interface type="bridge"><source bridge="br-mgmt"/></interface>'), "br-mgmt"),
    "interface rom file": (domain('<interface type="bridge"><source bridge="virbr0"/><rom file="/etc/shadow"/></interface>'),
                           "rom"),
    "serial to a host file": (domain('<serial type="file"><source path="/etc/cron.d/x"/></serial>'), "devices/serial"),
    "serial to a host device": (domain('<serial type="dev"><source path="/dev/ttyS0"/></serial>'), "devices/serial"),
    "console tcp": (domain('<console type="tcp"><source mode="bind" host="0.0.0.0" service="22"/></console>'), "devices/console"),
    "chardev log": (domain('<serial type="pty"><log file="/etc/passwd"/></serial>'), "log"),
    "rng egd": (domain('<rng model="virtio"><backend model="egd" type="tcp"/></rng>'), "devices/rng/backend"),
    "rng from a host file": (domain('<rng model="virtio"><backend model="random">/etc/shadow</backend></rng>'), "backend"),
    "input passthrough": (domain('<input type="passthrough" bus="virtio"><source evdev="/dev/input/event0"/></input>'),
                          "devices/input"),
    "graphics sdl": (domain('<graphics type="sdl" display=":0"/>'), "devices/graphics"),
    "graphics unix socket": (domain('<graphics type="vnc" socket="/etc/x"/>'), "socket"),
    "watchdog dump": (domain('<watchdog model="i6300esb" action="dump"/>'), "devices/watchdog"),
    "tpm": (domain('<tpm model="tpm-tis"><backend type="passthrough"/></tpm>'), "devices/tpm"),
    "kernel outside the store": (domain(os="<kernel>/boot/vmlinuz</kernel>"), "os/kernel"),
    "initrd outside the store": (domain(os="<initrd>/etc/shadow</initrd>"), "os/initrd"),
    "loader outside the store": (domain(os='<loader readonly="yes" type="pflash">/usr/share/OVMF/OVMF_CODE.fd</loader>'),
                                 "os/loader"),
    "nvram template outside": (domain(os=f'<nvram template="/etc/shadow">{STORE}/v.fd</nvram>'), "os/nvram"),
    "smbios host": (domain(os='<smbios mode="host"/>'), "os/smbios"),
    "memory backing": (domain(extra="<memoryBacking><hugepages/></memoryBacking>"), "memoryBacking"),
    "cpu pinning": (domain(extra='<cputune><vcpupin vcpu="0" cpuset="0"/></cputune>'), "cputune"),
    "coredump on crash": (domain(extra="<on_crash>coredump-destroy</on_crash>"), "on_crash"),
    "unknown element": (domain(extra="<metadata><x/></metadata>"), "metadata"),
    "unknown attribute": (domain('<disk type="file" snapshot="external"/>'), "snapshot"),
    "domain type lxc": (domain(attrs='type="lxc"'), "domain"),
    "two memory elements": (domain(extra="<memory>999999999</memory>"), "memory[2]"),
    "not a domain": ("<network><name>x</name></network>", "<domain>"),
}

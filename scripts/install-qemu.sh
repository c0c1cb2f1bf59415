#!/bin/sh
# Install what real live migration between private libvirtd hosts needs (snooze.dev.sim.libvirtd,
# tests/integration/test_qemu_migration.py). Idempotent and non-interactive; run as root.
#
# Needed: libvirt-daemon (libvirtd), libvirt-daemon-driver-qemu, qemu-system-x86 (QEMU with
# SeaBIOS). Useful and small: libvirt-clients (virsh, for debugging) and qemu-utils (qemu-img,
# for disk images). Deliberately NOT libvirt-daemon-system: it would bring polkit, a firewall
# and init scripts only to create the libvirt-qemu user and the /var/{lib,cache,log}/libvirt
# directories, which snooze.dev.sim.libvirtd provides inside its own mount namespaces instead
# (nothing is created outside its state directory). None of these packages ships an init
# script or a systemd unit, so installing them starts no daemon; a policy-rc.d that forbids
# starting services is put in place for the install anyway when the machine has none.
#
# The guest image snooze-tiny (snooze.dev.guestimage, scripts/build-guest-image) is built from
# Debian packages only: linux-image-amd64 (the guest's kernel and its modules in /lib/modules;
# the host's own kernel is not touched, and nothing boots it on the host), busybox-static (the
# guest's userland; not Debian's dynamic busybox), syslinux + syslinux-common (the boot sector
# and loader of its FAT disk), mtools + dosfstools (FAT volumes written without mounting: the
# disk and the NoCloud config drives of localcontroller.images.configdrive). The kernel's
# postinst would build an initramfs for the host in /boot, which nothing uses: INITRD=No skips
# that step of /etc/kernel/postinst.d/initramfs-tools (initramfs-tools' own trigger may still
# make one: slow, harmless).
set -eu

PACKAGES="libvirt-daemon libvirt-daemon-driver-qemu qemu-system-x86 libvirt-clients qemu-utils"
PACKAGES="$PACKAGES linux-image-amd64 busybox-static syslinux syslinux-common mtools dosfstools"

missing=""
for package in $PACKAGES; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
    if [ "$status" != "installed" ]; then
        missing="$missing $package"
    fi
done

if [ -z "$missing" ]; then
    echo "install-qemu.sh: already installed:$(printf ' %s' $PACKAGES)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-qemu.sh: must run as root to install:$missing" >&2
    exit 1
fi

policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT INT TERM
fi

export DEBIAN_FRONTEND=noninteractive
# needrestart, where installed, would otherwise ask or restart services.
export NEEDRESTART_SUSPEND=1
export INITRD=No
echo "install-qemu.sh: installing$missing"
if ! apt-get install -y --no-install-recommends $missing; then
    apt-get update
    apt-get install -y --no-install-recommends $missing
fi

for binary in /usr/sbin/libvirtd /usr/bin/qemu-system-x86_64 /bin/busybox /usr/bin/syslinux /usr/bin/mcopy /sbin/mkfs.vfat; do
    if [ ! -x "$binary" ]; then
        echo "install-qemu.sh: $binary missing after install" >&2
        exit 1
    fi
done
echo "install-qemu.sh: done"

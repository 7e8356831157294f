#!/bin/sh
# Builds the stand-in "Talos" boot assets used by tests/firmware_e2e.rs:
#   OUT_DIR/vmlinuz-amd64        a copy of Debian's /boot/vmlinuz-*-amd64
#   OUT_DIR/initramfs-amd64.xz   busybox + NIC modules; its /init brings up eth0 with
#                                DHCP, fetches talos.config= from /proc/cmdline and prints
#   BOOTPLANE-MARKER mac=<mac> ip=<ip> config_status=<status|error> config_bytes=<n> config_sha256=<hex|none>
#   config-kinds: <the kind of each document after the first, in order>
# on the serial console (or MARKER-FAILED <reason>), then powers off. The SHA-256 names the
# exact bytes fetched, so the test can hold them against what bootplane logged and renders.
# Needs the Debian packages linux-image-amd64 busybox-static kmod cpio xz-utils.
# Idempotent: rebuilds only when an input (this script, kernel, busybox, modules) changed.
set -eu

die() { echo "build-standin: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 OUT_DIR"
OUT=$1

for tool in cpio xz modprobe sha256sum find sort; do
    command -v "$tool" >/dev/null 2>&1 || die "missing tool '$tool' (apt-get install cpio xz-utils kmod coreutils findutils)"
done
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || die "missing $BUSYBOX (apt-get install busybox-static)"
if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed'; then
    die "package busybox-static is not installed (apt-get install busybox-static); a dynamic busybox cannot run in the initramfs"
fi

# Newest Debian kernel image, e.g. /boot/vmlinuz-6.1.0-56-amd64.
KERNEL=$(ls /boot/vmlinuz-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)
[ -n "$KERNEL" ] && [ -r "$KERNEL" ] || die "no readable /boot/vmlinuz-*-amd64 (apt-get install linux-image-amd64)"
KVER=${KERNEL#/boot/vmlinuz-}
[ -d "/lib/modules/$KVER" ] || die "no /lib/modules/$KVER for kernel $KERNEL (reinstall linux-image-$KVER)"

# NIC drivers and their dependencies, in load order, without duplicates.
MODULE_PATHS=$(
    for m in virtio_pci virtio_net e1000; do
        modprobe -S "$KVER" --show-depends "$m" 2>/dev/null \
            || die "modprobe -S $KVER --show-depends $m failed (is /lib/modules/$KVER complete? run depmod $KVER)"
    done | awk '$1 == "insmod" && !seen[$2]++ { print $2 }'
)
[ -n "$MODULE_PATHS" ] || die "no NIC modules found for $KVER"
echo "$MODULE_PATHS" | grep -q '/virtio_net\.ko' || die "virtio_net module not found for $KVER"

SELF=$(readlink -f "$0")
# shellcheck disable=SC2086
INPUT_HASH=$(sha256sum "$SELF" "$KERNEL" "$BUSYBOX" $MODULE_PATHS | sha256sum | cut -d' ' -f1)

mkdir -p "$OUT"
STAMP="$OUT/.standin-inputs"
if [ -f "$OUT/vmlinuz-amd64" ] && [ -f "$OUT/initramfs-amd64.xz" ] && [ -f "$STAMP" ] \
    && [ "$(cat "$STAMP")" = "$INPUT_HASH" ]; then
    echo "build-standin: up to date in $OUT (kernel $KVER)"
    exit 0
fi

WORK=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOT="$WORK/root"
mkdir -p "$ROOT/bin" "$ROOT/sbin" "$ROOT/dev" "$ROOT/proc" "$ROOT/sys" "$ROOT/tmp" \
    "$ROOT/etc" "$ROOT/lib/modules" "$ROOT/usr/share/udhcpc"

cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in sh mount insmod ip udhcpc wget cat grep sed head tr wc sleep poweroff \
    dmesg ifconfig route echo ls mkdir stat awk cut timeout sha256sum; do
    ln -s busybox "$ROOT/bin/$applet"
done

: > "$ROOT/lib/modules/load-order"
for path in $MODULE_PATHS; do
    base=$(basename "$path")
    case "$base" in
        *.ko.xz) name=${base%.xz}; xz -dc "$path" > "$ROOT/lib/modules/$name" ;;
        *.ko.zst) name=${base%.zst}
            command -v zstd >/dev/null 2>&1 || die "module $path is zstd-compressed but zstd is missing (apt-get install zstd)"
            zstd -dcq "$path" > "$ROOT/lib/modules/$name" ;;
        *.ko.gz) name=${base%.gz}; gzip -dc "$path" > "$ROOT/lib/modules/$name" ;;
        *.ko) name=$base; cp "$path" "$ROOT/lib/modules/$name" ;;
        *) die "unexpected module file $path" ;;
    esac
    echo "$name" >> "$ROOT/lib/modules/load-order"
done

cat > "$ROOT/usr/share/udhcpc/default.script" <<'SCRIPT'
#!/bin/sh
# udhcpc hook: apply the leased address, record it for /init.
case "$1" in
    deconfig)
        ip -4 addr flush dev "$interface"
        ip link set "$interface" up
        ;;
    bound|renew)
        ip -4 addr flush dev "$interface"
        if [ -n "${mask:-}" ]; then
            ip addr add "$ip/$mask" dev "$interface"
        else
            ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}"
        fi
        if [ -n "${router:-}" ]; then
            for r in $router; do ip route add default via "$r" dev "$interface" && break; done
        fi
        echo "$ip" > /tmp/dhcp-ip
        echo "${serverid:-}" > /tmp/dhcp-server
        ;;
esac
exit 0
SCRIPT
chmod 755 "$ROOT/usr/share/udhcpc/default.script"

cat > "$ROOT/init" <<'INIT'
#!/bin/sh
# Stand-in for Talos: prove the boot chain reached an OS that can fetch its config.
export PATH=/bin:/sbin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# The marker goes straight to the serial port so it lands in QEMU's serial file
# whichever console= comes last on the command line.
say() {
    if [ -c /dev/ttyS0 ]; then echo "$*" > /dev/ttyS0; else echo "$*"; fi
}
finish() {
    sleep 0.2
    poweroff -f
    sleep 5
}
fail() {
    dmesg -n 1 2>/dev/null
    say "MARKER-FAILED $*"
    finish
}

config_url=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        talos.config=*) config_url=${arg#talos.config=} ;;
    esac
done
[ -n "$config_url" ] || fail "no talos.config= on the kernel command line: $(cat /proc/cmdline)"

for m in $(cat /lib/modules/load-order); do
    insmod "/lib/modules/$m" || echo "stand-in: insmod $m failed"
done

i=0
while [ ! -e /sys/class/net/eth0 ]; do
    i=$((i + 1))
    [ "$i" -le 100 ] || fail "no eth0 after loading $(cat /lib/modules/load-order | tr '\n' ' ')"
    sleep 0.1
done
mac=$(cat /sys/class/net/eth0/address)

ip link set lo up
ip link set eth0 up
udhcpc -i eth0 -s /usr/share/udhcpc/default.script -f -q -n -t 10 -T 2 -A 1 \
    || fail "udhcpc got no lease on eth0 mac=$mac"
[ -s /tmp/dhcp-ip ] || fail "udhcpc did not apply an address on eth0 mac=$mac"
ip=$(cat /tmp/dhcp-ip)

# (busybox 1.35's wget -T crashes; bound it with timeout instead)
timeout 20 wget -S -O /tmp/config "$config_url" 2> /tmp/wget.log
status=$(grep -o 'HTTP/[0-9.]* [0-9][0-9][0-9]' /tmp/wget.log | tail -n 1 | cut -d' ' -f2)
[ -n "$status" ] || status=error
bytes=0
[ -f /tmp/config ] && bytes=$(wc -c < /tmp/config | tr -d ' ')

sha=none
[ -s /tmp/config ] && sha=$(sha256sum /tmp/config | cut -d' ' -f1)

dmesg -n 1 2>/dev/null
say "BOOTPLANE-MARKER mac=$mac ip=$ip config_status=$status config_bytes=$bytes config_sha256=$sha"
if [ "$status" = error ]; then
    say "stand-in: wget $config_url: $(tr '\n' ' ' < /tmp/wget.log)"
fi
if [ -s /tmp/config ]; then
    # Talos 1.12+ configs are several YAML documents; each after the first names its kind.
    say "config-kinds: $(grep -E '^kind:' /tmp/config | sed -e 's/^kind:[[:space:]]*//' | tr '\n' ' ')"
fi
finish
INIT
chmod 755 "$ROOT/init"

# Deterministic archive: sorted names, fixed mtimes.
find "$ROOT" -exec touch -h -d @0 {} +
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible) \
    | xz --check=crc32 -T1 -6 > "$WORK/initramfs-amd64.xz"
cp "$KERNEL" "$WORK/vmlinuz-amd64"

mv -f "$WORK/vmlinuz-amd64" "$OUT/vmlinuz-amd64"
mv -f "$WORK/initramfs-amd64.xz" "$OUT/initramfs-amd64.xz"
echo "$INPUT_HASH" > "$STAMP"
echo "build-standin: built $OUT/vmlinuz-amd64 and $OUT/initramfs-amd64.xz (kernel $KVER, modules: $(echo $MODULE_PATHS | xargs -n1 basename | tr '\n' ' '))"

#!/usr/bin/env python3
"""Builds the Containerfile's final stage without a container engine, then runs it.

No container engine runs on the machines bootplane is developed and tested on, and base
images cannot be pulled there, so this script proves the runtime stage the closest way it can:

1. it bootstraps the stage's base (Debian bookworm, `--variant=minbase`, the same package set
   as the slim image's) into a directory with debootstrap;
2. it carries out the final stage of the Containerfile instruction by instruction: `RUN` in a
   chroot (as the stage's user at that point), `COPY --from=build` of the release binary,
   `USER`, `WORKDIR`, `ENV`, `HEALTHCHECK`, `ENTRYPOINT`, `CMD` (any other instruction fails
   the run, so the Containerfile cannot drift from what is proven here);
3. it starts the entrypoint as the container would under
   `--cap-drop ALL --cap-add NET_BIND_SERVICE --cap-add NET_RAW --network host`: as the
   stage's user, with only those capabilities in the bounding set, inside a network namespace
   of its own with a LAN interface (one end of a veth pair) and a default route;
4. it checks: the HEALTHCHECK command passes, bootplane listens on 67, 4011 (proxyDHCP) and
   69 (TFTP) as the unprivileged user, its effective capabilities are no more than the two it
   was granted, `images list` and `serve --help` work inside, the image is small, and SIGTERM
   stops it cleanly.

Usage: runtime_stage.py BINARY [--work DIR] [--mirror URL] [--keep]
Needs root, debootstrap, iproute2 and access to a Debian mirror (the host's own by default).
Exit status: 0 all checks passed, 1 a check failed, 2 the script could not run.
"""

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = ROOT / "Containerfile"
# Debian images the final stage may start from, and the suite each one is.
BASES = {
    "docker.io/library/debian:bookworm-slim": "bookworm",
    "debian:bookworm-slim": "bookworm",
}
# Linux capability numbers (include/uapi/linux/capability.h).
CAPS = {"NET_BIND_SERVICE": 10, "NET_RAW": 13}
GRANTED = ["NET_BIND_SERVICE", "NET_RAW"]
# The final image, unpacked, must stay under this (the binary included).
SIZE_LIMIT_MB = 200
HEALTH_WAIT_S = 30
LAN_CIDR = "10.231.0.1/24"
LAN_GATEWAY = "10.231.0.254"


class Failed(Exception):
    """A check did not pass."""


class CannotRun(Exception):
    """The script could not do its work (missing tool, no mirror)."""


def sh(argv, check=True, capture=True, env=None, timeout=None):
    result = subprocess.run(
        argv,
        check=False,
        capture_output=capture,
        text=True,
        env=env,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise Failed(
            f"`{shlex.join(argv)}` exited {result.returncode}:\n{result.stdout or ''}{result.stderr or ''}"
        )
    return result


def instructions(text):
    """The Containerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    out, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    if pending:
        raise Failed("the Containerfile ends in a continuation line")
    return out


def final_stage(all_instructions):
    starts = [i for i, (k, _) in enumerate(all_instructions) if k == "FROM"]
    if not starts:
        raise Failed("the Containerfile has no FROM")
    stage = all_instructions[starts[-1]:]
    base = stage[0][1].split()[0]
    if base not in BASES:
        raise Failed(f"the final stage starts from {base}, which this script cannot bootstrap")
    return BASES[base], stage[1:]


def parse_env(args):
    """`ENV K=V K2="v 2"` (or the old `ENV K V`) into pairs."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return [(words[0], " ".join(words[1:]))]
    pairs = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise Failed(f"ENV word without '=': {word}")
        pairs.append((key, value))
    return pairs


def exec_form(args):
    value = json.loads(args)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Failed(f"expected a JSON array of strings: {args}")
    return value


class Rootfs:
    """The bootstrapped root, with /proc and /dev mounted while commands run in it."""

    def __init__(self, path):
        self.path = path
        self.mounts = []

    def mount(self):
        for target, argv in [
            ("proc", ["mount", "-t", "proc", "proc"]),
            ("dev", ["mount", "--bind", "/dev"]),
            ("dev/pts", ["mount", "--bind", "/dev/pts"]),
        ]:
            where = self.path / target
            where.mkdir(parents=True, exist_ok=True)
            sh(argv + [str(where)])
            self.mounts.append(where)
        # Name resolution for apt inside the root (the container gets the host's).
        shutil.copyfile("/etc/resolv.conf", self.path / "etc/resolv.conf")

    def unmount(self):
        for where in reversed(self.mounts):
            sh(["umount", "-l", str(where)], check=False)
        self.mounts = []

    def user_ids(self, user):
        """uid and gid of `user` (a name or a number) in the root's passwd."""
        for line in (self.path / "etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == user or fields[2] == user:
                return int(fields[2]), int(fields[3])
        raise Failed(f"USER {user} does not exist in the image")


def bootstrap(suite, root, mirror):
    marker = root / ".bootstrapped"
    if marker.exists():
        print(f"== reusing the {suite} root in {root}")
        return
    if root.exists():
        shutil.rmtree(root)
    if not shutil.which("debootstrap"):
        raise CannotRun("debootstrap is not installed (apt-get install debootstrap)")
    print(f"== debootstrap --variant=minbase {suite} ({mirror})")
    started = time.monotonic()
    result = sh(
        ["debootstrap", "--variant=minbase", suite, str(root), mirror],
        check=False,
    )
    if result.returncode != 0:
        raise CannotRun(f"debootstrap failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    slim(root)
    marker.touch()
    print(f"   done in {time.monotonic() - started:.0f} s")


# What Debian's -slim images leave out (their dpkg excludes), applied to the bootstrapped root
# so that later package installs leave it out too and the size check is a fair one.
SLIM_EXCLUDES = """path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
"""


# And what Debian's container images tell apt: keep no downloaded packages and no package cache.
APT_CLEAN = """DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
"""


def slim(root):
    (root / "etc/dpkg/dpkg.cfg.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/dpkg/dpkg.cfg.d/slim").write_text(SLIM_EXCLUDES)
    (root / "etc/apt/apt.conf.d/docker-clean").write_text(APT_CLEAN)
    for cache in (root / "var/cache/apt").glob("*.bin"):
        cache.unlink()
    for pattern in ("usr/share/man/*", "usr/share/info/*", "usr/share/groff/*",
                    "usr/share/lintian/*", "var/cache/apt/archives/*.deb",
                    "var/lib/apt/lists/*"):
        for path in root.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    for path in (root / "usr/share/locale").glob("*"):
        if path.name != "locale.alias":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    for doc in (root / "usr/share/doc").glob("*"):
        if doc.is_dir():
            for item in doc.iterdir():
                if item.name != "copyright":
                    shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()


def host_mirror():
    """The Debian mirror this host's apt uses, so a proxy or local mirror is honoured."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    listing = Path("/etc/apt/sources.list")
    if listing.exists():
        for line in listing.read_text().splitlines():
            words = line.split()
            if len(words) > 2 and words[0] == "deb" and "security" not in words[1]:
                return words[1]
    return "http://deb.debian.org/debian"


class Stage:
    """The final stage's state while its instructions are carried out."""

    def __init__(self, rootfs, binary):
        self.rootfs = rootfs
        self.binary = binary
        self.user = "root"
        self.workdir = "/"
        self.env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
        self.healthcheck = None
        self.entrypoint = []
        self.cmd = []
        self.volumes = []

    def chroot_argv(self, argv, user=None, bounding=None):
        """argv run inside the root as `user`, with the stage's environment."""
        uid, gid = self.rootfs.user_ids(user or self.user)
        setpriv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
        if bounding is not None:
            setpriv.append("--bounding-set=-all," + ",".join("+" + c.lower() for c in bounding))
        env = ["env", "-i"] + [f"{k}={v}" for k, v in self.env.items()]
        if uid != 0 and "HOME" not in self.env:
            env.append(f"HOME={self.workdir}")
        inner = setpriv + ["--"] + env + [
            "sh", "-c", 'cd "$0" && exec "$@"', self.workdir
        ] + argv
        return ["chroot", str(self.rootfs.path)] + inner

    def apply(self, keyword, args):
        if keyword == "RUN":
            print(f"== RUN {args[:100]}{'…' if len(args) > 100 else ''}")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            result = subprocess.run(
                self.chroot_argv(["/bin/sh", "-c", args]), env=env, capture_output=True, text=True
            )
            if result.returncode != 0:
                raise Failed(f"RUN failed ({result.returncode}):\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
        elif keyword == "COPY":
            words = shlex.split(args)
            if len(words) != 3 or words[0] != "--from=build" or not words[1].endswith("/bootplane"):
                raise Failed(f"COPY this script cannot reproduce: {args}")
            dest = self.rootfs.path / words[2].lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            # The build stage builds without debug info (CARGO_PROFILE_RELEASE_DEBUG=0 in the
            # Containerfile); the release binary here has line tables for profiling, so they
            # are stripped on the way in. The code is the same.
            sh(["objcopy", "--strip-debug", str(self.binary), str(dest)])
            os.chmod(dest, 0o755)
            print(f"== COPY {self.binary} -> {words[2]} (debug info stripped)")
        elif keyword == "USER":
            self.rootfs.user_ids(args)
            self.user = args
        elif keyword == "WORKDIR":
            self.workdir = args
            (self.rootfs.path / args.lstrip("/")).mkdir(parents=True, exist_ok=True)
        elif keyword == "ENV":
            for key, value in parse_env(args):
                self.env[key] = value
        elif keyword == "VOLUME":
            self.volumes = exec_form(args) if args.startswith("[") else args.split()
        elif keyword == "EXPOSE":
            pass
        elif keyword == "HEALTHCHECK":
            _, sep, command = args.partition(" CMD ")
            if not sep:
                raise Failed(f"HEALTHCHECK without CMD: {args}")
            self.healthcheck = command.strip()
        elif keyword == "ENTRYPOINT":
            self.entrypoint = exec_form(args)
        elif keyword == "CMD":
            self.cmd = exec_form(args)
        else:
            raise Failed(f"instruction this script cannot reproduce: {keyword} {args}")


def effective_caps(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise Failed(f"no CapEff for pid {pid}")


def listening(ns, uid):
    """UDP ports bound in `ns` by processes of `uid`."""
    out = sh(["ip", "netns", "exec", ns, "ss", "-uln", "-e", "-H"]).stdout
    ports = set()
    for line in out.splitlines():
        if f"uid:{uid} " not in line + " ":
            continue
        local = line.split()[3]
        ports.add(int(local.rsplit(":", 1)[1]))
    return ports


def image_size_mb(root):
    out = sh(["du", "-sxm", "--exclude=./proc", "--exclude=./dev", str(root)]).stdout
    return int(out.split()[0])


def run_checks(stage, ns, log_path):
    uid, _ = stage.rootfs.user_ids(stage.user)
    if uid == 0:
        raise Failed("the final stage runs as root; it must switch to an unprivileged USER")
    argv = stage.chroot_argv(stage.entrypoint + stage.cmd, bounding=GRANTED)
    print(f"== starting {' '.join(stage.entrypoint + stage.cmd)} as {stage.user} (uid {uid}) "
          f"with only {', '.join(GRANTED)}")
    log = open(log_path, "w")
    proc = subprocess.Popen(["ip", "netns", "exec", ns] + argv, stdout=log, stderr=log)
    try:
        health = stage.chroot_argv(["/bin/sh", "-c", stage.healthcheck])
        deadline = time.monotonic() + HEALTH_WAIT_S
        while True:
            if proc.poll() is not None:
                raise Failed(f"bootplane exited ({proc.returncode}) before it was healthy:\n"
                             + Path(log_path).read_text()[-3000:])
            if sh(["ip", "netns", "exec", ns] + health, check=False).returncode == 0:
                break
            if time.monotonic() > deadline:
                raise Failed(f"HEALTHCHECK did not pass within {HEALTH_WAIT_S} s:\n"
                             + Path(log_path).read_text()[-3000:])
            time.sleep(0.3)
        print("   HEALTHCHECK passes")

        # The server process: the entrypoint's pid after setpriv/env/sh exec'd into it.
        pid = int(sh(["pgrep", "-n", "-u", str(uid), "-x", "bootplane"]).stdout.split()[0])
        caps = effective_caps(pid)
        allowed = sum(1 << CAPS[c] for c in GRANTED)
        if caps & ~allowed:
            raise Failed(f"bootplane runs with capabilities beyond {GRANTED}: CapEff={caps:#x}")
        if not caps & (1 << CAPS["NET_BIND_SERVICE"]):
            raise Failed("bootplane lacks CAP_NET_BIND_SERVICE: the binary's file capability was lost")
        print(f"   effective capabilities {caps:#x} (no more than {', '.join(GRANTED)})")

        ports = listening(ns, uid)
        missing = {67, 69, 4011} - ports
        if missing:
            raise Failed(f"bootplane (uid {uid}) does not listen on UDP {sorted(missing)}; it has {sorted(ports)}")
        print(f"   listening on UDP {sorted(ports)} as uid {uid}")

        for extra in (["images", "list"], ["serve", "--help"]):
            result = sh(["ip", "netns", "exec", ns] + stage.chroot_argv(stage.entrypoint + extra),
                        check=False)
            if result.returncode != 0:
                raise Failed(f"`bootplane {' '.join(extra)}` failed inside the image:\n"
                             f"{result.stdout}{result.stderr}")
        print("   `bootplane images list` and `bootplane serve --help` work inside the image")

        os.kill(pid, signal.SIGTERM)
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            raise Failed("bootplane did not stop within 15 s of SIGTERM")
        if code != 0:
            raise Failed(f"bootplane exited {code} after SIGTERM:\n" + Path(log_path).read_text()[-3000:])
        print("   SIGTERM: clean exit")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("binary", type=Path, help="the release bootplane binary to copy in")
    parser.add_argument("--work", type=Path, default=ROOT / "target/container-stage")
    parser.add_argument("--mirror", default=None, help="Debian mirror [default: the host's]")
    parser.add_argument("--keep", action="store_true", help="keep the root after the run")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("runtime_stage.py needs root (debootstrap, chroot, network namespaces)", file=sys.stderr)
        return 2
    if not args.binary.is_file():
        print(f"no binary at {args.binary} (cargo build --release)", file=sys.stderr)
        return 2

    suite, steps = final_stage(instructions(CONTAINERFILE.read_text()))
    args.work.mkdir(parents=True, exist_ok=True)
    base = args.work / f"{suite}-minbase"
    image = args.work / "image"
    ns = f"bpct-{os.getpid()}"
    rootfs = Rootfs(image)
    try:
        bootstrap(suite, base, args.mirror or host_mirror())
        if image.exists():
            shutil.rmtree(image)
        # A fresh copy of the base for every run, so each run starts from the base image.
        sh(["cp", "-a", str(base), str(image)])
        rootfs.mount()
        stage = Stage(rootfs, args.binary)
        for keyword, rest in steps:
            stage.apply(keyword, rest)
        if not stage.healthcheck or not stage.entrypoint:
            raise Failed("the final stage needs a HEALTHCHECK and an ENTRYPOINT")
        if not any(v.startswith(stage.env.get("BOOTPLANE_DATA_DIR", "\0")) for v in stage.volumes):
            raise Failed(f"the data directory {stage.env.get('BOOTPLANE_DATA_DIR')} is not a VOLUME")

        sh(["ip", "netns", "add", ns])
        for argv in (
            ["ip", "-n", ns, "link", "set", "lo", "up"],
            ["ip", "-n", ns, "link", "add", "lan0", "type", "veth", "peer", "name", "lan1"],
            ["ip", "-n", ns, "link", "set", "lan1", "up"],
            ["ip", "-n", ns, "addr", "add", LAN_CIDR, "dev", "lan0"],
            ["ip", "-n", ns, "link", "set", "lan0", "up"],
            ["ip", "-n", ns, "route", "add", "default", "via", LAN_GATEWAY],
        ):
            sh(argv)
        run_checks(stage, ns, args.work / "serve.log")

        size = image_size_mb(image)
        base_mb = image_size_mb(base)
        if size > SIZE_LIMIT_MB:
            raise Failed(f"the final image is {size} MB unpacked, over {SIZE_LIMIT_MB} MB")
        binary_mb = (image / stage.entrypoint[0].lstrip("/")).stat().st_size // 1_000_000
        print(f"   image size {size} MB unpacked: base {base_mb} MB, binary {binary_mb} MB, "
              f"packages {size - base_mb - binary_mb} MB")
        print("runtime stage: all checks passed")
        return 0
    except Failed as e:
        print(f"runtime stage: FAILED: {e}", file=sys.stderr)
        return 1
    except CannotRun as e:
        print(f"runtime stage: cannot run: {e}", file=sys.stderr)
        return 2
    finally:
        rootfs.unmount()
        sh(["ip", "netns", "delete", ns], check=False)
        if not args.keep and image.exists():
            shutil.rmtree(image, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

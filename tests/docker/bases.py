"""Base images for the docker test when no registry can be reached, and the builder's pip set-up.

Stand-ins are Debian bookworm root filesystems made with ``debootstrap --variant=minbase`` from this
machine's Debian mirror and imported under exactly the names ``deploy/Dockerfile`` and
``docker-compose.yml`` use. They copy what the project relies on from the official images:

* ``python:3.11-slim-bookworm``: Debian's Python 3.11 with venv/ensurepip, ``python``/``python3`` in
  /usr/local/bin, ``PATH`` and ``LANG`` set as in the official image.
* ``eclipse-mosquitto:2``: Debian's Mosquitto 2 and its clients, the ``mosquitto`` user with uid/gid
  1883, /mosquitto/{config,data,log} owned by it, the official ``/docker-entrypoint.sh`` (as root it
  runs ``chown -R mosquitto:mosquitto /mosquitto``), ``VOLUME /mosquitto/data /mosquitto/log``.

The root filesystems are cached as tarballs under ``<cache>/rootfs/`` (a second run only imports
them). The images themselves are removed by the test at the end.

pip inside the build needs this machine's pip set-up (a TLS-intercepting egress CA, local
find-links and file:// indexes). ``builder_image`` builds a small image on top of the Python base
with the host's CA bundle and a pip.conf translated from ``pip config list`` and ``PIP_*``: local
directories are served read-only over HTTP on 127.0.0.1 for the duration of the build (the build
uses the host network), the constraint file is copied in. The Dockerfile's ``BUILDER_IMAGE`` build
argument points the builder stage at it; the runtime stage never sees it.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from tests.docker.engine import Engine, apt_install, cache_lock, cache_root, log

SUITE = "bookworm"
DEBOOTSTRAP_TIMEOUT = 1200.0
RECIPE_VERSION = "1"  # bump to rebuild cached root filesystems after changing a recipe

OFFICIAL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

MOSQUITTO_ENTRYPOINT = """#!/bin/sh
set -e

# Set permissions (as the official eclipse-mosquitto image does)
user="$(id -u)"
if [ "$user" = '0' ]; then
	[ -d "/mosquitto" ] && chown -R mosquitto:mosquitto /mosquitto || true
fi

exec "$@"
"""


@dataclass(frozen=True)
class Recipe:
    repository: str
    packages: tuple[str, ...]
    customise: Callable[[Path], None]
    changes: tuple[str, ...]  # docker import --change
    tag_pattern: str  # tags this stand-in can honestly provide


def _chroot(root: Path, *argv: str) -> None:
    subprocess.run(["chroot", str(root), *argv], check=True, capture_output=True, timeout=120)


def _python_customise(root: Path) -> None:
    local_bin = root / "usr" / "local" / "bin"
    local_bin.mkdir(parents=True, exist_ok=True)
    for name in ("python", "python3", "python3.11"):
        link = local_bin / name
        link.unlink(missing_ok=True)
        link.symlink_to("/usr/bin/python3.11")


def _mosquitto_customise(root: Path) -> None:
    _chroot(root, "groupmod", "--gid", "1883", "mosquitto")
    _chroot(root, "usermod", "--uid", "1883", "--gid", "1883", "mosquitto")
    for sub in ("config", "data", "log"):
        (root / "mosquitto" / sub).mkdir(parents=True, exist_ok=True)
    (root / "mosquitto" / "config" / "mosquitto.conf").write_text(
        "# Stand-in default; docker-compose.yml mounts deploy/mosquitto/mosquitto.conf over it.\n"
    )
    entrypoint = root / "docker-entrypoint.sh"
    entrypoint.write_text(MOSQUITTO_ENTRYPOINT)
    entrypoint.chmod(0o755)
    for path in [root / "mosquitto", *(root / "mosquitto").rglob("*")]:
        os.lchown(path, 1883, 1883)


RECIPES = {
    "python": Recipe(
        "python",
        ("python3", "python3-venv", "ca-certificates", "netbase", "tzdata"),
        _python_customise,
        (
            f"ENV PATH={OFFICIAL_PATH}",
            "ENV LANG=C.UTF-8",
            "ENV PYTHON_VERSION=3.11.2",
            'CMD ["python3"]',
        ),
        r"3\.11-slim-bookworm",
    ),
    "eclipse-mosquitto": Recipe(
        "eclipse-mosquitto",
        ("mosquitto", "mosquitto-clients"),
        _mosquitto_customise,
        (
            f"ENV PATH={OFFICIAL_PATH}",
            'VOLUME ["/mosquitto/data", "/mosquitto/log"]',
            "EXPOSE 1883",
            'ENTRYPOINT ["/docker-entrypoint.sh"]',
            'CMD ["/usr/sbin/mosquitto", "-c", "/mosquitto/config/mosquitto.conf"]',
        ),
        r"2(\.0(\.\d+)?)?(-openssl)?",
    ),
}


def debian_mirror() -> str:
    """The machine's Debian mirror for bookworm, from /etc/apt/sources.list and sources.list.d."""
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file() or not path.name.endswith((".list", ".sources")):
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = dict(re.findall(r"^([A-Za-z-]+):\s*(.+)$", stanza, re.M))
                if SUITE in fields.get("Suites", "").split() and "deb" in fields.get("Types", "").split():
                    return fields["URIs"].split()[0]
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb":
                uri, suite = (parts[2], parts[3]) if parts[1].startswith("[") else (parts[1], parts[2])
                if suite == SUITE:
                    return uri
    raise AssertionError(f"no Debian {SUITE} mirror in /etc/apt/sources.list*")


def _rootfs_tarball(recipe: Recipe) -> Path:
    """The cached root filesystem of a stand-in, made with debootstrap on first use."""
    mirror = debian_mirror()
    key = hashlib.sha256(f"{RECIPE_VERSION} {SUITE} {mirror} {recipe.packages}".encode()).hexdigest()[:12]
    tarball = cache_root() / "rootfs" / f"{recipe.repository}-{SUITE}-{key}.tar"
    with cache_lock(f"rootfs-{recipe.repository}"):
        if tarball.exists():
            return tarball
        apt_install("debootstrap")
        tarball.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir=tarball.parent, prefix="build-") as tmp:
            root = Path(tmp) / "root"
            argv = ["debootstrap", "--variant=minbase", f"--include={','.join(recipe.packages)}", SUITE,
                    str(root), mirror]  # fmt: skip
            log(f"{' '.join(argv)}")
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=DEBOOTSTRAP_TIMEOUT, check=False
            )
            if done.returncode != 0:
                raise AssertionError(f"debootstrap failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
            recipe.customise(root)
            for junk in (
                "var/cache/apt",
                "var/lib/apt/lists",
                "usr/share/doc",
                "usr/share/man",
                "usr/share/info",
            ):
                shutil.rmtree(root / junk, ignore_errors=True)
            partial = tarball.with_suffix(".partial")
            subprocess.run(
                ["tar", "--numeric-owner", "--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*",
                 "-C", str(root), "-cf", str(partial), "."],
                check=True, capture_output=True, timeout=600,
            )  # fmt: skip
            partial.replace(tarball)
        log(f"root filesystem {tarball.name}: {time.monotonic() - started:.0f} s")
    return tarball


@dataclass
class BaseImage:
    tag: str
    how: str  # "present", "pulled" or "stand-in (...)"
    created: bool  # removed again at the end


def ensure_image(engine: Engine, tag: str) -> BaseImage:
    """The image under ``tag``: already there, pulled, or a debootstrap stand-in imported under it."""
    if engine.run("image", "inspect", tag, check=False).returncode == 0:
        return BaseImage(tag, "present", created=False)
    pulled = engine.run("pull", "--quiet", tag, check=False, timeout=120)
    if pulled.returncode == 0:
        return BaseImage(tag, "pulled", created=True)
    repository, _, version = tag.partition(":")
    recipe = RECIPES.get(repository)
    if recipe is None or not re.fullmatch(recipe.tag_pattern, version):
        raise AssertionError(f"cannot pull {tag} ({pulled.stderr.strip()[:200]}) and have no stand-in for it")
    tarball = _rootfs_tarball(recipe)
    argv = ["import"]
    for change in recipe.changes:
        argv += ["--change", change]
    engine.run(*argv, str(tarball), tag, timeout=600)
    size = tarball.stat().st_size / 1e6
    return BaseImage(
        tag, f"stand-in: debootstrap {SUITE} + {' '.join(recipe.packages)} ({size:.0f} MB)", True
    )


def dockerfile_bases(dockerfile: str) -> list[str]:
    """Every image a Dockerfile's FROM lines name, with ARG defaults substituted."""
    args: dict[str, str] = {}
    stages: set[str] = set()
    bases: list[str] = []

    def expand(text: str) -> str:
        return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m[1], ""), text)

    for line in dockerfile.replace("\\\n", " ").splitlines():
        words = line.split()
        if not words:
            continue
        if words[0].upper() == "ARG" and "=" in words[1]:
            name, _, default = words[1].partition("=")
            args.setdefault(name, expand(default))
        elif words[0].upper() == "FROM":
            image = expand(next(w for w in words[1:] if not w.startswith("--")))
            if image not in stages and image != "scratch" and image not in bases:
                bases.append(image)
            if len(words) >= 4 and words[-2].upper() == "AS":
                stages.add(words[-1])
    return bases


# --- the builder stage's pip set-up ---------------------------------------------------------------


@dataclass
class PipSetup:
    conf: str  # pip.conf for the builder image
    files: dict[str, Path]  # path in the image -> host file
    served: dict[str, Path]  # URL prefix on the local server -> host directory
    notes: list[str]


def _pip_settings() -> dict[str, str]:
    """``pip config list`` merged with PIP_* variables (as pip itself merges them: env wins)."""
    done = subprocess.run(
        ["python3", "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60, check=False
    )
    settings: dict[str, str] = {}
    for line in done.stdout.splitlines():
        match = re.match(r"^(?P<scope>[^.]*)\.(?P<key>[a-z-]+)='(?P<value>.*)'$", line)
        if match and match["scope"] in ("global", "install", "download", ":env:"):
            settings[match["key"]] = match["value"]
    return settings


def pip_setup(port: int) -> PipSetup:
    """This machine's pip configuration, translated for a build container on the host network."""
    notes: list[str] = []
    files: dict[str, Path] = {}
    served: dict[str, Path] = {}
    lines = ["[global]"]

    def local_dir(value: str) -> str | None:
        path = Path(unquote(urlparse(value).path)) if value.startswith("file://") else Path(value)
        if not path.is_absolute() or not path.exists():
            return None
        top = Path(*path.parts[:3])  # /opt/pypi/simple -> serve /opt/pypi
        name = top.name
        served[name] = top
        rest = path.relative_to(top).as_posix()
        return f"http://127.0.0.1:{port}/{name}/{rest}".rstrip("/.") + "/"

    trusted = False
    for key, value in _pip_settings().items():
        if key in ("cert", "client-cert", "constraint"):  # files: copied into the image
            target = f"/etc/pip-host/{Path(value).name}"
            files[target] = Path(value)
            lines.append(f"{key} = {target}")
        elif key in ("find-links", "extra-index-url", "index-url"):
            urls = []
            for item in value.split():
                if item.startswith(("http://", "https://")):
                    urls.append(item)
                    continue
                url = local_dir(item)
                if url is None:
                    notes.append(f"pip {key} {item}: not found, left out")
                    continue
                urls.append(url)
                trusted = True
                notes.append(f"pip {key} {item} -> {url}")
            if urls:
                lines.append(f"{key} = {' '.join(urls)}")
        else:
            lines.append(f"{key} = {value}")
    if trusted:
        lines.append("trusted-host = 127.0.0.1")
    return PipSetup("\n".join(lines) + "\n", files, served, notes)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return


@contextlib.contextmanager
def serve_directories(directories: dict[str, Path]) -> Iterator[int]:
    """Serve each directory read-only under /<name>/ on 127.0.0.1 (a free port) while the block runs."""

    class Handler(_QuietHandler):
        def translate_path(self, path: str) -> str:
            parts = unquote(urlparse(path).path).lstrip("/").split("/", 1)
            root = directories.get(parts[0])
            if root is None:
                return "/nonexistent"
            target = (root / (parts[1] if len(parts) > 1 else "")).resolve()
            return str(target) if target.is_relative_to(root.resolve()) else "/nonexistent"

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="pip-files", daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def builder_image(engine: Engine, base: str, tag: str, port: int, served: dict[str, Path]) -> PipSetup:
    """``base`` plus this machine's pip set-up (for the Dockerfile's BUILDER_IMAGE argument).

    ``served`` is the directory map of the running ``serve_directories`` on ``port``: the local
    directories the pip set-up names are added to it.
    """
    setup = pip_setup(port)
    served.update(setup.served)
    with tempfile.TemporaryDirectory() as tmp:
        context = Path(tmp)
        (context / "pip.conf").write_text(setup.conf)
        lines = [f"FROM {base}", "COPY pip.conf /etc/pip.conf"]
        for index, (target, source) in enumerate(sorted(setup.files.items())):
            shutil.copyfile(source, context / f"file{index}")
            lines.append(f"COPY file{index} {target}")
        (context / "Dockerfile").write_text("\n".join(lines) + "\n")
        engine.run("build", "--quiet", "--tag", tag, str(context), timeout=300)
    return setup

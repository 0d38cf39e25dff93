"""Control serves the kakuremichi it runs, so that the install commands of the web UI install exactly that
version, from control, not a package of the same name from an index (none is published).

- `/dist/kakuremichi-<version>-py3-none-any.whl`: the wheel, for pip and pipx.
- `/dist/kakuremichi-<version>-image.tar`: a build context for `podman build` / `docker build <URL>`: the
  Containerfile and that wheel, which the Containerfile installs instead of building a checkout.

Both are packed from the running package (its modules and package data, with the installed distribution's
metadata): no build tool and no network, so it works in a venv and in the image alike. They are made on the
first request of each control process into `<data dir>/dist` and are deterministic: the same code gives the
same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

import trio
from quart import Blueprint, current_app
from quart_trio.wrappers.response import TrioResponse as Response

import kakuremichi
from kakuremichi import __version__

PACKAGE = Path(kakuremichi.__file__).parent
WHEEL = f"kakuremichi-{__version__}-py3-none-any.whl"
IMAGE_CONTEXT = f"kakuremichi-{__version__}-image.tar"
CONTAINERFILE = PACKAGE / "Containerfile"
EPOCH = (1980, 1, 1, 0, 0, 0)  # zip's earliest date: fixed, so that the same files give the same wheel
WHEEL_INFO = "Wheel-Version: 1.0\nGenerator: kakuremichi control\nRoot-Is-Purelib: true\nTag: py3-none-any\n"


def locations(control_url: str) -> dict[str, str]:
    """The URLs of /dist's files at `control_url`, as GET /api/install answers them."""
    base = control_url.rstrip("/") + "/dist/"
    return {"version": __version__, "wheelUrl": base + WHEEL, "imageContextUrl": base + IMAGE_CONTEXT}


class NotPackable(Exception):
    """This control cannot serve its wheel: says why and what to do."""


def _package_files() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*")
                  if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc")


def _dist_info() -> dict[str, bytes]:
    try:
        distribution = metadata.distribution("kakuremichi")
    except metadata.PackageNotFoundError:
        raise NotPackable("kakuremichi is not installed (run from a checkout without `pip install -e .`): "
                          "install it so control can serve its wheel") from None
    if distribution.version != __version__:
        raise NotPackable(f"the installed metadata says {distribution.version}, the code {__version__}: "
                          "reinstall kakuremichi (pip install -e .)")
    info = f"kakuremichi-{__version__}.dist-info"
    return {f"{info}/METADATA": _metadata(distribution).encode(),
            f"{info}/entry_points.txt": (distribution.read_text("entry_points.txt") or "").encode(),
            f"{info}/WHEEL": WHEEL_INFO.encode()}


def _metadata(distribution: metadata.Distribution) -> str:
    """Core metadata 2.1 from what the installed distribution declares, whether it is a .dist-info or a
    checkout's .egg-info (whose dependencies are in requires.txt, not in its PKG-INFO)."""
    fields = distribution.metadata
    requires = distribution.requires or []
    extras = dict.fromkeys(fields.get_all("Provides-Extra") or
                           re.findall(r'extra == "([^"]+)"', "\n".join(requires)))
    lines = ["Metadata-Version: 2.1", f"Name: {fields['Name']}", f"Version: {__version__}"]
    lines += [f"{name}: {fields[name]}" for name in ("Summary", "License", "Requires-Python") if fields[name]]
    lines += [f"Requires-Dist: {requirement}" for requirement in requires]
    lines += [f"Provides-Extra: {extra}" for extra in extras]
    return "\n".join(lines) + "\n"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}\n"


def wheel_bytes() -> bytes:
    """The wheel of the running package."""
    entries = {f"kakuremichi/{path.relative_to(PACKAGE).as_posix()}": path.read_bytes() for path in _package_files()}
    entries.update(_dist_info())
    record = f"kakuremichi-{__version__}.dist-info/RECORD"
    entries[record] = ("".join(_record_line(name, data) for name, data in entries.items()) + f"{record},,\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name, EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return buffer.getvalue()


def image_context_bytes(wheel: bytes) -> bytes:
    """A tar build context: the Containerfile and the wheel it installs."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in (("Containerfile", CONTAINERFILE.read_bytes()), (WHEEL, wheel)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


class Dist:
    """The files under /dist of one control process, made on the first request."""

    def __init__(self, data_dir: str | os.PathLike) -> None:
        self.directory = Path(data_dir) / "dist"
        self._made = False
        self._lock = trio.Lock()

    async def path(self, name: str) -> Path | None:
        """The file `name` (made now if this process has not made it yet), or None for another name."""
        if name not in (WHEEL, IMAGE_CONTEXT):
            return None
        async with self._lock:
            if not self._made:
                await trio.to_thread.run_sync(self._make)
                self._made = True
        return self.directory / name

    def _make(self) -> None:
        self.directory.mkdir(mode=0o755, exist_ok=True)
        wheel = wheel_bytes()
        _write(self.directory / WHEEL, wheel)
        _write(self.directory / IMAGE_CONTEXT, image_context_bytes(wheel))


blueprint = Blueprint("dist", __name__, url_prefix="/dist")


@blueprint.get("/<name>")
async def serve(name: str) -> Response:
    try:
        path = await current_app.extensions["kakuremichi.dist"].path(name)
    except NotPackable as error:
        return Response(f"{error}\n", status=503, content_type="text/plain; charset=utf-8")
    if path is None:
        return Response(f"control serves {WHEEL} and {IMAGE_CONTEXT} here, this is version {__version__}\n",
                        status=404, content_type="text/plain; charset=utf-8")
    kind = "application/zip" if name == WHEEL else "application/x-tar"
    return Response(await trio.Path(path).read_bytes(), content_type=kind)

"""Control serves the kakuremichi it runs at /dist (kakuremichi/control/dist.py): a wheel pip accepts (its RECORD
hashes every file, its metadata names the dependencies and the console script) and an image build context, the
same bytes on every request; GET /api/install tells where."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import zipfile

import httpx

from kakuremichi import __version__
from kakuremichi.control import dist

WHEEL = f"kakuremichi-{__version__}-py3-none-any.whl"
INFO = f"kakuremichi-{__version__}.dist-info"


async def test_the_wheel_holds_the_running_package_with_its_metadata(control):
    response = await httpx.AsyncClient().get(f"{control.url}/dist/{WHEEL}")  # no token: installers have none
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    wheel = zipfile.ZipFile(io.BytesIO(response.content))
    names = set(wheel.namelist())
    assert {"kakuremichi/__init__.py", "kakuremichi/control/web/templates/client.html",
            "kakuremichi/control/web/static/app.js", "kakuremichi/Containerfile"} <= names
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
    assert (dist.PACKAGE / "control" / "dist.py").read_bytes() == wheel.read("kakuremichi/control/dist.py")
    meta = wheel.read(f"{INFO}/METADATA").decode()
    assert f"Name: kakuremichi\nVersion: {__version__}\n" in meta and "Requires-Dist: trio>=" in meta
    assert "Provides-Extra: postgres" in meta
    assert "kakuremichi = kakuremichi.cli:main" in wheel.read(f"{INFO}/entry_points.txt").decode()
    record = dict(line.split(",", 1) for line in wheel.read(f"{INFO}/RECORD").decode().splitlines())
    assert set(record) == names
    for name in names - {f"{INFO}/RECORD"}:
        data = wheel.read(name)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        assert record[name] == f"sha256={digest},{len(data)}", name
    again = await httpx.AsyncClient().get(f"{control.url}/dist/{WHEEL}")
    assert again.content == response.content == dist.wheel_bytes()  # deterministic
    assert (dist.Path(control.settings.data_dir) / "dist" / WHEEL).read_bytes() == response.content


async def test_the_image_context_is_the_containerfile_and_the_wheel(control):
    response = await httpx.AsyncClient().get(f"{control.url}/dist/kakuremichi-{__version__}-image.tar")
    assert response.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(response.content)) as context:
        assert context.getnames() == ["Containerfile", WHEEL]
        assert context.extractfile("Containerfile").read() == dist.CONTAINERFILE.read_bytes()
        assert context.extractfile(WHEEL).read() == dist.wheel_bytes()


async def test_another_name_is_not_found_and_says_what_is_served(control):
    response = await httpx.AsyncClient().get(f"{control.url}/dist/kakuremichi-0.0.1-py3-none-any.whl")
    assert response.status_code == 404 and WHEEL in response.text and __version__ in response.text


async def test_the_api_tells_where_to_install_from(control):
    assert (await httpx.AsyncClient().get(f"{control.url}/api/install")).status_code == 401
    answer = (await control.api.get("/api/install")).json()
    assert answer == {"version": __version__, "wheelUrl": f"{control.url}/dist/{WHEEL}",
                      "imageContextUrl": f"{control.url}/dist/kakuremichi-{__version__}-image.tar"}

"""Property tests of the REST API from its own OpenAPI document (schemathesis) against a real control process:
no input makes a 500, and every answer is what /api/openapi.json says (status, content type, body); then
schemathesis's own run of every phase (coverage: edge values, undeclared methods, missing auth; stateful:
create, then use what was created).

Bounded: a few dozen examples per operation, so the file runs in well under a minute.
"""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from kakuremichi.control import openapi
from tests.control.conftest import ADMIN
from tests.deployment import Process, child_env, free_port, wait_for

schemathesis = pytest.importorskip("schemathesis", reason="pip install -e '.[test]' (schemathesis)")
from schemathesis.checks import (  # noqa: E402  (after the skip)
    content_type_conformance, not_a_server_error, response_headers_conformance, response_schema_conformance,
    status_code_conformance)
from schemathesis import GenerationMode  # noqa: E402

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def control_url(tmp_path_factory):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    control = Process("-m", "kakuremichi.control", "--listen", f"127.0.0.1:{port}",
                      "--data-dir", str(tmp_path_factory.mktemp("control")),
                      env={**child_env("warning"), "KAKUREMICHI_ADMIN_TOKEN": ADMIN},
                      log=tmp_path_factory.mktemp("log") / "control.log")

    def healthy() -> bool:
        try:
            return httpx.get(url + "/healthz").status_code == 200
        except httpx.TransportError:
            return control.popen.poll() is not None

    try:
        wait_for(healthy, 30, "control to answer /healthz")
        assert control.popen.poll() is None, f"control exited; see {control.log}"
        served = httpx.get(url + "/api/openapi.json").json()
        assert served == json.loads(json.dumps(openapi.DOCUMENT))  # the cases below come from what is served
        agent = httpx.post(url + "/api/agents", json={"name": "seed"}, headers={"Authorization": f"Bearer {ADMIN}"})
        assert agent.status_code == 201  # so that tunnels can be created, not only refused
        yield url
    finally:
        control.stop()


OPERATIONS = {operation.label: operation for operation in
              (result.ok() for result in schemathesis.openapi.from_dict(openapi.DOCUMENT).get_all_operations())}


@pytest.mark.parametrize("label", sorted(OPERATIONS))
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_the_api_keeps_its_document(control_url, label, mode):
    @given(case=OPERATIONS[label].as_strategy(mode))
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def call(case) -> None:
        case.call_and_validate(base_url=control_url, headers={"Authorization": f"Bearer {ADMIN}"}, checks=CHECKS)

    call()


def test_a_whole_schemathesis_run_passes(control_url, tmp_path):
    # Every check but positive_data_acceptance: the document does not spell out the domain and target
    # grammar, so schema-valid strings such as "" are rightly refused with 400.
    run = subprocess.run([sys.executable, "-m", "schemathesis.cli", "run", control_url + "/api/openapi.json",
                          "--header", f"Authorization: Bearer {ADMIN}", "--max-examples", "20", "--checks", "all",
                          "--exclude-checks", "positive_data_acceptance", "--request-timeout", "10",
                          "--no-color"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]

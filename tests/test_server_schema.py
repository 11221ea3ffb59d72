"""schemathesis over /openapi.json against a live server with an API key: no 5xx, every status and header
documented, 405s with Allow, and no operation that needs the key answers without it (``ignored_auth``).

Not run: ``positive_data_acceptance`` / ``negative_data_rejection``. Some rules cannot be in a static schema
(token ids must be below the vocabulary size, limits are server settings, seeds near 2**63 are compared as
floats by JSON Schema), so a schema-valid request may rightly get a 4xx; the status is still checked to be
documented.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from selfish_deploy.runtime import SparseLM
from selfish_deploy.serving.app import create_app
from selfish_deploy.serving.config import ServeConfig
from selfish_deploy.serving.live import LiveServer

CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
          "response_schema_conformance,unsupported_method,allow_header_conformance,ignored_auth")
KEY = "schemathesis-key"


def test_schemathesis_finds_no_5xx_and_no_undocumented_status(tiny_export, tmp_path):
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    if st is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[test]')")
    config = ServeConfig(model_name="tiny", max_new_tokens=16, max_input_tokens=256, request_timeout_s=10,
                         max_body_bytes=200_000, api_key=KEY)
    with LiveServer(create_app(SparseLM.load(tiny_export), config=config)) as server:
        schema = httpx.get(server.url + "/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
        assert schema["paths"]["/v1/score"]["post"]["security"] == [{"bearer": []}]
        assert "security" not in schema["paths"]["/health"]["get"]
        (tmp_path / "openapi.json").write_text(json.dumps(schema))  # the schema itself needs the key
        cmd = [st, "run", str(tmp_path / "openapi.json"), "--url", server.url, "--checks", CHECKS,
               "-H", f"Authorization: Bearer {KEY}", "--max-examples", "8",
               "--max-time", "30", "--workers", "1", "--seed", "1", "--request-timeout", "20",
               "--phases", "examples,coverage,fuzzing"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert httpx.get(server.url + "/health").status_code == 200  # still up
    report = out.stdout[-6000:]
    assert out.returncode == 0, report
    assert "Tested: 10" in report  # every operation was exercised

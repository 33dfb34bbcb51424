"""schemathesis 4.32 fuzzes every operation of `/openapi.json` on a real server: with a fixed
seed and a bounded number of examples per operation it must find no 5xx and no response that
breaks the document (status codes, content types, headers and bodies as declared), and the
server must refuse what the document says is invalid.

Not checked: that every schema-valid request is accepted - limits that depend on the model and
the prompt (the context length, token ids of the vocabulary) cannot be written in a schema.
"""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.server import RunningServer

pytestmark = pytest.mark.slow

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
)


def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(
    gpt_server: RunningServer, tool_bin: Callable[[str], Path], tmp_path: Path
) -> None:
    command = [str(tool_bin("schemathesis") / "schemathesis"), "run"]
    command += [f"{gpt_server.base_url}/openapi.json", "--checks", ",".join(CHECKS)]
    command += ["--max-examples", "20", "--seed", "7", "--workers", "1"]
    command += ["--suppress-health-check", "all", "--report", "junit"]
    command += ["--report-dir", str(tmp_path)]

    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)

    assert done.returncode == 0, done.stdout[-8000:]
    (junit,) = tmp_path.rglob("*.xml")
    suites = list(ElementTree.parse(junit).getroot().iter("testsuite"))
    assert sum(int(suite.get("tests", 0)) for suite in suites) > 0
    failed = sum(int(suite.get("failures", 0)) + int(suite.get("errors", 0)) for suite in suites)
    assert failed == 0, done.stdout[-8000:]

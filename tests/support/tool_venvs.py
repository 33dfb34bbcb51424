"""Virtualenvs for the third-party tools the tests run for real (guidellm, aiperf,
lm-evaluation-harness, schemathesis), built from the pins in `tests/tools/requirements/`.

Their pins clash with the project's (guidellm and aiperf want transformers 5), so each tool
gets its own virtualenv outside the repository, under `LAMINI_TOOL_VENVS_DIR` (default
`~/.cache/lamini-serve/tool-venvs`). A virtualenv is named after a hash of its requirement
files: it is built once (under a file lock, so parallel sessions build it once) and reused
until a pin changes. Building one from a fresh machine needs only PyPI.

CI (or a developer) can build them ahead of the tests:

    python tests/support/tool_venvs.py            # every tool
    python tests/support/tool_venvs.py guidellm   # one
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

REQUIREMENTS_DIR = Path(__file__).resolve().parents[1] / "tools" / "requirements"
TORCH_FIRST = REQUIREMENTS_DIR / "torch-first.txt"


@dataclass(frozen=True)
class ToolVenv:
    """One tool's virtualenv: its requirement file and whether torch must come first."""

    name: str
    needs_torch: bool = False

    @property
    def requirement_files(self) -> list[Path]:
        first = [TORCH_FIRST] if self.needs_torch else []
        return [*first, REQUIREMENTS_DIR / f"{self.name}.txt"]

    def digest(self) -> str:
        content = b"".join(path.read_bytes() for path in self.requirement_files)
        return hashlib.sha256(content + sys.version.encode()).hexdigest()[:12]


TOOLS = {
    tool.name: tool
    for tool in (
        ToolVenv("guidellm", needs_torch=True),
        ToolVenv("aiperf"),
        ToolVenv("lm-eval", needs_torch=True),
        ToolVenv("schemathesis"),
    )
}


def venvs_dir() -> Path:
    configured = os.environ.get("LAMINI_TOOL_VENVS_DIR")
    return (
        Path(configured) if configured else Path.home() / ".cache" / "lamini-serve" / "tool-venvs"
    )


def ensure_tool_venv(name: str) -> Path:
    """The `bin/` directory of the tool's virtualenv, built first if missing."""
    tool = TOOLS[name]
    root = venvs_dir()
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{name}-{tool.digest()}"
    done = target / ".complete"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            _build(tool, target)
            done.write_text("ok\n")
    return target / "bin"


def _build(tool: ToolVenv, target: Path) -> None:
    """A fresh virtualenv with the tool's pins, one requirement file after the other."""
    shutil.rmtree(target, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(target)], check=True)
    pip = [str(target / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    for requirements in tool.requirement_files:
        subprocess.run([*pip, "-r", str(requirements)], check=True)


if __name__ == "__main__":
    for tool_name in sys.argv[1:] or list(TOOLS):
        print(f"{tool_name}: {ensure_tool_venv(tool_name)}")

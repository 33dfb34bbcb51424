"""The Kubernetes manifests as the tests use them: rendered by the real `kubectl kustomize`, and a
container of a rendered workload turned into the process it would run here.

No cluster exists where the tests run, so, as with compose (`deploy.py`), the tests run what a
container would run: its image's entrypoint or its `command`, its `args` with Kubernetes'
`$(VAR)` expansion, its image's ENV, then its ConfigMap and `env` entries, with every path under
one of its volume mounts moved to a local directory that stands for that volume.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from tests.support.deploy import DEPLOY_DIR, image_command, require_binary
from tests.support.dockerfile import parse_dockerfile

KUBERNETES_DIR = DEPLOY_DIR / "kubernetes"
CRD_SCHEMAS_DIR = KUBERNETES_DIR / "crd-schemas"
OVERLAYS = ("cpu", "cuda", "cpu-keda")
# The image names the README builds each Dockerfile stage as.
IMAGE_STAGES = {"lamini-serve": "runtime", "lamini-serve-convert": "convert"}

Manifest = dict[str, Any]


def kustomizations() -> list[Path]:
    """Every directory of deploy/kubernetes that kustomize renders."""
    return sorted(path.parent for path in KUBERNETES_DIR.rglob("kustomization.yaml"))


def render(directory: Path) -> list[Manifest]:
    """`kubectl kustomize DIRECTORY`, parsed."""
    result = subprocess.run(
        [require_binary("kubectl"), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [item for item in yaml.safe_load_all(result.stdout) if item]


def render_overlay(name: str) -> list[Manifest]:
    return render(KUBERNETES_DIR / "overlays" / name)


def find(objects: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    """The one object of `kind` (and `name`) among `objects`."""
    found = [
        item
        for item in objects
        if item["kind"] == kind and name in (None, item["metadata"]["name"])
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def only_container(workload: Manifest) -> Manifest:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']} should run one container"
    return containers[0]


def adapter_rules(monitoring: list[Manifest]) -> list[dict[str, Any]]:
    """The prometheus-adapter rules in the rendered monitoring/ kustomization."""
    config = find(monitoring, "ConfigMap", "adapter-config")["data"]["config.yaml"]
    return yaml.safe_load(config)["rules"]


def keda_trigger(keda_overlay: list[Manifest]) -> dict[str, Any]:
    """The one Prometheus trigger of the rendered KEDA overlay's ScaledObject."""
    (trigger,) = find(keda_overlay, "ScaledObject")["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    return trigger


def series_name(selector: str) -> str:
    """The metric name of a PromQL series selector (`name{labels}`)."""
    match = re.fullmatch(r"(\w+)(\{.*\})?", selector.strip())
    assert match, f"not a series selector: {selector!r}"
    return match.group(1)


def image_stage(image: str) -> str:
    """The Dockerfile stage an image reference was built from (`registry/lamini-serve:tag`)."""
    repository = image.rsplit("/", 1)[-1].split(":", 1)[0]
    assert repository in IMAGE_STAGES, f"{image}: not an image of this project"
    return IMAGE_STAGES[repository]


_REFERENCE = re.compile(r"\$\$|\$\((\w+)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined variables are replaced, `$$` is a `$`, and any
    other reference is left as written."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REFERENCE.sub(replace, text)


def container_environment(objects: list[Manifest], container: Manifest) -> dict[str, str]:
    """The variables a container's spec defines: its ConfigMaps (`envFrom`), then `env` (plain
    values and ConfigMap keys; optional Secret keys are absent, as with no Secret)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(find(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = expand(item["value"], env)
            continue
        reference = item["valueFrom"]
        if "configMapKeyRef" in reference:
            key = reference["configMapKeyRef"]
            env[item["name"]] = find(objects, "ConfigMap", key["name"])["data"][key["key"]]
        else:
            assert reference["secretKeyRef"].get("optional"), f"{item['name']} needs a Secret"
    return env


def relocate(value: str, mounts: Mapping[str, Path]) -> str:
    """`value` with a leading volume mount path replaced by the directory standing for it."""
    for mount_path, local in mounts.items():
        if value == mount_path or value.startswith(mount_path + "/"):
            return str(local) + value[len(mount_path) :]
    return value


def container_process(
    objects: list[Manifest],
    workload: Manifest,
    mounts: Mapping[str, Path],
    overrides: Mapping[str, str],
    bin_dir: Path = Path(sys.executable).parent,
) -> tuple[list[str], dict[str, str]]:
    """Command and environment of the container of `workload`, run here: `mounts` gives a local
    directory for each of its volume mounts (all of them), `overrides` comes last."""
    container = only_container(workload)
    mount_paths = {mount["mountPath"] for mount in container.get("volumeMounts", [])}
    assert mount_paths == set(mounts), f"local directories for {sorted(mount_paths)}"
    stage = image_stage(container["image"])
    spec_env = container_environment(objects, container)
    words = [expand(word, spec_env) for word in container.get("args", [])]
    if "command" in container:
        command = [expand(word, spec_env) for word in container["command"]] + words
        if (bin_dir / command[0]).exists():
            command[0] = str(bin_dir / command[0])
    else:
        command = image_command(stage, words or None, bin_dir)
    image_env = parse_dockerfile().env(stage)
    env = {
        name: relocate(value, mounts)
        for name, value in {**image_env, **spec_env}.items()
        if "/opt/lamini" not in value  # the image's virtualenv: this process has its own
    }
    path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    return command, {**os.environ, **env, "PATH": path, **overrides}


@contextmanager
def read_only_view(source: Path, view: Path) -> Iterator[Path]:
    """`source` seen at `view` through a read-only bind mount, as a pod mounts a volume with
    `readOnly: true`: writing under `view` fails for every user, root included."""
    require_binary("mount")
    view.mkdir(parents=True, exist_ok=True)
    for command in (
        ["mount", "--bind", str(source), str(view)],
        ["mount", "-o", "remount,bind,ro", str(view)],
    ):
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            subprocess.run(["umount", str(view)], capture_output=True, check=False)
            raise AssertionError(
                f"{' '.join(command)} failed ({result.stderr.strip()}): the read-only volume "
                "is a bind mount, which needs root (CAP_SYS_ADMIN), as CI runs"
            )
    try:
        yield view
    finally:
        subprocess.run(["umount", str(view)], capture_output=True, check=False)

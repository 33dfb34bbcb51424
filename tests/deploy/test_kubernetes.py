"""deploy/kubernetes, checked offline: every kustomization rendered by the real `kubectl
kustomize`, every object validated strictly against a pinned Kubernetes version's schemas
(kubernetes-validate) and the custom resources against their CRDs' schemas (deploy/kubernetes/
crd-schemas), then cross-checked against the server: metric names in a real /metrics, probe
paths and ports, settings names, grace periods, the autoscaler's metric and target."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import tomllib
import yaml

from app.server import create_app
from app.settings import Settings
from tests.support.deploy import NGINX_TEMPLATE, REPO_ROOT
from tests.support.dockerfile import parse_dockerfile
from tests.support.kubernetes import (
    CRD_SCHEMAS_DIR,
    KUBERNETES_DIR,
    OVERLAYS,
    Manifest,
    adapter_rules,
    container_environment,
    find,
    image_stage,
    keda_trigger,
    kustomizations,
    only_container,
    render,
    render_overlay,
    series_name,
)
from tests.support.server import running_server

KUBERNETES_VERSION = "1.32.0"
NAMESPACE = "lamini"
# Variables a container may set besides LAMINI_* settings (the Hugging Face hub's own).
OTHER_VARIABLES = {"HF_HOME", "HF_HUB_OFFLINE", "HF_TOKEN"}
HPA_TOLERANCE = 0.1  # the HPA controller's default: it acts beyond 10% off the target


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Manifest]]:
    """Every kustomization, rendered once: relative directory -> objects."""
    return {
        str(directory.relative_to(KUBERNETES_DIR)): render(directory)
        for directory in kustomizations()
    }


@pytest.fixture(scope="module", params=["cpu", "cuda"])
def overlay(request: pytest.FixtureRequest) -> list[Manifest]:
    return render_overlay(request.param)


def all_objects(rendered: dict[str, list[Manifest]]) -> list[Manifest]:
    return [item for objects in rendered.values() for item in objects]


def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema of the vendored CRDs."""
    schemas = {}
    for path in CRD_SCHEMAS_DIR.glob("*.yaml"):
        document = yaml.safe_load(path.read_text())
        schemas[document["apiVersion"], document["kind"]] = document["openAPIV3Schema"]
    return schemas


def strict(schema: Any) -> Any:
    """A CRD schema that rejects unknown fields, as `kubectl apply --validate=strict` does
    (the API server prunes them silently otherwise): objects with listed properties and no
    `x-kubernetes-preserve-unknown-fields` get `additionalProperties: false`."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict(value) for key, value in schema.items()}
    open_ended = schema.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in schema and "additionalProperties" not in schema and not open_ended:
        result["additionalProperties"] = False
    return result


def validate(item: Manifest) -> None:
    """Strict validation: a CRD schema for custom kinds, Kubernetes' own for the rest."""
    custom = crd_schemas().get((item["apiVersion"], item["kind"]))
    if custom is None:
        kubernetes_validate.validate(item, KUBERNETES_VERSION, strict=True)
    else:
        jsonschema.Draft4Validator(strict(custom)).validate(item)


def deployment(objects: list[Manifest]) -> Manifest:
    return find(objects, "Deployment", "lamini-serve")


def server_container(objects: list[Manifest]) -> Manifest:
    return only_container(deployment(objects))


def pod_labels(objects: list[Manifest]) -> dict[str, str]:
    return deployment(objects)["spec"]["template"]["metadata"]["labels"]


def selects_pods(selector: dict[str, str], objects: list[Manifest]) -> bool:
    return bool(selector) and selector.items() <= pod_labels(objects).items()


def hpa_metric(objects: list[Manifest]) -> tuple[str, float]:
    """(metric name, average target per pod) of the HPA."""
    (metric,) = find(objects, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metric["type"] == "Pods", "scale on a per-pod metric the replicas export"
    target = metric["pods"]["target"]
    assert target["type"] == "AverageValue"
    return metric["pods"]["metric"]["name"], float(target["averageValue"])


def prestop_seconds(container: Manifest) -> float:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    sleep, seconds = command
    assert sleep == "sleep", command
    return float(seconds)


def environment(objects: list[Manifest], container: Manifest) -> dict[str, str]:
    return container_environment(objects, container)


# --- rendering and schemas -------------------------------------------------------------------


def test_every_overlay_and_kustomization_renders(rendered: dict[str, list[Manifest]]) -> None:
    assert {f"overlays/{name}" for name in OVERLAYS} <= set(rendered)
    assert {"base", "monitoring", "ingress"} <= set(rendered)
    for directory, objects in rendered.items():
        assert objects, f"{directory} renders nothing"


def test_every_object_validates_strictly(rendered: dict[str, list[Manifest]]) -> None:
    for item in all_objects(rendered):
        validate(item)
    kinds = {item["kind"] for item in all_objects(rendered)}
    assert {"ScaledObject", "PodMonitor", "HorizontalPodAutoscaler"} <= kinds


@pytest.mark.parametrize("kind", ["Deployment", "PodMonitor", "ScaledObject"])
def test_validation_rejects_an_unknown_field(
    rendered: dict[str, list[Manifest]], kind: str
) -> None:
    """The checks above can fail: a misspelt field is caught for core and custom kinds."""
    item = copy.deepcopy(next(i for i in all_objects(rendered) if i["kind"] == kind))
    item["spec"]["replicaz"] = 3
    with pytest.raises((kubernetes_validate.ValidationError, jsonschema.ValidationError)):
        validate(item)


def test_namespaced_objects_share_one_namespace(rendered: dict[str, list[Manifest]]) -> None:
    """What is applied (overlays, monitoring, ingress; base and autoscaling are their parts)."""
    for directory, objects in rendered.items():
        if directory == "base" or directory.startswith("autoscaling/"):
            continue
        for item in objects:
            expected = "monitoring" if item["metadata"]["name"] == "adapter-config" else NAMESPACE
            assert item["metadata"].get("namespace") == expected, (directory, item["kind"])
    keda_query = keda_trigger(rendered["overlays/cpu-keda"])["metadata"]["query"]
    assert f'namespace="{NAMESPACE}"' in keda_query


# --- the replicas ----------------------------------------------------------------------------


def test_settings_come_from_real_settings_fields(
    rendered: dict[str, list[Manifest]], monkeypatch: pytest.MonkeyPatch
) -> None:
    fields = {f"LAMINI_{name.upper()}" for name in Settings.model_fields}
    for objects in rendered.values():
        workloads = [i for i in objects if i["kind"] in ("Deployment", "Job")]
        for workload in workloads:
            env = environment(objects, only_container(workload))
            unknown = {n for n in env if n not in fields and n not in OTHER_VARIABLES}
            assert not unknown, f"{workload['metadata']['name']}: not settings: {unknown}"
            with monkeypatch.context() as patched:
                for name, value in env.items():
                    patched.setenv(name, value)
                Settings()  # every value parses


def test_probes_use_the_servers_routes_and_port(overlay: list[Manifest]) -> None:
    container = server_container(overlay)
    env = environment(overlay, container)
    (port,) = container["ports"]
    assert port["containerPort"] == int(env["LAMINI_PORT"])
    assert env["LAMINI_HOST"] == "0.0.0.0"
    routes = set(create_app(Settings()).openapi()["paths"])
    probes = {kind: container[f"{kind}Probe"]["httpGet"] for kind in ("startup", "readiness")}
    probes["liveness"] = container["livenessProbe"]["httpGet"]
    assert {kind: probe["path"] for kind, probe in probes.items()} == {
        "startup": "/ready",
        "readiness": "/ready",
        "liveness": "/health",
    }
    assert {probe["port"] for probe in probes.values()} == {port["name"]}
    assert {"/ready", "/health", "/metrics"} <= routes
    service_port = find(overlay, "Service")["spec"]["ports"][0]
    assert service_port["targetPort"] == port["name"]


def test_the_startup_probe_allows_the_images_start_period(overlay: list[Manifest]) -> None:
    probe = server_container(overlay)["startupProbe"]
    healthcheck = parse_dockerfile().stage("runtime").last("HEALTHCHECK").arguments
    start_period = int(re.search(r"--start-period=(\d+)s", healthcheck).group(1))
    assert probe["periodSeconds"] * probe["failureThreshold"] >= start_period


def test_grace_period_outlasts_the_prestop_delay_and_the_drain(overlay: list[Manifest]) -> None:
    pod = deployment(overlay)["spec"]["template"]["spec"]
    container = server_container(overlay)
    drain = float(environment(overlay, container)["LAMINI_SHUTDOWN_GRACE_S"])
    delay = prestop_seconds(container)
    assert delay >= 5, "endpoints need a few seconds to drop the replica"
    assert pod["terminationGracePeriodSeconds"] > delay + drain
    strategy = deployment(overlay)["spec"]["strategy"]["rollingUpdate"]
    assert strategy == {"maxSurge": 1, "maxUnavailable": 0}
    assert "replicas" not in deployment(overlay)["spec"], "the autoscaler owns the count"


def test_replicas_run_hardened_as_the_images_user(overlay: list[Manifest]) -> None:
    uid = int(parse_dockerfile().stage("runtime").last("USER").arguments.split(":")[0])
    for workload in (deployment(overlay), find(overlay, "Job")):
        pod = workload["spec"]["template"]["spec"]
        context = pod["securityContext"]
        assert context["runAsNonRoot"]
        assert context["runAsUser"] == uid == context["fsGroup"]
        container = only_container(workload)
        hardened = container["securityContext"]
        assert hardened["readOnlyRootFilesystem"]
        assert not hardened["allowPrivilegeEscalation"]
        assert hardened["capabilities"]["drop"] == ["ALL"]
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
        assert "emptyDir" in volumes[tmp["name"]], "a writable /tmp on a read-only root"
        assert not pod["automountServiceAccountToken"]
        assert not pod["enableServiceLinks"]


def test_the_store_is_converted_once_and_mounted_read_only(overlay: list[Manifest]) -> None:
    job, server = find(overlay, "Job"), deployment(overlay)
    assert image_stage(only_container(job)["image"]) == "convert"
    assert image_stage(server_container(overlay)["image"]) == "runtime"
    assert "lamini-serve convert" in " ".join(only_container(job)["args"])

    def data_volume(workload: Manifest) -> tuple[dict[str, Any], dict[str, Any]]:
        container = only_container(workload)
        env = environment(overlay, container)
        mount = next(
            m
            for m in container["volumeMounts"]
            if env["LAMINI_STORE_DIR"].startswith(m["mountPath"] + "/")
        )
        volumes = workload["spec"]["template"]["spec"]["volumes"]
        return mount, next(v for v in volumes if v["name"] == mount["name"])

    job_mount, job_volume = data_volume(job)
    server_mount, server_volume = data_volume(server)
    claim = job_volume["persistentVolumeClaim"]["claimName"]
    assert server_volume["persistentVolumeClaim"]["claimName"] == claim
    assert find(overlay, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteMany"]
    assert not job_mount.get("readOnly")
    assert server_mount["readOnly"]
    assert server_volume["persistentVolumeClaim"]["readOnly"]
    server_env = environment(overlay, server_container(overlay))
    assert server_env["LAMINI_CONVERT"] == "never"
    assert server_env["HF_HUB_OFFLINE"] == "1"
    job_env = environment(overlay, only_container(job))
    for shared in ("LAMINI_MODELS", "LAMINI_ENGINE", "LAMINI_QUANTIZATION", "LAMINI_STORE_DIR"):
        assert job_env[shared] == server_env[shared], f"the Job and replicas disagree: {shared}"


def test_api_keys_come_from_a_secret_file(overlay: list[Manifest]) -> None:
    container = server_container(overlay)
    keys_file = Path(environment(overlay, container)["LAMINI_API_KEYS_FILE"])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(keys_file.parent))
    volumes = deployment(overlay)["spec"]["template"]["spec"]["volumes"]
    secret = next(v for v in volumes if v["name"] == mount["name"])["secret"]
    assert [item["path"] for item in secret["items"]] == [keys_file.name]
    assert not secret.get("optional"), "a replica without its keys must not start open"


def test_service_pdb_policy_and_spread_select_the_replicas(overlay: list[Manifest]) -> None:
    assert selects_pods(find(overlay, "Service")["spec"]["selector"], overlay)
    pdb = find(overlay, "PodDisruptionBudget")["spec"]
    assert selects_pods(pdb["selector"]["matchLabels"], overlay)
    policy = find(overlay, "NetworkPolicy")["spec"]
    assert selects_pods(policy["podSelector"]["matchLabels"], overlay)
    assert policy["ingress"][0]["ports"] == [{"port": "http", "protocol": "TCP"}]
    spread = deployment(overlay)["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert "kubernetes.io/hostname" in {constraint["topologyKey"] for constraint in spread}
    assert all(selects_pods(c["labelSelector"]["matchLabels"], overlay) for c in spread)


def test_images_are_tagged_with_the_package_version() -> None:
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    for name in OVERLAYS:
        objects = render_overlay(name)
        images = {only_container(w)["image"] for w in (deployment(objects), find(objects, "Job"))}
        suffix = "-cuda" if name == "cuda" else ""
        assert images == {f"lamini-serve:{version}{suffix}", f"lamini-serve-convert:{version}"}


def test_the_cuda_overlay_asks_for_a_gpu_and_runs_on_it() -> None:
    objects = render_overlay("cuda")
    container = server_container(objects)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    env = environment(objects, container)
    assert env["LAMINI_DEVICE"] == "cuda"
    assert env["LAMINI_QUANTIZATION"] == "float16"


# --- autoscaling and monitoring --------------------------------------------------------------


def test_the_hpa_metric_is_the_one_the_adapter_rule_serves(
    rendered: dict[str, list[Manifest]],
) -> None:
    for name in ("overlays/cpu", "overlays/cuda"):
        metric, _ = hpa_metric(rendered[name])
        hpa = find(rendered[name], "HorizontalPodAutoscaler")["spec"]
        assert hpa["scaleTargetRef"]["name"] == deployment(rendered[name])["metadata"]["name"]
        rules = adapter_rules(rendered["monitoring"])
        served = [rule for rule in rules if rule["name"]["as"] == metric]
        assert len(served) == 1, f"no adapter rule serves {metric}"
        rule = served[0]
        assert re.search(rule["name"]["matches"], series_name(rule["seriesQuery"]))
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
        assert "<<.LabelMatchers>>" in rule["metricsQuery"]
        assert "by (<<.GroupBy>>)" in rule["metricsQuery"], "one value per pod"


def test_keda_scales_on_the_same_metric_and_target_as_the_hpa(
    rendered: dict[str, list[Manifest]],
) -> None:
    metric, target = hpa_metric(rendered["overlays/cpu"])
    trigger = keda_trigger(rendered["overlays/cpu-keda"])
    assert trigger["metricType"] == "AverageValue"
    assert float(trigger["metadata"]["threshold"]) == target
    assert re.search(rf"\b{metric}\{{", trigger["metadata"]["query"])
    scaled = find(rendered["overlays/cpu-keda"], "ScaledObject")["spec"]
    hpa = find(rendered["overlays/cpu"], "HorizontalPodAutoscaler")["spec"]
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (
        hpa["minReplicas"],
        hpa["maxReplicas"],
    )
    kinds = {item["kind"] for item in rendered["overlays/cpu-keda"]}
    assert "HorizontalPodAutoscaler" not in kinds, "KEDA owns the HPA there"


def test_the_podmonitor_scrapes_the_replicas_metrics_port(
    rendered: dict[str, list[Manifest]],
) -> None:
    cpu = rendered["overlays/cpu"]
    monitor = find(rendered["monitoring"], "PodMonitor")["spec"]
    assert selects_pods(monitor["selector"]["matchLabels"], cpu)
    (endpoint,) = monitor["podMetricsEndpoints"]
    assert endpoint["port"] == server_container(cpu)["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"


def test_metric_names_exist_in_a_real_servers_metrics(
    rendered: dict[str, list[Manifest]], tiny_twin, tmp_path: Path
) -> None:
    """A server configured like the replicas (API keys from a file) exports every series the
    autoscalers use, and answers the kubelet's probes and the scrape without a key."""
    tiny_twin("MBZUAI/LaMini-Flan-T5-77M")
    keys = tmp_path / "keys.sha256"
    keys.write_text(hashlib.sha256(b"cluster-key").hexdigest() + "\n")
    used = {hpa_metric(rendered["overlays/cpu"])[0]}
    used |= {series_name(rule["seriesQuery"]) for rule in adapter_rules(rendered["monitoring"])}
    keda_query = keda_trigger(rendered["overlays/cpu-keda"])["metadata"]["query"]
    used |= set(re.findall(r"\blamini_\w+", keda_query))
    model = "twin:MBZUAI/LaMini-Flan-T5-77M@tiny"
    with running_server([model], env={"LAMINI_API_KEYS_FILE": str(keys)}) as server:
        assert server.get("/health").status_code == 200
        assert server.get("/ready").status_code == 200
        answer = server.post(
            "/generate",
            json={"inputs": "Hi", "parameters": {"max_new_tokens": 2}},
            headers={"Authorization": "Bearer cluster-key"},
        )
        assert answer.status_code == 200, answer.text
        exported = {name for name, _ in server.metric_samples()}
    assert used <= exported, f"not in /metrics: {used - exported}"


def test_the_hpa_target_follows_from_the_committed_benchmark(
    rendered: dict[str, list[Manifest]],
) -> None:
    """The README's capacity guide, recomputed: the most requests in flight per replica that
    kept the streaming TTFT p95 within the objective, less the HPA's tolerance."""
    objects = rendered["overlays/cpu"]
    annotations = find(objects, "HorizontalPodAutoscaler")["metadata"]["annotations"]
    result = json.loads((REPO_ROOT / annotations["lamini-serve/capacity-source"]).read_text())
    objective = float(annotations["lamini-serve/ttft-p95-objective-seconds"])
    (lamini,) = [s for s in result["systems"] if s["system"] == "lamini-serve"]
    within = [
        m["concurrency"]
        for m in lamini["measurements"]
        if m["quantization"] == "int8" and m["streaming"] and m["ttft_p95_s"] <= objective
    ]
    expected = math.floor(max(within) / (1 + HPA_TOLERANCE))
    assert hpa_metric(objects)[1] == expected
    # The replica is sized as it was measured: its cores, one CTranslate2 replica each, and
    # its peak memory.
    container = server_container(objects)
    resources = container["resources"]
    assert resources["requests"] == resources["limits"], "Guaranteed QoS"
    cores = result["machine"]["usable_cores"]
    assert int(resources["requests"]["cpu"]) == cores
    assert int(environment(objects, container)["LAMINI_INTER_THREADS"]) == cores
    memory_mib = int(resources["requests"]["memory"].removesuffix("Mi"))
    assert memory_mib >= lamini["peak_rss_mb"]


def test_the_ingress_is_configured_like_the_nginx_balancer(
    rendered: dict[str, list[Manifest]],
) -> None:
    ingress = find(rendered["ingress"], "Ingress")
    annotations = {
        key.removeprefix("nginx.ingress.kubernetes.io/"): value
        for key, value in ingress["metadata"]["annotations"].items()
    }
    template = NGINX_TEMPLATE.read_text()

    def directive(name: str) -> str:
        return re.search(rf"^\s*{name}\s+([^;]+);", template, re.MULTILINE).group(1).strip()

    assert annotations["proxy-buffering"] == directive("proxy_buffering") == "off"
    for timeout in ("connect", "send", "read"):
        assert f"{annotations[f'proxy-{timeout}-timeout']}s" == directive(
            f"proxy_{timeout}_timeout"
        )
    assert annotations["proxy-next-upstream"] == directive("proxy_next_upstream")
    assert annotations["proxy-next-upstream-tries"] == directive("proxy_next_upstream_tries")
    assert f"{annotations['proxy-next-upstream-timeout']}s" == directive(
        "proxy_next_upstream_timeout"
    )
    assert annotations["proxy-body-size"] == directive("client_max_body_size")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service = find(rendered["overlays/cpu"], "Service")
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] == service["spec"]["ports"][0]["name"]

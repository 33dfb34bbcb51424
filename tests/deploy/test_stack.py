"""The compose stack, run for real without Docker: replicas started with the runtime image's
command and environment, nginx from deploy/'s template, Prometheus from deploy/'s scrape config
and rules (replica addresses and ports substituted, see support.deploy). Then the Kubernetes
Deployment of deploy/kubernetes, rolled out the way its strategy says behind the same nginx:
its convert Job fills a store that its replicas mount read-only (see support.kubernetes)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam
from text_generation import Client as TextGenerationClient

from tests.support.deploy import (
    DASHBOARD,
    REPLICA_JOB,
    Child,
    PrometheusAPI,
    answers_at_all,
    answers_ok,
    check_nginx_config,
    convert_like_compose,
    nginx_command,
    prometheus_config_for,
    render_nginx_include,
    replica_process,
    require_binary,
    running,
    start_child,
    wait_until,
    write_nginx_main_config,
)
from tests.support.dockerfile import parse_dockerfile
from tests.support.kubernetes import (
    KUBERNETES_DIR,
    Manifest,
    adapter_rules,
    container_process,
    find,
    keda_trigger,
    only_container,
    read_only_view,
    render,
    render_overlay,
    series_name,
)
from tests.support.server import RunningServer, free_port

pytestmark = pytest.mark.slow

HUB_ID = "MBZUAI/LaMini-Flan-T5-77M"
MODEL = f"twin:{HUB_ID}@tiny"
REQUEST = {"inputs": "What is an apple?", "parameters": {"max_new_tokens": 12}}
STARTUP_TIMEOUT_S = 120
# Three, so that one can be killed and another stopped, each with two others taking traffic.
REPLICAS = 3


@dataclass
class Replica:
    child: Child
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def generate_count(self) -> int:
        """Successful /generate requests this replica answered, from its own /metrics."""
        server = RunningServer(self.url, self.child.process, self.child.log)
        return int(server.metric("lamini_request_total", route="/generate", status="200"))


@dataclass
class Stack:
    replicas: list[Replica]
    lb_url: str
    prometheus: PrometheusAPI


def start_replica(store_dir: Path, logs: Path, index: int) -> Replica:
    port = free_port()
    command, env = replica_process(MODEL, store_dir, port)
    child = start_child(f"replica {index}", command, logs / f"replica-{index}.log", env)
    return Replica(child, port)


def start_nginx(upstreams: list[str], prefix: Path) -> tuple[Child, str]:
    port = free_port()
    include = render_nginx_include(upstreams, port, prefix / "lamini.conf")
    config = write_nginx_main_config(prefix, include)
    return start_child("nginx", nginx_command(prefix, config), prefix / "nginx.out"), (
        f"http://127.0.0.1:{port}"
    )


def start_prometheus(targets: list[str], workdir: Path) -> tuple[Child, str]:
    port = free_port()
    address = f"127.0.0.1:{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config_for(targets, address)))
    command = [
        require_binary("prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address={address}",
    ]
    return start_child("prometheus", command, workdir / "prometheus.out"), f"http://{address}"


@pytest.fixture(scope="module")
def stack(tiny_twin, store_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tiny_twin(HUB_ID)
    convert_like_compose(MODEL, store_dir)
    workdir = tmp_path_factory.mktemp("stack")
    with ExitStack() as stack:
        # Both replicas start together (as compose starts them), then each must become ready.
        replicas = [start_replica(store_dir, workdir, index) for index in range(REPLICAS)]
        for replica in replicas:
            stack.callback(replica.child.stop)
        for replica in replicas:
            ready = f"{replica.url}/ready"
            stack.enter_context(
                running(replica.child, lambda u=ready: answers_ok(u), STARTUP_TIMEOUT_S)
            )
        addresses = [replica.address for replica in replicas]
        nginx, lb_url = start_nginx(addresses, workdir / "nginx")
        stack.enter_context(running(nginx, lambda: answers_ok(f"{lb_url}/health"), 30))
        prometheus, prometheus_url = start_prometheus(addresses, workdir / "prometheus")
        stack.enter_context(
            running(prometheus, lambda: answers_ok(f"{prometheus_url}/-/ready"), 60)
        )
        yield Stack(replicas, lb_url, PrometheusAPI(prometheus_url))


def generate(url: str, client: httpx.Client | None = None) -> httpx.Response:
    return (client or httpx).post(f"{url}/generate", json=REQUEST, timeout=60)


def sse_events(response: httpx.Response) -> Iterator[dict]:
    for line in response.iter_lines():
        if line.startswith("data:"):
            yield json.loads(line.removeprefix("data:"))


def stream(url: str) -> tuple[str, list[str], str]:
    """(content type, token texts, generated_text) of one /generate_stream call."""
    with httpx.stream("POST", f"{url}/generate_stream", json=REQUEST, timeout=60) as response:
        assert response.status_code == 200, response.read()
        events = list(sse_events(response))
        content_type = response.headers["content-type"]
    assert events, events
    assert events[-1]["generated_text"] is not None, events
    return content_type, [event["token"]["text"] for event in events], events[-1]["generated_text"]


# --- tests -----------------------------------------------------------------------------------


def test_requests_through_nginx_reach_every_replica(stack: Stack) -> None:
    before = [replica.generate_count() for replica in stack.replicas]
    with httpx.Client() as client:
        answers = [generate(stack.lb_url, client) for _ in range(9)]
    assert [answer.status_code for answer in answers] == [200] * 9
    assert all(answer.json()["generated_text"] for answer in answers)
    assert all(answer.headers.get("x-request-id") for answer in answers)
    served = [
        replica.generate_count() - b for replica, b in zip(stack.replicas, before, strict=True)
    ]
    assert sum(served) == 9, f"requests per replica: {served}"
    assert min(served) >= 1, f"requests per replica: {served}"


def test_streaming_passes_through_nginx_token_by_token(stack: Stack) -> None:
    content_type, tokens, text = stream(stack.lb_url)
    assert content_type.startswith("text/event-stream")
    assert len(tokens) > 1, "one event per token"
    # Greedy on the same weights: nginx must hand on exactly what a replica streams.
    assert stream(stack.replicas[0].url)[1:] == (tokens, text)


def test_third_party_clients_work_through_nginx(stack: Stack) -> None:
    """The `text-generation` and `openai` clients, streaming and not, against the balancer."""
    tgi = TextGenerationClient(stack.lb_url, timeout=60)
    assert tgi.generate("What is an apple?", max_new_tokens=6).generated_text
    streamed = list(tgi.generate_stream("What is an apple?", max_new_tokens=6))
    assert len(streamed) > 1
    assert streamed[-1].generated_text is not None
    openai = OpenAI(base_url=f"{stack.lb_url}/v1", api_key="unused", timeout=60)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Name a fruit."}]
    chunks = list(
        openai.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=6, temperature=0, stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)


def test_errors_through_nginx_are_json(stack: Stack) -> None:
    invalid = httpx.post(
        f"{stack.lb_url}/generate", json={"inputs": "hi", "parameters": {"top_p": 7}}, timeout=10
    )
    assert invalid.status_code == 422
    assert invalid.json()["error_type"] == "validation"
    too_large = httpx.post(f"{stack.lb_url}/generate", content=b"x" * 2_000_000, timeout=10)
    assert too_large.status_code == 413
    assert "error" in too_large.json()
    # A body nginx accepts but larger than its default buffers reaches the replica intact.
    long_prompt = {"inputs": "word " * 150_000, "parameters": {"max_new_tokens": 4}}
    long = httpx.post(f"{stack.lb_url}/generate", json=long_prompt, timeout=60)
    assert long.status_code in (200, 422), long.text
    assert long.headers["content-type"] == "application/json"


def test_image_healthcheck_passes_on_a_live_replica_only(stack: Stack) -> None:
    probe = parse_dockerfile().stage("runtime").last("HEALTHCHECK").exec_form()
    assert probe[0] == "python"
    command = [sys.executable, *probe[1:]]
    live = {**os.environ, "LAMINI_PORT": str(stack.replicas[0].port)}
    assert subprocess.run(command, env=live, capture_output=True, timeout=10).returncode == 0
    dead = {**os.environ, "LAMINI_PORT": str(free_port())}
    assert subprocess.run(command, env=dead, capture_output=True, timeout=10).returncode != 0


def test_prometheus_scrapes_every_replica(stack: Stack) -> None:
    expected = {replica.address for replica in stack.replicas}

    def all_up() -> bool:
        up = stack.prometheus.query(f'up{{job="{REPLICA_JOB}"}}')
        return {s["metric"]["instance"] for s in up if s["value"][1] == "1"} == expected

    wait_until(all_up, 30, "Prometheus to scrape every replica")
    targets = stack.prometheus.targets(REPLICA_JOB)
    assert {t["labels"]["instance"] for t in targets} == expected
    assert {t["health"] for t in targets} == {"up"}


def test_latency_quantile_over_the_replicas_is_a_number(stack: Stack) -> None:
    for _ in range(4):
        assert generate(stack.lb_url).status_code == 200
    query = (
        "histogram_quantile(0.95, sum by (le) (rate(lamini_request_duration_seconds_bucket[30s])))"
    )

    def quantile() -> float | None:
        result = stack.prometheus.query(query)
        value = float(result[0]["value"][1]) if result else math.nan
        return value if math.isfinite(value) else None

    wait_until(lambda: quantile() is not None, 30, f"a finite value of {query}")
    assert 0 < quantile() < 60


# Exported only by the continuous engine's step scheduler.
STEP_SCHEDULER_METRICS = re.compile(
    r"lamini_(running_sequences|kv_cache_usage_ratio|step_duration_seconds|step_tokens"
    r"|prefix_cache_\w+)"
)


def test_recording_rules_and_dashboard_queries_run_on_prometheus(stack: Stack) -> None:
    assert generate(stack.lb_url).status_code == 200
    wait_until(
        lambda: bool(stack.prometheus.query("model_route:lamini_request_duration_seconds:p95_5m")),
        30,
        "the latency recording rule",
    )
    dashboard = json.loads(DASHBOARD.read_text())
    empty = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = (
                target["expr"]
                .replace("$__rate_interval", "1m")
                .replace("$model", ".*")
                .replace("$instance", ".*")
            )
            if not stack.prometheus.query(expr) and not STEP_SCHEDULER_METRICS.search(expr):
                empty.append(panel["title"])
    # Nothing was rejected or cancelled yet; every other panel has data after this traffic,
    # except the step scheduler's own series (these replicas batch by window).
    assert set(empty) <= {"Rejected and cancelled requests"}, empty


def test_the_autoscalers_queries_run_on_prometheus(stack: Stack) -> None:
    """deploy/kubernetes' prometheus-adapter rule, expanded as the adapter expands it (its pod
    matchers and grouping swapped for this stack's replica job and instances), gives one value
    per replica; KEDA's query is valid PromQL (no pod labels here, so no series)."""
    for _ in range(len(stack.replicas)):
        assert generate(stack.lb_url).status_code == 200
    (rule,) = adapter_rules(render(KUBERNETES_DIR / "monitoring"))
    query = (
        rule["metricsQuery"]
        .replace("<<.Series>>", series_name(rule["seriesQuery"]))
        .replace("<<.LabelMatchers>>", f'job="{REPLICA_JOB}"')
        .replace("<<.GroupBy>>", "instance")
    )
    expected = {replica.address for replica in stack.replicas}

    def one_value_per_replica() -> bool:
        return {s["metric"]["instance"] for s in stack.prometheus.query(query)} == expected

    wait_until(one_value_per_replica, 30, f"{query} for every replica")
    keda_query = keda_trigger(render_overlay("cpu-keda"))["metadata"]["query"]
    assert stack.prometheus.query(keda_query) == []


Outcome = tuple[bool, int | str]  # (sent after the replica was gone, status or exception)


def outcomes_around(
    lb_url: str, take_down: Callable[[], None], headers: Mapping[str, str] | None = None
) -> list[Outcome]:
    """Four clients send /generate through nginx in a loop; `take_down` runs in the middle.

    Each request opens its own connection to nginx. A reload (the rolling update's stand-in
    for the ingress following the endpoints) closes the old workers' idle keep-alive
    connections, and a request sent on one at that instant is lost between the client and the
    balancer, before any replica sees it (seen once in ~2,500 requests: RemoteProtocolError).
    That is the balancer's, not the replicas': what these tests judge is what reaches them."""
    outcomes: list[Outcome] = []
    stop_traffic, replica_gone = threading.Event(), threading.Event()
    fresh_connections = httpx.Limits(max_keepalive_connections=0)

    def client_loop() -> None:
        with httpx.Client(headers=headers, limits=fresh_connections) as client:
            while not stop_traffic.is_set():
                gone = replica_gone.is_set()
                try:
                    status: int | str = generate(lb_url, client).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                outcomes.append((gone, status))

    clients = [threading.Thread(target=client_loop) for _ in range(4)]
    for thread in clients:
        thread.start()
    try:
        time.sleep(1.5)
        take_down()
        replica_gone.set()
        time.sleep(2.0)
    finally:
        stop_traffic.set()
        for thread in clients:
            thread.join(timeout=60)
    return outcomes


def assert_nothing_lost(stack: Stack, victim: Replica, outcomes: list[Outcome]) -> None:
    assert {status for _, status in outcomes} == {200}, Counter(outcomes)
    assert (True, 200) in outcomes, "the other replicas answer once the victim is gone"

    def victim_is_down() -> bool:
        up = stack.prometheus.query(f'up{{instance="{victim.address}"}}')
        return bool(up) and up[0]["value"][1] == "0"

    wait_until(victim_is_down, 15, "Prometheus to report the replica down")


def test_a_replica_crashing_mid_run_loses_no_request(stack: Stack) -> None:
    """SIGKILL under load: requests that were in flight on the dead replica never got a
    response started, so nginx retries them on another replica."""
    victim = stack.replicas[2]
    served: list[int] = []

    def crash() -> None:
        served.append(victim.generate_count())
        victim.child.stop(signal.SIGKILL)

    outcomes = outcomes_around(stack.lb_url, crash)
    assert served[0] > 0, "the crashed replica was taking traffic"
    assert_nothing_lost(stack, victim, outcomes)


def test_stopping_a_replica_mid_run_loses_no_request(stack: Stack) -> None:
    """SIGTERM (what `docker stop` sends) under load: requests in flight on the replica finish,
    nginx retries the ones it refuses while draining, and it exits cleanly."""
    victim = stack.replicas[1]
    served: list[int] = []
    exit_codes: list[int] = []

    def stop() -> None:
        served.append(victim.generate_count())
        exit_codes.append(victim.child.stop(signal.SIGTERM, timeout_s=40))

    outcomes = outcomes_around(stack.lb_url, stop)
    assert served[0] > 0, "the stopped replica was taking traffic"
    assert exit_codes == [0], f"the replica did not drain cleanly:\n{victim.child.output()}"
    assert_nothing_lost(stack, victim, outcomes)
    assert generate(stack.replicas[0].url).status_code == 200


def test_nginx_answers_json_when_no_replica_is_left(tmp_path: Path) -> None:
    nobody_listens = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    nginx, lb_url = start_nginx(nobody_listens, tmp_path)
    with running(nginx, lambda: answers_at_all(lb_url), 30):
        answer = httpx.post(f"{lb_url}/generate", json=REQUEST, timeout=10)
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["error_type"] == "unavailable"


# --- the Kubernetes Deployment, rolled out behind nginx --------------------------------------

API_KEY = "rolling-update-key"
# The preStop sleep gives endpoints time to drop a pod; here nginx is reloaded before it starts,
# so a shortened sleep plays the same part without making the test 10 s longer per pod.
PRESTOP_S = 1.0


# The hub is out of reach: the models the ConfigMap names are seeded into the Hugging Face cache
# on the volume, as the convert Job's download would leave them, from their tiny twins' files.
SEEDED_REVISION = "0123456789abcdef0123456789abcdef01234567"


def seed_hf_cache(hf_home: Path, hub_id: str, checkpoint: Path) -> None:
    repo = hf_home / "hub" / f"models--{hub_id.replace('/', '--')}"
    shutil.copytree(checkpoint, repo / "snapshots" / SEEDED_REVISION)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SEEDED_REVISION)


@dataclass
class Cluster:
    """The Deployment's pods as local processes behind nginx, which plays the Service."""

    objects: list[Manifest]
    mounts: dict[str, Path]
    workdir: Path
    nginx_include: Path
    lb_url: str
    pods: list[Replica]  # ready and not terminating: the Service's endpoints
    started: list[Replica]

    @property
    def deployment(self) -> Manifest:
        return find(self.objects, "Deployment", "lamini-serve")

    def start_pod(self, index: int) -> Replica:
        port = free_port()
        overrides = {"LAMINI_HOST": "127.0.0.1", "LAMINI_PORT": str(port)}
        command, env = container_process(self.objects, self.deployment, self.mounts, overrides)
        log = self.workdir / f"pod-{index}.log"
        pod = Replica(start_child(f"pod {index}", command, log, env), port)
        self.started.append(pod)
        return pod

    def wait_ready(self, pod: Replica) -> None:
        """The readiness probe, as the kubelet runs it, until it passes."""
        probe = only_container(self.deployment)["readinessProbe"]["httpGet"]["path"]
        wait_until(
            lambda: answers_ok(pod.url + probe) or pod.child.process.poll() is not None,
            STARTUP_TIMEOUT_S,
            f"{pod.child.name} to be ready",
        )
        assert pod.child.process.poll() is None, pod.child.output()

    def route_to_ready_pods(self) -> None:
        """What the endpoints controller and the ingress do: the balancer's upstreams are the
        pods that are ready and not terminating."""
        port = int(self.lb_url.rsplit(":", 1)[1])
        render_nginx_include([pod.address for pod in self.pods], port, self.nginx_include)
        prefix = self.nginx_include.parent
        config = prefix / "nginx.conf"
        assert check_nginx_config(prefix, config).returncode == 0
        reload = nginx_command(prefix, config, "-s", "reload")
        assert subprocess.run(reload, capture_output=True, check=False).returncode == 0
        time.sleep(0.5)  # the new workers take over; old ones finish what they proxy

    def terminate(self, pod: Replica) -> int:
        """Pod deletion: out of the endpoints, the preStop sleep, SIGTERM, the drain."""
        spec = self.deployment["spec"]["template"]["spec"]
        self.pods.remove(pod)
        self.route_to_ready_pods()
        time.sleep(PRESTOP_S)
        pod.child.process.send_signal(signal.SIGTERM)  # once, as the kubelet sends it
        assert not answers_ok(f"{pod.url}/ready"), "readiness goes off at SIGTERM"
        return pod.child.process.wait(timeout=spec["terminationGracePeriodSeconds"])


@pytest.fixture
def cluster(tiny_twin, tmp_path: Path) -> Iterator[Cluster]:
    """The cpu overlay as rendered (its ConfigMap's model included): its convert Job run once
    into the volume, then as many pods as the autoscaler keeps at rest, each mounting the volume
    read-only, behind nginx."""
    objects = render_overlay("cpu")
    volume, keys = tmp_path / "volume", tmp_path / "api-keys"
    volume.mkdir()
    keys.mkdir()
    digest = hashlib.sha256(API_KEY.encode()).hexdigest()
    (keys / "keys.sha256").write_text(f"{digest}\n")
    job_mounts = {"/data": volume, "/tmp": tmp_path / "job-tmp"}
    offline = {"HF_HUB_OFFLINE": "1"}
    command, env = container_process(objects, find(objects, "Job"), job_mounts, offline)
    for hub_id in env["LAMINI_MODELS"].split(","):
        seed_hf_cache(Path(env["HF_HOME"]), hub_id, tiny_twin(hub_id))
    job = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert job.returncode == 0, job.stderr
    with ExitStack() as stack:
        view = stack.enter_context(read_only_view(volume, tmp_path / "read-only-volume"))
        with pytest.raises(OSError, match="Read-only file system"):
            (view / "store" / "written-by-a-pod").write_text("")
        mounts = {"/data": view, "/etc/lamini/api-keys": keys, "/tmp": tmp_path / "pod-tmp"}
        nginx, lb_url = start_nginx([f"127.0.0.1:{free_port()}"], tmp_path / "nginx")
        stack.enter_context(running(nginx, lambda: answers_at_all(lb_url), 30))
        include = tmp_path / "nginx" / "lamini.conf"
        cluster = Cluster(objects, mounts, tmp_path, include, lb_url, [], [])
        stack.callback(lambda: [pod.child.stop() for pod in cluster.started])
        at_rest = find(objects, "HorizontalPodAutoscaler")["spec"]["minReplicas"]
        for index in range(at_rest):
            cluster.pods.append(cluster.start_pod(index))
        for pod in cluster.pods:
            cluster.wait_ready(pod)
        cluster.route_to_ready_pods()
        yield cluster


def test_a_rolling_update_of_the_deployment_loses_no_request(cluster: Cluster) -> None:
    """maxSurge 1 / maxUnavailable 0 under load: a new pod is started and becomes ready, then an
    old one leaves the endpoints, sleeps through preStop and drains on SIGTERM - pod by pod,
    through every pod - and every request answers 200."""
    auth = {"Authorization": f"Bearer {API_KEY}"}
    assert httpx.post(f"{cluster.lb_url}/generate", json=REQUEST, timeout=30).status_code == 401
    old_pods, served_before, exit_codes = list(cluster.pods), [], []

    def roll_out() -> None:
        for index, old in enumerate(old_pods, start=len(old_pods)):
            new = cluster.start_pod(index)
            cluster.wait_ready(new)
            cluster.pods.append(new)
            cluster.route_to_ready_pods()
            served_before.append(old.generate_count())
            exit_codes.append(cluster.terminate(old))

    outcomes = outcomes_around(cluster.lb_url, roll_out, auth)
    assert {status for _, status in outcomes} == {200}, Counter(outcomes)
    assert (True, 200) in outcomes, "the new pods answer once the old ones are gone"
    assert exit_codes == [0] * len(old_pods), [pod.child.output() for pod in old_pods]
    assert min(served_before) > 0, "every old pod took traffic until it was replaced"
    assert all(pod.generate_count() > 0 for pod in cluster.pods), "the new pods take it now"

"""The deployment files (Dockerfile, deploy/k8s/, deploy/systemd/) against the server they deploy.

Nothing here needs a container runtime, a cluster or systemd as PID 1 (this machine has none of them):

* systemd: ``systemd-analyze verify`` and ``systemd-analyze security --offline`` of the unit (ExecStart pointed at
  this venv's python, which verify requires to exist), and its settings against the server's;
* Kubernetes: ``kubectl kustomize`` renders the manifests offline and ``kubectl patch --local`` turns them into
  JSON; the assertions then hold them to the server's routes, port, settings and shutdown budget, and a real
  server started with the ConfigMap's and the example Secret's environment answers every probe;
* Dockerfile: parsed, and its runtime intent executed without docker: the builder stage's wheel built from the
  files its COPY lines name, the ENTRYPOINT run from that wheel with the image's ENV, and the HEALTHCHECK's exact
  command run against it (exit 0 while it serves, non-zero once it has stopped).

systemd-analyze and kubectl missing: skipped, or failed when ``CI`` is set (``installed_or_skip``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.parser import Parser
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from packaging.requirements import Requirement

from server.__main__ import _SHUTDOWN_MARGIN_S
from server.config import OPTIONS, Config
from storage.open import is_postgres_url
from tests.pg_fixtures import installed_or_skip

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
UNIT = ROOT / "deploy" / "systemd" / "minitalk.service"
UNIT_ENV = ROOT / "deploy" / "systemd" / "minitalk.env"
DOCKERFILE = ROOT / "Dockerfile"

# Every environment variable the server reads: its settings, and the OpenTelemetry SDK's standard ones.
SETTINGS_ENV = frozenset(opt.env for opt in OPTIONS if opt.env is not None)
OTEL_ENV = frozenset(
    {
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
    }
)
SERVER_ENV = SETTINGS_ENV | OTEL_ENV
# What the interpreter itself reads (the image and the unit set these).
PYTHON_ENV = frozenset({"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"})
DEFAULTS = Config()

_LISTENING = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")
_METRICS = re.compile(rb"metrics on http://127\.0\.0\.1:(\d+)/metrics")


class ToolMissing(Exception):
    """A command-line tool these tests drive is not installed."""


def find_tool(name: str, package: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/local/bin")
    if path is None:
        raise ToolMissing(f"{name} is not installed (Debian/Ubuntu: apt-get install {package})")
    return path


def run_tool(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    # No cluster, no kubeconfig: anything that tried to reach an API server would fail, not pass.
    env = {**os.environ, "KUBECONFIG": os.devnull}
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=False, **kwargs)


# --- systemd --------------------------------------------------------------------------------------------------


def unit_settings(text: str) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit file (all sections), values in order."""
    settings: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def env_file(text: str, *, commented: bool) -> dict[str, str]:
    """``NAME=value`` lines of an EnvironmentFile; with ``commented`` also the ``# NAME=value`` suggestions."""
    pattern = re.compile(r"^(#\s*)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
    found: dict[str, str] = {}
    for line in text.splitlines():
        match = pattern.match(line.strip())
        if match and (commented or match.group(1) is None):
            found[match.group(2)] = match.group(3)
    return found


@pytest.fixture
def verifiable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart on this venv's python: verify insists the binary exists. Nothing else changed."""
    text = UNIT.read_text()
    exec_start = unit_settings(text)["ExecStart"][0]
    binary = exec_start.split()[0]
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(f"ExecStart={binary} ", f"ExecStart={sys.executable} "))
    assert copy.read_text() != text
    return copy


def test_systemd_analyze_verifies_the_unit_without_a_warning(verifiable_unit: Path) -> None:
    analyze = installed_or_skip(partial(find_tool, "systemd-analyze", "systemd"), ToolMissing)
    done = run_tool([analyze, "verify", str(verifiable_unit)])
    # verify exits 0 on an unknown key or a bad value and only prints it: any output is a finding.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")

    # The check has teeth: a misspelt key and a bad value are reported.
    broken = verifiable_unit.read_text().replace("KillSignal=SIGTERM", "KilSignal=SIGTERM")
    broken = broken.replace("TimeoutStopSec=", "TimeoutStopSec=soon")
    verifiable_unit.write_text(broken)
    done = run_tool([analyze, "verify", str(verifiable_unit)])
    assert "Unknown key" in done.stderr
    assert "Failed to parse time value" in done.stderr


def test_the_unit_is_hardened(verifiable_unit: Path) -> None:
    analyze = installed_or_skip(partial(find_tool, "systemd-analyze", "systemd"), ToolMissing)
    # Exposure on systemd's 0-10 scale, threshold in tenths: 2.0 and below is what it calls OK.
    done = run_tool([analyze, "security", "--offline=true", "--threshold=20", "--no-pager", str(verifiable_unit)])
    assert done.returncode == 0, done.stdout[-600:] + done.stderr

    text = verifiable_unit.read_text()
    weak = "\n".join(line for line in text.splitlines() if not line.startswith(("Protect", "Private", "System")))
    verifiable_unit.write_text(weak)
    done = run_tool([analyze, "security", "--offline=true", "--threshold=20", "--no-pager", str(verifiable_unit)])
    assert done.returncode != 0, "the threshold would pass an unhardened unit"


def test_the_unit_runs_the_server_and_stops_within_its_budget() -> None:
    unit = unit_settings(UNIT.read_text())
    argv = shlex.split(unit["ExecStart"][0])
    assert argv[0].endswith("/bin/python")
    assert argv[1:3] == ["-m", "server"]
    flags = {opt.flag for opt in OPTIONS}
    assert all(arg in flags for arg in argv[3::2]), argv  # flags and their values, in pairs

    defaults = dict(value.partition("=")[::2] for value in unit.get("Environment", []))
    suggested = env_file(UNIT_ENV.read_text(), commented=True)
    unknown = (set(defaults) | set(suggested)) - SERVER_ENV - PYTHON_ENV
    assert not unknown, f"not settings of the server: {sorted(unknown)}"

    assert unit["KillSignal"] == ["SIGTERM"]
    active = env_file(UNIT_ENV.read_text(), commented=False)
    shutdown = float(active.get("SHUTDOWN_TIMEOUT", DEFAULTS.shutdown_timeout))
    assert float(unit["TimeoutStopSec"][0]) > shutdown + _SHUTDOWN_MARGIN_S
    assert unit["Restart"] == ["on-failure"]
    assert int(unit["LimitNOFILE"][0]) >= 65536
    assert unit["MemoryMax"] == ["2G"]
    assert unit["Type"] == ["exec"]
    assert unit["DynamicUser"] == ["yes"]
    # SQLite lives in the state directory, the one place ProtectSystem=strict leaves writable.
    state = f"/var/lib/{unit['StateDirectory'][0]}/"
    for source in (defaults, active):
        assert source["DATABASE_URL"] == f"sqlite:///{state}minitalk.db"
    assert unit["EnvironmentFile"] == ["/etc/minitalk/minitalk.env"]


# --- Kubernetes -----------------------------------------------------------------------------------------------


def json_documents(text: str) -> list[dict[str, Any]]:
    """kubectl's ``-o json`` for several objects: one JSON document after another."""
    decoder = json.JSONDecoder()
    docs: list[dict[str, Any]] = []
    whitespace = re.compile(r"\s*")
    index = whitespace.match(text).end()  # type: ignore[union-attr]  # \s* always matches
    while index < len(text):
        doc, index = decoder.raw_decode(text, index)
        docs.append(doc)
        index = whitespace.match(text, index).end()  # type: ignore[union-attr]
    return docs


def render(directory: Path) -> dict[str, dict[str, Any]]:
    """The kustomization rendered offline, as JSON objects by kind (one of each kind here)."""
    kubectl = installed_or_skip(partial(find_tool, "kubectl", "kubectl"), ToolMissing)
    built = run_tool([kubectl, "kustomize", str(directory)])
    assert built.returncode == 0, built.stderr
    as_json = run_tool(
        [kubectl, "patch", "--local", "-f", "-", "--type", "merge", "-p", "{}", "-o", "json"], input=built.stdout
    )
    assert as_json.returncode == 0, as_json.stderr
    objects: dict[str, dict[str, Any]] = {}
    for doc in json_documents(as_json.stdout):
        assert doc["kind"] not in objects, f"two {doc['kind']}s"
        objects[doc["kind"]] = doc
    return objects


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    return render(K8S / "example")


@dataclass
class Pod:
    objects: dict[str, dict[str, Any]]
    spec: dict[str, Any] = field(init=False)
    container: dict[str, Any] = field(init=False)
    config: dict[str, str] = field(init=False)
    secret: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.spec = self.objects["Deployment"]["spec"]["template"]["spec"]
        (self.container,) = self.spec["containers"]
        self.config = self.objects["ConfigMap"]["data"]
        self.secret = self.objects["Secret"]["stringData"]

    def port(self, name_or_number: str | int) -> int:
        for port in self.container["ports"]:
            if name_or_number in (port["name"], port["containerPort"]):
                return int(port["containerPort"])
        raise AssertionError(f"no container port {name_or_number!r}")

    def env(self) -> Iterator[dict[str, Any]]:
        yield from self.container.get("env", [])


@pytest.fixture(scope="module")
def pod(k8s: dict[str, dict[str, Any]]) -> Pod:
    return Pod(k8s)


def test_base_is_the_example_without_its_placeholder_secret(k8s: dict[str, dict[str, Any]]) -> None:
    assert set(k8s) == {"ConfigMap", "Secret", "Service", "Deployment", "PodDisruptionBudget"}
    base = render(K8S / "base")
    assert set(base) == set(k8s) - {"Secret"}
    assert all(base[kind] == k8s[kind] for kind in base)
    assert all("CHANGE-ME" in value for value in k8s["Secret"]["stringData"].values())


def test_probes_name_the_servers_routes_and_port(pod: Pod) -> None:
    chat_port = int(pod.config["PORT"])
    assert chat_port == DEFAULTS.port == pod.port("http")
    assert pod.container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert pod.container["startupProbe"]["httpGet"]["path"] == "/health"
    assert pod.container["readinessProbe"]["httpGet"]["path"] == "/ready"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert pod.port(pod.container[probe]["httpGet"]["port"]) == chat_port, probe


def test_resources_are_the_originals_one_cpu_and_two_gib(pod: Pod) -> None:
    resources = pod.container["resources"]
    assert resources["limits"] == {"cpu": "1", "memory": "2Gi"}
    assert resources["requests"] == resources["limits"]


def test_every_environment_variable_is_one_the_server_reads(pod: Pod) -> None:
    unknown = set(pod.config) - SERVER_ENV
    assert not unknown, f"ConfigMap keys that are no setting: {sorted(unknown)}"
    defined: set[str] = set(pod.config)
    helpers: set[str] = set()
    referenced: set[str] = set()
    for var in pod.env():
        # $(NAME) expands only names defined before it in the list.
        refs = set(re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", var.get("value", "")))
        assert refs <= defined, f"{var['name']} refers to {sorted(refs - defined)}, not defined before it"
        referenced |= refs
        defined.add(var["name"])
        if "fieldRef" in var.get("valueFrom", {}):
            helpers.add(var["name"])  # downward API, there to be referenced
        else:
            assert var["name"] in SERVER_ENV, f"{var['name']} is no setting of the server"
    assert helpers <= referenced, f"downward-API variables nobody uses: {sorted(helpers - referenced)}"
    names = [var["name"] for var in pod.env()]
    assert len(names) == len(set(names))
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in names
    assert {"LOG_FORMAT": "json", "ADMIN_ROUTES": "token"}.items() <= pod.config.items()


def test_secret_refs_name_the_example_secrets_keys(pod: Pod, k8s: dict[str, dict[str, Any]]) -> None:
    secret_name = k8s["Secret"]["metadata"]["name"]
    refs = {
        var["name"]: var["valueFrom"]["secretKeyRef"] for var in pod.env() if "secretKeyRef" in var.get("valueFrom", {})
    }
    assert set(refs) == {"DATABASE_URL", "JWT_SECRET", "ADMIN_TOKEN"}
    assert {ref["name"] for ref in refs.values()} == {secret_name}
    assert {ref["key"] for ref in refs.values()} == set(pod.secret)
    assert not {"DATABASE_URL", "JWT_SECRET", "ADMIN_TOKEN"} & set(pod.config), "a secret in the ConfigMap"
    # Several replicas share one database only on PostgreSQL (a second process on one SQLite file is refused).
    replicas = k8s["Deployment"]["spec"]["replicas"]
    assert replicas == 3
    assert is_postgres_url(pod.secret[refs["DATABASE_URL"]["key"]])


def test_the_pod_is_given_time_to_drain_and_shut_down(pod: Pod) -> None:
    command = pod.container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    shutdown = float(pod.config.get("SHUTDOWN_TIMEOUT", DEFAULTS.shutdown_timeout))
    assert pod.spec["terminationGracePeriodSeconds"] > pre_stop + shutdown + _SHUTDOWN_MARGIN_S


def test_metrics_port_annotation_and_container_port_agree(pod: Pod, k8s: dict[str, dict[str, Any]]) -> None:
    annotations = k8s["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    metrics_port = int(pod.config["METRICS_PORT"])
    assert pod.port("metrics") == metrics_port == int(annotations["prometheus.io/port"])
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert metrics_port != pod.port("http")


def test_the_container_runs_locked_down_as_the_images_user(pod: Pod) -> None:
    pod_security = pod.spec["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert str(pod_security["runAsUser"]) == dockerfile_user().split(":")[0]
    security = pod.container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    (tmp,) = (mount for mount in pod.container["volumeMounts"] if mount["mountPath"] == "/tmp")
    (volume,) = (volume for volume in pod.spec["volumes"] if volume["name"] == tmp["name"])
    assert "emptyDir" in volume


def test_service_and_disruption_budget_select_the_pods(pod: Pod, k8s: dict[str, dict[str, Any]]) -> None:
    labels = k8s["Deployment"]["spec"]["template"]["metadata"]["labels"]
    service = k8s["Service"]["spec"]
    assert service["selector"].items() <= labels.items()
    assert k8s["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert k8s["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (port,) = service["ports"]
    assert port["port"] == DEFAULTS.port
    assert pod.port(port["targetPort"]) == pod.port("http")
    # Long-polling sessions live in one process: sticky by client address (deploy/README.md says why).
    assert service["sessionAffinity"] == "ClientIP"
    assert service["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] >= DEFAULTS.ping_interval


async def test_a_server_with_the_pods_environment_answers_every_probe(pod: Pod, tmp_path: Path) -> None:
    """The ConfigMap and the example Secret's values are accepted by the real server, and each probe and the
    scrape annotation's path answer 200 on the port they name (PostgreSQL swapped for a temporary SQLite file)."""
    env = {
        **pod.config,
        **{
            var["name"]: pod.secret[var["valueFrom"]["secretKeyRef"]["key"]]
            for var in pod.env()
            if "secretKeyRef" in var.get("valueFrom", {})
        },
    }
    env["DATABASE_URL"] = f"sqlite:///{tmp_path}/minitalk.db"
    # Free ports instead of the fixed ones (the flags win over PORT and METRICS_PORT); loopback only.
    async with trio.open_nursery() as nursery:
        proc, log = await start(
            nursery,
            [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0"],
            env=env,
            cwd=ROOT,
        )
        ports = {"http": port_in(log, _LISTENING), "metrics": port_in(log, _METRICS)}
        async with httpx.AsyncClient(timeout=5) as http:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                get = pod.container[probe]["httpGet"]
                response = await http.get(f"http://127.0.0.1:{ports[get['port']]}{get['path']}")
                assert response.status_code == 200, (probe, response.text)
            annotations = pod.objects["Deployment"]["spec"]["template"]["metadata"]["annotations"]
            scrape = await http.get(f"http://127.0.0.1:{ports['metrics']}{annotations['prometheus.io/path']}")
            assert scrape.status_code == 200
            assert "minitalk_" in scrape.text
        assert b'"level"' in log, "LOG_FORMAT=json was not applied"
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await proc.wait() == 0
        nursery.cancel_scope.cancel()


# --- Dockerfile -----------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            keyword, _, args = pending.partition(" ")
            instructions.append((keyword.upper(), " ".join(args.split())))
            pending = ""
    return instructions


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, args in dockerfile_instructions():
        if keyword == "FROM":
            result.append([])
        result[-1].append((keyword, args))
    return result


def only(stage: list[tuple[str, str]], keyword: str) -> str:
    (args,) = (args for kw, args in stage if kw == keyword)
    return args


def image_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in stage:
        if keyword == "ENV":
            for item in shlex.split(args):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def dockerfile_user() -> str:
    return only(stages()[-1], "USER")


def test_the_dockerfile_builds_slim_and_runs_as_a_user() -> None:
    builder, runtime = stages()
    assert only(builder, "FROM") == "python:3.11-slim AS builder"
    assert only(runtime, "FROM") == "python:3.11-slim"  # Debian: has the `sleep` the pod's preStop runs
    install = " ".join(args for kw, args in builder if kw == "RUN")
    assert "pip wheel --no-deps -w /wheels ." in install
    assert "/opt/venv/bin/pip install /wheels/*.whl" in install
    assert "[" not in install and " -e " not in install, "the image installs no extras and nothing editable"
    assert not any("pip" in args for kw, args in runtime if kw == "RUN"), "the runtime stage installs nothing"
    assert "--from=builder /opt/venv /opt/venv" in [args for kw, args in runtime if kw == "COPY"]

    uid, _, gid = dockerfile_user().partition(":")
    assert uid.isdigit() and int(uid) >= 1000 and gid.isdigit()
    setup = only(runtime, "RUN")
    assert f"--uid {uid}" in setup and f"--gid {gid}" in setup and f"chown {uid}:{gid} /data" in setup


def test_the_dockerfile_entrypoint_ports_and_signals_fit_the_server() -> None:
    runtime = stages()[-1]
    entrypoint = json.loads(only(runtime, "ENTRYPOINT"))
    assert entrypoint == ["python", "-m", "server", "--host", "0.0.0.0"]
    (host,) = (opt for opt in OPTIONS if opt.flag == "--host")
    assert host.env is None, "--host has an environment variable now: set it in ENV instead"
    env = image_env(runtime)
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert not set(env) - SERVER_ENV - PYTHON_ENV
    assert only(runtime, "EXPOSE").split() == [env["PORT"], env["METRICS_PORT"]]
    assert int(env["PORT"]) == DEFAULTS.port
    assert only(runtime, "STOPSIGNAL") == "SIGTERM"
    # The default SQLite file, absolute, on the volume the user owns, which is also the working directory.
    assert json.loads(only(runtime, "VOLUME")) == ["/data"]
    assert env["DATABASE_URL"] == "sqlite:////data/minitalk.db"
    assert only(runtime, "WORKDIR") == "/data"
    healthcheck = only(runtime, "HEALTHCHECK")
    assert "/health" in healthcheck and "CMD [" in healthcheck


def copied_sources() -> list[str]:
    """What the builder stage copies from the build context."""
    sources: list[str] = []
    for keyword, args in stages()[0]:
        if keyword == "COPY":
            *from_context, _destination = args.split()
            sources += [source for source in from_context if not source.startswith("--")]
    return sources


def test_dockerignore_lets_through_what_the_builder_copies() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*", "an allow-list: the context is the whole repository (.venv, data, node_modules)"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    assert set(copied_sources()) == allowed


async def start(
    nursery: trio.Nursery, argv: list[str], *, env: dict[str, str], cwd: Path
) -> tuple[trio.Process, bytearray]:
    """A server process, once it logged that it listens; its stderr keeps being collected."""
    proc: trio.Process = await nursery.start(
        partial(
            trio.run_process,
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env={**os.environ, **env},
            check=False,
        )
    )
    assert proc.stderr is not None
    log = bytearray()
    with trio.fail_after(30):
        while _LISTENING.search(log) is None:
            chunk = await proc.stderr.receive_some(65536)
            if not chunk:
                raise RuntimeError(f"server exited before listening:\n{log.decode(errors='replace')}")
            log += chunk

    async def drain(stream: trio.abc.ReceiveStream) -> None:
        while chunk := await stream.receive_some(65536):
            log.extend(chunk)

    nursery.start_soon(drain, proc.stderr)
    return proc, log


def port_in(log: bytearray, pattern: re.Pattern[bytes]) -> int:
    match = pattern.search(log)
    assert match is not None, log.decode(errors="replace")
    return int(match.group(1))


async def healthcheck(command: list[str], env: dict[str, str]) -> int:
    with trio.fail_after(15):
        done = await trio.run_process(command, env={**os.environ, **env}, check=False, capture_stderr=True)
    return done.returncode


async def test_the_images_runtime_intent_without_docker(tmp_path: Path) -> None:
    """The builder's wheel, from exactly the files its COPY lines take, holds the server and requires no extra;
    the ENTRYPOINT run from that wheel with the image's ENV serves, and the HEALTHCHECK's own command says so
    (exit 0), and says otherwise once the server has stopped. Not run: pip resolving the dependencies (this
    venv's are used), the base image, the user, the volume."""
    context = tmp_path / "context"
    context.mkdir()
    for source in copied_sources():  # less what .dockerignore leaves out
        if (ROOT / source).is_dir():
            skip = shutil.ignore_patterns("__pycache__", "*.pyc", "results", "node_modules")
            shutil.copytree(ROOT / source, context / source, ignore=skip)
        else:
            shutil.copy(ROOT / source, context / source)
    wheels = tmp_path / "wheels"
    with trio.fail_after(60):
        await trio.run_process(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "-w",
                str(wheels),
                ".",
            ],
            cwd=context,
            capture_stdout=True,
            capture_stderr=True,
        )
    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = Parser().parsestr(archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode())
    assert {"server/__main__.py", "protocol/__init__.py", "storage/open.py"} <= names
    # What the image installs: the project's dependencies, and neither its dev nor its bench extras.
    required = {Requirement(req) for req in metadata.get_all("Requires-Dist") or []}
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert {req for req in required if req.marker is None} == {Requirement(req) for req in declared}

    site = tmp_path / "site"
    await trio.run_process(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
        capture_stdout=True,
        capture_stderr=True,
    )
    runtime = stages()[-1]
    data = tmp_path / "data"  # the image's /data
    data.mkdir()
    env = {name: value.replace("/data/", f"{data}/") for name, value in image_env(runtime).items() if name != "PATH"}
    env["PYTHONPATH"] = str(site)  # the venv's site-packages, with this venv's dependencies behind it
    where = await trio.run_process(
        [sys.executable, "-c", "import server; print(server.__file__)"],
        cwd=data,
        env={**os.environ, **env},
        capture_stdout=True,
    )
    origin = where.stdout.decode()
    assert origin.startswith(str(site)), f"the server would not come from the wheel: {origin}"

    entrypoint = json.loads(only(runtime, "ENTRYPOINT"))
    command = json.loads(only(runtime, "HEALTHCHECK").split("CMD", 1)[1])
    assert command[0] == "python"
    command[0] = sys.executable
    async with trio.open_nursery() as nursery:
        # The image listens on 0.0.0.0; here loopback only (a later --host wins), and a free port.
        argv = [sys.executable, *entrypoint[1:], "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0"]
        proc, log = await start(nursery, argv, env=env, cwd=data)
        port = port_in(log, _LISTENING)
        assert (data / "minitalk.db").exists(), "the image's DATABASE_URL did not land on its volume"
        assert await healthcheck(command, {"PORT": str(port)}) == 0
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await proc.wait() == 0
        nursery.cancel_scope.cancel()
    assert await healthcheck(command, {"PORT": str(port)}) != 0

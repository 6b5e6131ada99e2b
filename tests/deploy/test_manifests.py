"""The Kubernetes manifests (deploy/k8s), read offline: every overlay renders, every object
validates against its schema (Kubernetes' own, or a CRD vendored in deploy/crds), and the
manifests agree with the code they run: commands, ports, probe paths, environment variables.
No cluster and no database: kubectl only renders.
"""

from __future__ import annotations

import functools
import inspect
import re
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
from psycopg.conninfo import conninfo_to_dict

from cli import readmodels
from cli.app import app as cli_app
from infra import serve
from infra.settings import Role, Settings, SettingsError

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cli", "commands", "events", "infra", "mcp_tools", "projections", "queries")
ENV_LITERAL = re.compile(
    r"[\"'](VOTELEDGER_\w+|DATABASE_URL|REDIS_URL|SENTRY_\w+|PROMETHEUS_MULTIPROC_DIR)[\"']"
)
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job")
NOBODY = 65534  # the Dockerfile's USER
# Secrets the operators make (not created by hand, so not in docs/deploy.md's commands).
OPERATOR_SECRETS = {"voteledger-db-app"}
# The database role each process connects as (by its command): the command side and the
# projectors write (and LISTEN) on the primary; the read side may read a standby.
ROLES: dict[str, Role] = {"commands": "command", "project": "projector", "queries": "query"}
# What a Secret holds, where its shape matters to the settings.
PLACEHOLDERS = {"DATABASE_URL": "postgresql://voteledger:secret@voteledger-db-rw/voteledger"}
Obj = dict[str, Any]


def _name(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def _of(objects: tuple[Obj, ...], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _pods(objects: tuple[Obj, ...]) -> Iterator[tuple[Obj, Obj]]:
    """(workload, pod spec) of every workload."""
    for obj in objects:
        if obj["kind"] in WORKLOADS:
            yield obj, obj["spec"]["template"]["spec"]


def _containers(objects: tuple[Obj, ...]) -> Iterator[tuple[Obj, Obj, Obj]]:
    """(workload, pod spec, container) of every container, init containers too."""
    for obj, pod in _pods(objects):
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            yield obj, pod, container


def _selects(selector: Obj, labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels/matchExpressions, or a Service's map) matches."""
    plain = selector.get("matchLabels", {} if "matchExpressions" in selector else selector)
    if any(labels.get(k) != v for k, v in plain.items()):
        return False
    for e in selector.get("matchExpressions", []):
        inside = labels.get(e["key"]) in e.get("values", [])
        if (e["operator"], inside) in (("In", False), ("NotIn", True)):
            return False
        if (e["operator"], e["key"] in labels) in (("Exists", False), ("DoesNotExist", True)):
            return False
    return True


def test_every_object_validates(
    objects: tuple[Obj, ...], schema_problems: Callable[[Obj], list[str]]
) -> None:
    """Built-in kinds against Kubernetes' schemas, custom resources against the vendored
    CRDs; a kind with neither is an error. All of them in the namespace voteledger."""
    assert {_name(o) for o in objects} >= {
        "Deployment/command-api",
        "Deployment/query-api",
        "Deployment/projector",
        "Job/migrate",
        "Cluster/voteledger-db",
    }
    problems = [f"{_name(o)} {p}" for o in objects for p in schema_problems(o)]
    assert problems == []
    spaces = {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"}
    assert spaces == {"voteledger"}


# --- the code's side --------------------------------------------------------------------------


@functools.cache
def code_env_names() -> frozenset[str]:
    """Every environment variable the code reads, by the string literals it reads them with."""
    names = {
        name
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        for name in ENV_LITERAL.findall(path.read_text())
    }
    # infra/settings.py builds these three with an f-string.
    names |= {f"VOTELEDGER_{role.upper()}_DATABASE_URL" for role in typing.get_args(Role)}
    return frozenset(names)


def _environment(objects: tuple[Obj, ...], container: Obj) -> tuple[dict[str, str], list[str]]:
    """The container's environment (secrets as placeholders, $(VAR) expanded), and problems."""
    configmaps, env, problems = _of(objects, "ConfigMap"), {}, []
    for source in container.get("envFrom", []):
        name = source.get("configMapRef", {}).get("name")
        if name not in configmaps:
            problems.append(f"envFrom {source}: not a ConfigMap of this overlay")
            continue
        env.update(configmaps[name]["data"])
    for var in container.get("env", []):
        if "value" in var:
            for ref in re.findall(r"\$\(([A-Za-z0-9_]+)\)", var["value"]):
                if ref not in env:
                    problems.append(f"{var['name']}: $({ref}) is not defined before it")
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), var["value"])
        elif not var["valueFrom"].get("secretKeyRef", {}).get("optional"):
            env[var["name"]] = PLACEHOLDERS.get(var["name"], "secret-placeholder-0123456789")
    return env, problems


def test_every_variable_set_is_one_the_code_reads(objects: tuple[Obj, ...]) -> None:
    """ConfigMap keys consumed by envFrom and explicit env names: each is read by the code."""
    problems = []
    for obj, _, container in _containers(objects):
        env, found = _environment(objects, container)
        names = set(env) | {v["name"] for v in container.get("env", [])}
        found += [f"{n} is read nowhere in the code" for n in sorted(names - code_env_names())]
        problems += [f"{_name(obj)} {container['name']}: {p}" for p in found]
    assert problems == []


def test_the_settings_accept_each_environment(objects: tuple[Obj, ...]) -> None:
    """Each container's environment parses, and names the PostgreSQL and Redis the overlay
    runs: CloudNativePG's Services of the Cluster, the RedisSentinel's pods and master name."""
    cluster = next(iter(_of(objects, "Cluster")))
    sentinel = _of(objects, "RedisSentinel")["voteledger-redis"]["spec"]
    sentinel_pods = {
        (f"voteledger-redis-sentinel-{i}.voteledger-redis-sentinel-headless", 26379)
        for i in range(sentinel["clusterSize"])
    }
    for obj, _, container in _containers(objects):
        env, _ = _environment(objects, container)
        try:
            settings = Settings.from_env(env)
        except SettingsError as exc:
            pytest.fail(f"{_name(obj)}: {exc}")
        role = ROLES.get(_program(container["command"]))
        if role is None:
            continue  # migrate: the owner's URL, from CloudNativePG's Secret
        host = conninfo_to_dict(settings.url_for(role)).get("host")
        hosts = {f"{cluster}-{s}" for s in ("ro", "r")} if role == "query" else {f"{cluster}-rw"}
        assert host in hosts, f"{_name(obj)} connects as {role} to {host}, not {hosts}"
        sentinels = set(settings.redis_sentinels)
        assert sentinels, f"{_name(obj)}: Redis is not reached through Sentinel"
        assert sentinels <= sentinel_pods, f"{_name(obj)}: {sentinels - sentinel_pods} run nowhere"
        master = sentinel["redisSentinelConfig"]["masterGroupName"]
        assert settings.redis_sentinel_master == master


def _port(container: Obj, name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert name in ports, f"{container['name']} has no port named {name}"
    return ports[name]


def test_commands_are_the_ones_the_code_runs(objects: tuple[Obj, ...]) -> None:
    """`python -m infra.serve commands|queries` on the Settings' port, `voteledger project`
    with its metrics port, `voteledger migrate`: as the Makefile's `run` starts them."""
    defaults = Settings.from_env({"DATABASE_URL": "postgresql://db/v", "VOTELEDGER_ENV": "test"})
    api_ports = {"commands": defaults.command_port, "queries": defaults.query_port}
    cli = typing.cast(Any, typer.main.get_command(cli_app))
    for obj, _, container in _containers(objects):
        command = [*container["command"], *container.get("args", [])]
        where = f"{_name(obj)}: {command}"
        if command[:3] == ["python", "-m", "infra.serve"]:
            api, port = command[3], _port(container, "http")
            assert api in serve.APPS, where
            assert command[4:] == ["--host", "0.0.0.0", "--port", str(port)], where
            assert port == api_ports[api], f"{where}: the Settings' port is {api_ports[api]}"
            continue
        assert command[0] == "voteledger" and command[1] in cli.commands, where
        cli.commands[command[1]].make_context(command[1], command[2:])  # the options parse
        if command[1] == "project":
            port = _port(container, "metrics")
            assert command[2:] == ["--metrics-port", str(port)], where
            assert port == defaults.metrics_port, where


def _program(command: list[str]) -> str:
    """What a container runs: commands or queries (infra.serve), or a `voteledger` command."""
    return command[3] if command[:3] == ["python", "-m", "infra.serve"] else command[1]


def _serves(command: list[str], path: str) -> bool:
    """Whether the process a command starts answers GET `path`."""
    if _program(command) in serve.APPS:
        package = serve.APPS[_program(command)].split(".")[0]
        # The command API is served with the MCP tools mounted (mcp_tools/app.py): its routes
        # are still commands/routes.py's.
        package = {"mcp_tools": "commands"}.get(package, package)
        return f'@router.get("{path}"' in (ROOT / package / "routes.py").read_text()
    # The projector's metrics server: prometheus_client's handler, and /healthz.
    return f'"{path}"' in inspect.getsource(readmodels._Handler)


def test_probes_ask_paths_the_apps_serve(objects: tuple[Obj, ...]) -> None:
    for obj, _, container in _containers(objects):
        for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
            probe = container.get(kind, {})
            action = probe.get("httpGet") or probe.get("tcpSocket")
            if action is None:
                continue
            _port(container, action["port"])
            path = action.get("path")
            served = path is None or _serves(container["command"], path)
            assert served, f"{_name(obj)} {kind}: nothing in the code answers GET {path}"


# --- how they run -----------------------------------------------------------------------------


def _lock_problems(pod: Obj, container: Obj) -> list[str]:
    pod_sc, sc = pod.get("securityContext", {}), container.get("securityContext", {})
    merged = {**pod_sc, **sc}
    resources = container.get("resources", {})
    checks = {
        "runs as non-root": merged.get("runAsNonRoot") is True,
        f"runs as {NOBODY}": merged.get("runAsUser") == NOBODY,
        "has a read-only root filesystem": sc.get("readOnlyRootFilesystem") is True,
        "cannot escalate privileges": sc.get("allowPrivilegeEscalation") is False,
        "drops all capabilities": "ALL" in sc.get("capabilities", {}).get("drop", []),
        "has the RuntimeDefault seccomp profile": merged.get("seccompProfile", {}).get("type")
        == "RuntimeDefault",
        "requests and limits CPU and memory": all(
            set(resources.get(k, {})) >= {"cpu", "memory"} for k in ("requests", "limits")
        ),
        "has a writable /tmp": any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])
        if "volumeMounts" in container
        else False,
        "mounts no API token": pod.get("automountServiceAccountToken") is False,
    }
    return [f"{container['name']} {what}: no" for what, ok in checks.items() if not ok]


def test_every_container_is_locked_down(objects: tuple[Obj, ...]) -> None:
    problems = [
        f"{_name(obj)}: {p}"
        for obj, pod, container in _containers(objects)
        for p in _lock_problems(pod, container)
    ]
    assert problems == []


def test_images_are_tagged(objects: tuple[Obj, ...]) -> None:
    untagged = [
        f"{_name(obj)}: {c['image']}"
        for obj, _, c in _containers(objects)
        if ":" not in c["image"].rsplit("/", 1)[-1] or c["image"].endswith(":latest")
    ]
    assert untagged == []


def test_production_commits_no_secret_values(rendered: Callable[[str], tuple[Obj, ...]]) -> None:
    """Secrets are created by hand (docs/deploy.md), never rendered from the repository."""
    secrets = [_name(o) for o in rendered("production") if o["kind"] == "Secret"]
    assert secrets == []


def test_every_secret_used_is_created_in_the_docs(objects: tuple[Obj, ...]) -> None:
    docs = (ROOT / "docs" / "deploy.md").read_text()
    missing = set()
    for _, _, container in _containers(objects):
        for var in container.get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref and ref["name"] not in OPERATOR_SECRETS:
                # The command, up to the blank line or the code block's end after it.
                pattern = rf"create secret generic {ref['name']}\b(?:(?!\n\n)[^`])*"
                command = re.search(pattern, docs)
                if not command or f"--from-literal={ref['key']}=" not in command[0]:
                    missing.add(f"{ref['name']}/{ref['key']}")
    assert sorted(missing) == []


def test_deployments_have_probes(objects: tuple[Obj, ...]) -> None:
    """Liveness everywhere; readiness for everything that takes traffic (the APIs)."""
    for deployment in _of(objects, "Deployment").values():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            assert "livenessProbe" in container, _name(deployment)
            if any(p["name"] == "http" for p in container.get("ports", [])):
                assert "readinessProbe" in container, _name(deployment)


def _drain_seconds() -> int:
    """uvicorn's bound on a graceful shutdown (infra/serve.py)."""
    found = re.search(r"timeout_graceful_shutdown=(\d+)", inspect.getsource(serve))
    assert found, "infra/serve.py no longer bounds its graceful shutdown"
    return int(found[1])


def test_grace_period_outlasts_pre_stop_and_drain(objects: tuple[Obj, ...]) -> None:
    for deployment in _of(objects, "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"]:
            hook = container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
            pause = re.search(r"sleep\W*(\d+(?:\.\d+)?)", " ".join(hook.get("command", [])))
            needed = (float(pause[1]) if pause else 0) + _drain_seconds()
            grace = pod.get("terminationGracePeriodSeconds", 30)
            assert grace > needed, f"{_name(deployment)}: {grace} s <= {needed} s"


def test_projector_runs_an_active_worker_and_a_standby(objects: tuple[Obj, ...]) -> None:
    spec = _of(objects, "Deployment")["projector"]["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    labels = spec["template"]["metadata"]["labels"]
    budgets = [
        b["spec"]
        for b in _of(objects, "PodDisruptionBudget").values()
        if _selects(b["spec"]["selector"], labels)
    ]
    assert [b.get("minAvailable") for b in budgets] == [1]


def test_services_keep_their_names_and_ports(objects: tuple[Obj, ...]) -> None:
    """What the monitoring component and the Ingresses rely on."""
    services, deployments = _of(objects, "Service"), _of(objects, "Deployment")
    expected = {"command-api": 8000, "query-api": 8001, "projector-metrics": 9100}
    for name, port in expected.items():
        spec = services[name]["spec"]
        backend = [
            d
            for d in deployments.values()
            if _selects(spec["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(backend) == 1, f"Service {name} selects {len(backend)} Deployments"
        container = backend[0]["spec"]["template"]["spec"]["containers"][0]
        port_name = spec["ports"][0]["name"]
        assert spec["ports"][0]["port"] == port == _port(container, port_name), name
    for hpa in _of(objects, "HorizontalPodAutoscaler").values():
        target = deployments[hpa["spec"]["scaleTargetRef"]["name"]]
        assert "replicas" not in target["spec"], f"{_name(hpa)} owns the replica count"


def _routed(path: Obj, request: str) -> bool:
    if path["pathType"] == "Exact":
        return path["path"] == request
    prefix = [p for p in path["path"].split("/") if p]
    return [p for p in request.split("/") if p][: len(prefix)] == prefix


def _route(paths: list[tuple[Obj, Obj]], request: str) -> tuple[Obj, Obj] | None:
    """The (Ingress, path) a request goes to: an Exact match, else the longest Prefix."""
    matching = [(i, p) for i, p in paths if _routed(p, request)]
    return max(
        matching, key=lambda m: (m[1]["pathType"] == "Exact", len(m[1]["path"])), default=None
    )


def test_ingress_routes_the_apis_and_nothing_internal(objects: tuple[Obj, ...]) -> None:
    """/metrics and the probes stay inside; the live stream is not buffered nor cut short; the
    chart page, its assets and the MCP endpoint are public."""
    hosts: dict[str, list[tuple[Obj, Obj]]] = {}
    for ingress in _of(objects, "Ingress").values():
        for rule in ingress["spec"]["rules"]:
            hosts.setdefault(rule["host"], []).extend((ingress, p) for p in rule["http"]["paths"])
    streams = 0
    for host, paths in hosts.items():
        for internal in ("/metrics", "/healthz", "/readyz"):
            assert _route(paths, internal) is None, f"{host}{internal} is routed"
        stream = _route(paths, "/api/v1/stream")
        if stream is None or stream[1]["backend"]["service"]["name"] != "query-api":
            continue
        notes = stream[0]["metadata"].get("annotations", {})
        assert notes.get("nginx.ingress.kubernetes.io/proxy-buffering") == "off", host
        assert int(notes.get("nginx.ingress.kubernetes.io/proxy-read-timeout", 60)) >= 3600, host
        streams += 1
    assert streams, "no Ingress routes the query API's live stream"
    public = {"/": "query-api", "/static/app.js": "query-api", "/mcp": "command-api"}
    for request, service in public.items():
        served = [_route(paths, request) for paths in hosts.values()]
        names = {r[1]["backend"]["service"]["name"] for r in served if r}
        assert service in names, f"{request} is not routed to {service}"


def test_network_policies_deny_by_default_and_admit_every_app(objects: tuple[Obj, ...]) -> None:
    policies = [p["spec"] for p in _of(objects, "NetworkPolicy").values()]
    assert any(p["podSelector"] == {} and not p.get("ingress") for p in policies)
    for deployment in _of(objects, "Deployment").values():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        allowing = [p for p in policies if p.get("ingress") and _selects(p["podSelector"], labels)]
        assert allowing, f"nothing may reach {_name(deployment)}"

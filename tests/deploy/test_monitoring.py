"""The monitoring stack's content, offline: alert rules, dashboard, scrape objects, the compose
profile and the runbooks agree with each other and with the metrics the code declares.

tests/integration/test_metric_names.py checks the same metric names against running processes.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import promql_parser
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from infra import metrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/monitoring/rules.yml"
COMPONENT = ROOT / "deploy/k8s/components/monitoring"
DASHBOARD = COMPONENT / "dashboard.json"
OPERATIONS = ROOT / "docs/operations.md"
CRDS = ROOT / "deploy/crds/prometheus-operator"
RUNBOOK_BASE = "https://github.com/voteledger/voteledger/blob/main/docs/operations.md#"
# Series Prometheus makes itself, not exported by any process.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "ALERTS"}
# Labels a scrape target adds (not in the exposition): no process exports them.
TARGET_LABELS = {"job", "instance", "pod", "namespace", "service", "container", "endpoint"}
# Grafana variables, replaced by values PromQL accepts before parsing.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$app": ".*"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alerts() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # collapsed rows hold their panels


def dashboard_targets() -> Iterator[tuple[str, str]]:
    """(panel title, PromQL with Grafana's variables replaced) of every query of the dashboard."""
    for panel in _panels(json.loads(DASHBOARD.read_text())["panels"]):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in GRAFANA_VARS.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, f"panel {panel['title']!r}: unknown variable in {expr}"
            yield panel["title"], expr


def expressions() -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every alert rule and every dashboard query."""
    for rule in alerts():
        yield f"alert {rule['alert']}", rule["expr"]
    for title, expr in dashboard_targets():
        yield f"panel {title!r}", expr


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names it is matched on) of every selector in the PromQL, from the
    parser's syntax tree (range selectors and subqueries included)."""
    found: list[tuple[str, set[str]]] = []

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.MatrixSelector):
            node = node.vector_selector
        if isinstance(node, promql_parser.VectorSelector):
            matchers = node.matchers.matchers
            name = node.name or next(m.value for m in matchers if m.name == "__name__")
            found.append((name, {m.name for m in matchers if m.name != "__name__"}))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def referenced() -> dict[str, dict[str, set[str]]]:
    """Metric (sample) name -> where it is used -> label names matched there; without the series
    Prometheus makes itself."""
    used: dict[str, dict[str, set[str]]] = {}
    for where, expr in expressions():
        for name, labels in selectors(expr):
            if name not in SYNTHETIC:
                used.setdefault(name, {}).setdefault(where, set()).update(labels)
    return used


def missing_report(used: dict[str, dict[str, set[str]]], exported: set[str]) -> dict[str, str]:
    """Each name not in `exported`: where it is used, and the exported names closest to it."""
    report = {}
    for name in sorted(set(used) - exported):
        close = difflib.get_close_matches(name, exported, n=3, cutoff=0.6)
        report[name] = f"used by {sorted(used[name])}; exported names like it: {close}"
    return report


def declared_samples() -> set[str]:
    """Sample names of every metric infra/metrics.py declares (a counter's `_total`, a
    histogram's `_bucket`, `_sum` and `_count`)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings: lower case, punctuation dropped, spaces to -."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_every_rule_and_panel_expression_parses() -> None:
    """The rule file is YAML of Prometheus' shape, and every alert's and panel's PromQL parses."""
    groups = load_yaml(RULES)["groups"]
    assert groups and all(set(g) == {"name", "rules"} and g["rules"] for g in groups)
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names)), names
    for rule in alerts():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        if "for" in rule:
            promql_parser.parse_duration(rule["for"])
    failures = {}
    for where, expr in expressions():
        try:
            promql_parser.parse(expr)
        except Exception as exc:
            failures[where] = f"{exc}: {expr}"
    assert failures == {}


def test_every_metric_used_is_declared_in_infra_metrics() -> None:
    """A renamed or misspelt metric fails here already, offline; the integration test checks
    the same names against what the running processes export."""
    assert missing_report(referenced(), declared_samples()) == {}


def test_every_alert_says_how_bad_what_and_where_its_runbook_is() -> None:
    anchors = github_anchors(OPERATIONS.read_text())
    for rule in alerts():
        name, annotations = rule["alert"], rule["annotations"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        url = annotations["runbook_url"]
        assert url.startswith(RUNBOOK_BASE), (name, url)
        anchor = url.removeprefix(RUNBOOK_BASE)
        assert anchor in anchors, f"{name}: no heading #{anchor} in docs/operations.md"
        assert anchor == name.lower(), f"{name}: its runbook is its own section"


def _render_rules_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "render_rules", RULES.with_name("render_rules.py")
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_prometheus_rule_carries_the_rule_file() -> None:
    """rules.yaml (for the Prometheus Operator) holds exactly the groups of rules.yml (for the
    compose profile), as written by deploy/monitoring/render_rules.py."""
    rule = load_yaml(COMPONENT / "rules.yaml")
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["spec"]["groups"] == load_yaml(RULES)["groups"], (
        "rules.yaml differs from rules.yml: run .venv/bin/python deploy/monitoring/render_rules.py"
    )
    rendered = _render_rules_module().render(RULES.read_text())
    assert (COMPONENT / "rules.yaml").read_text() == rendered


def test_the_dashboard_is_grafana_json_with_a_datasource_variable() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "voteledger" and 36 <= board["schemaVersion"] <= 41
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == (
        "datasource",
        "prometheus",
    )
    panels = list(_panels(board["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("votes", "latency", "rate limit", "lag", "watermark", "read model", "stream"):
        assert topic in titles, f"no panel about {topic}"


def test_the_component_lists_its_objects_and_the_dashboard_config_map() -> None:
    kustomization = load_yaml(COMPONENT / "kustomization.yaml")
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
    assert kustomization["kind"] == "Component"
    for resource in kustomization["resources"]:
        assert (COMPONENT / resource).is_file(), resource
    assert kustomization["generatorOptions"]["disableNameSuffixHash"] is True
    (generator,) = kustomization["configMapGenerator"]
    assert generator["options"]["labels"]["grafana_dashboard"] == "1"
    assert [f.split("=")[-1] for f in generator["files"]] == ["dashboard.json"]
    kinds = {doc["kind"]: doc for doc in _component_objects()}
    monitor = kinds["ServiceMonitor"]["spec"]
    (components,) = [
        e["values"]
        for e in monitor["selector"]["matchExpressions"]
        if e["key"] == "app.kubernetes.io/component"
    ]
    assert sorted(components) == ["command-api", "query-api"]
    assert [(e["port"], e["path"]) for e in monitor["endpoints"]] == [("http", "/metrics")]
    pods = kinds["PodMonitor"]["spec"]
    assert pods["selector"]["matchLabels"]["app.kubernetes.io/component"] == "projector"
    assert [e["port"] for e in pods["podMetricsEndpoints"]] == ["metrics"]


def _component_objects() -> list[dict[str, Any]]:
    names = load_yaml(COMPONENT / "kustomization.yaml")["resources"]
    return [doc for name in names for doc in yaml.safe_load_all((COMPONENT / name).read_text())]


def _crd_schema(kind: str) -> dict[str, Any] | None:
    path = CRDS / f"monitoring.coreos.com_{kind.lower()}s.yaml"
    if not path.is_file():
        return None
    (version,) = [v for v in load_yaml(path)["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def _unknown_fields(doc: Any, schema: dict[str, Any], at: str = "") -> list[str]:
    """Fields the schema does not know, which the API server would silently prune."""
    if isinstance(doc, list):
        items = schema.get("items", {})
        return [f for i, d in enumerate(doc) for f in _unknown_fields(d, items, f"{at}[{i}]")]
    known = schema.get("properties")
    if not isinstance(doc, dict) or known is None or at == ".metadata":
        return []
    found = []
    for key, value in doc.items():
        if key not in known:
            found.append(f"{at}.{key}")
        else:
            found.extend(_unknown_fields(value, known[key], f"{at}.{key}"))
    return found


def test_the_scrape_objects_and_rule_match_the_operator_schemas() -> None:
    """Validated against the Prometheus Operator's own CRDs (deploy/crds), unknown fields
    included. The CRDs' patterns are Go regular expressions, so the schema itself is not
    checked against the metaschema."""
    for doc in _component_objects():
        schema = _crd_schema(doc["kind"])
        if schema is None:
            pytest.skip(f"no CRD for {doc['kind']} in {CRDS.relative_to(ROOT)}")
        jsonschema.Draft7Validator(schema).validate(doc)
        assert _unknown_fields(doc, schema) == [], doc["kind"]


def _kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl", path=str(ROOT / ".venv/bin")) or shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    shown = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    return [doc for doc in yaml.safe_load_all(shown.stdout) if doc]


def test_the_component_renders(tmp_path: Path) -> None:
    """`kubectl kustomize` accepts the component in a kustomization that sets no namespace (as
    the overlays), and yields the scrape objects, the rule and the dashboard ConfigMap, all in
    the voteledger namespace."""
    component = os.path.relpath(COMPONENT, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"components:\n  - {component}\n"
    )
    docs = {(d["kind"], d["metadata"]["name"]): d for d in _kustomize(tmp_path)}
    assert set(docs) == {
        ("ConfigMap", "voteledger-dashboard"),
        ("PodMonitor", "voteledger-projector"),
        ("PrometheusRule", "voteledger"),
        ("ServiceMonitor", "voteledger-apis"),
    }
    assert all(d["metadata"].get("namespace") == "voteledger" for d in docs.values())
    board = docs["ConfigMap", "voteledger-dashboard"]["data"]["voteledger.json"]
    assert json.loads(board) == json.loads(DASHBOARD.read_text())


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    return all(labels.get(e["key"]) in e["values"] for e in selector.get("matchExpressions", []))


@pytest.mark.parametrize("overlay", ["dev", "production"])
def test_each_overlay_scrapes_both_apis_and_every_projector_pod(overlay: str) -> None:
    """In each overlay, the ServiceMonitor selects exactly the two API Services, on a port they
    name `http`, and the PodMonitor the projector's pods, on a container port named `metrics`."""
    directory = ROOT / "deploy/k8s/overlays" / overlay
    if not (directory / "kustomization.yaml").is_file():
        pytest.skip(f"no overlay {overlay}")
    docs = _kustomize(directory)
    kinds: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        kinds.setdefault(doc["kind"], []).append(doc)
    (services_monitor,) = kinds["ServiceMonitor"]
    (pods_monitor,) = kinds["PodMonitor"]
    selected = [
        s
        for s in kinds["Service"]
        if _selects(services_monitor["spec"]["selector"], s["metadata"].get("labels", {}))
    ]
    assert sorted(s["metadata"]["name"] for s in selected) == ["command-api", "query-api"]
    for service in selected:  # a monitor selects in its own namespace
        assert "http" in [port.get("name") for port in service["spec"]["ports"]]
        assert service["metadata"]["namespace"] == services_monitor["metadata"]["namespace"]
    workloads = [
        d
        for d in kinds["Deployment"] + kinds.get("StatefulSet", [])
        if _selects(pods_monitor["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
    ]
    assert [d["metadata"]["name"] for d in workloads] == ["projector"]
    for workload in workloads:
        assert workload["metadata"]["namespace"] == pods_monitor["metadata"]["namespace"]
        containers = workload["spec"]["template"]["spec"]["containers"]
        ports = [p.get("name") for c in containers for p in c.get("ports", [])]
        assert "metrics" in ports


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> file or folder of the repository, of a service's bind mounts."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            found[target] = ROOT / source
    return found


def test_the_compose_monitoring_profile_mounts_files_that_exist() -> None:
    services = load_yaml(ROOT / "compose.yaml")["services"]
    profiled = {name for name, s in services.items() if "profiles" in s}
    assert profiled == {"prometheus", "grafana"}, "only monitoring is optional"
    assert all(services[n]["profiles"] == ["monitoring"] for n in profiled)
    prometheus, grafana = _mounts(services["prometheus"]), _mounts(services["grafana"])
    for path in (*prometheus.values(), *grafana.values()):
        assert path.exists(), path
    assert prometheus["/etc/prometheus/rules.yml"] == RULES
    config = load_yaml(prometheus["/etc/prometheus/prometheus.yml"])
    assert config["rule_files"] == ["/etc/prometheus/rules.yml"]
    assert {p.resolve() for p in grafana.values()} >= {DASHBOARD.resolve()}
    provider = load_yaml(grafana["/etc/grafana/provisioning"] / "dashboards/voteledger.yml")
    folder = provider["providers"][0]["options"]["path"]
    assert any(t.startswith(folder + "/") and p == DASHBOARD for t, p in grafana.items())
    source = load_yaml(grafana["/etc/grafana/provisioning"] / "datasources/prometheus.yml")
    assert source["datasources"][0]["url"] == "http://prometheus:9090"


def test_prometheus_scrapes_every_replica_under_the_job_names_the_rules_expect() -> None:
    """compose's Prometheus finds the replicas by DNS (both projector workers), and its jobs
    and the cluster's (Service names; a PodMonitor's namespace/name) are all watched by
    VoteledgerTargetDown."""
    config = load_yaml(ROOT / "deploy/monitoring/prometheus.yml")
    wanted = {"command-api": 8000, "query-api": 8001, "projector": 9100}
    jobs = {}
    for job in config["scrape_configs"]:
        (sd,) = job["dns_sd_configs"]
        jobs[job["job_name"]] = (sd["names"], sd["type"], sd["port"])
    assert jobs == {name: ([name], "A", port) for name, port in wanted.items()}
    (down,) = [r for r in alerts() if r["alert"] == "VoteledgerTargetDown"]
    (pattern,) = re.findall(r'job=~"([^"]+)"', down["expr"])
    cluster = ["command-api", "query-api", "voteledger/voteledger-projector"]
    for job in [*jobs, *cluster]:
        assert re.fullmatch(pattern, job), job

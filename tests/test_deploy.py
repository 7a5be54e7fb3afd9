"""deploy/: alert rules pass promtool and their unit tests; dashboard and rules query only what the code
exports; the Kubernetes manifests are consistent with each other and with the config they carry."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tierwise.router.config import parse_config
from tierwise.router.ledger.record import SpendRecord
from tierwise.router.ledger.spend_ledger import SpendLedger
from tierwise.router.ledger.sqlite_sink import SqliteSpendSink
from tierwise.router.observability.metrics import OVERHEAD_BUCKETS, AuthFailureCounter, Metrics
from tierwise.router.rate_limits.gate import RateLimitMetrics

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "tierwise.json"
KUBERNETES = DEPLOY / "kubernetes"

# Series Prometheus makes itself, and the labels it adds to every scraped one.
PROMETHEUS_SERIES = {"up": {"instance", "job"}}
TARGET_LABELS = {"instance", "job"}
# Grafana's variables, replaced by values of the same kind so promtool can parse the queries.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "1h", "$tenant": ".*", "$feature": ".*"}

_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_SELECTOR = re.compile(r"(?<![\w:$.])([A-Za-z_:][\w:]*)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r'([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_LABEL_VALUES = re.compile(r"^label_values\((.+),\s*(\w+)\)$")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[tuple[str, str, str], ...]  # (label, operator, value)


def selectors(expr: str) -> list[Selector]:
    """The series selectors of a PromQL expression (functions, keywords and grouping labels left out)."""
    expr = _GROUPING.sub(" ", expr)
    found = []
    for match in _SELECTOR.finditer(expr):
        name, braces = match.group(1), match.group(2)
        rest = expr[match.end() :].lstrip()
        if name in _KEYWORDS or (braces is None and rest.startswith("(")):
            continue  # a keyword or a function / aggregation call
        matchers = tuple(_MATCHER.findall(braces or ""))
        found.append(Selector(name, matchers))
    return found


def test_selectors_parse_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, gen_ai_request_model) (rate(x_bucket{a="1", b=~"c|d"}[5m])))'
        " / on (job) group_left (tier) max without (instance) (y) > bool 2 and z:ratio offset 5m"
    )
    assert selectors(expr) == [
        Selector("x_bucket", (("a", "=", "1"), ("b", "=~", "c|d"))),
        Selector("y", ()),
        Selector("z:ratio", ()),
    ]


# -- what the code exports ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, set[str]]]:
    """Every sample name a fully exercised ``Metrics`` exposes -> its label names -> values seen."""
    metrics = Metrics()
    base: dict[str, Any] = {
        "tenant": "acme",
        "feature": "chat",
        "tier": "small",
        "model": "small-model",
        "provider": "openai",
        "attempts": 1,
    }
    for rec in (
        SpendRecord(  # answered, streamed, after a fallback
            request_id="ok",
            ts=1.0,
            **base,
            input_tokens=100,
            output_tokens=40,
            cost_usd=Decimal("0.001"),
            saved_usd=Decimal("0.002"),
            router_cost_usd=Decimal("0.00001"),
            total_ms=900.0,
            upstream_ms=880.0,
            overhead_ms=20.0,
            ttft_ms=200.0,
            fallback=True,
        ),
        SpendRecord(request_id="hit", ts=2.0, **base, cache_result="semantic", saved_usd=Decimal("0.001")),
        SpendRecord(
            request_id="failed",
            ts=3.0,
            **base,
            status="UNAVAILABLE",
            error_type="timeout",
            upstream_ms=5000.0,
            overhead_ms=3.0,
        ),
    ):
        metrics.observe_spend(rec)
        metrics.observe_cache(rec.cache_result)
    metrics.observe_decision("small", "cheapest")
    metrics.set_circuit_state("small", "open")
    metrics.set_budget("acme/*/month", Decimal("12.5"), Decimal("87.5"))
    metrics.observe_anomaly("acme", "chat")
    metrics.observe_budget_fail_mode("refused")
    # Counters other parts of the server register on the same registry.
    AuthFailureCounter(metrics.registry).count("unknown_key")
    rate_limits = RateLimitMetrics(metrics.registry)
    rate_limits.refused.labels("acme", "key", "alice", "rpm").inc()
    rate_limits.store_failures.labels("admitted").inc()
    directory = tmp_path_factory.mktemp("ledger")
    metrics.watch_ledger(SpendLedger(directory / "journal", SqliteSpendSink(directory / "spend.sqlite3")))

    samples: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            labels = samples[sample.name]
            for label, value in sample.labels.items():
                labels[label].add(value)
    return samples


def rule_documents() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_targets() -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target


def queried() -> list[tuple[str, str]]:
    """(where, PromQL) for every dashboard target and every rule."""
    out = [(f"dashboard panel {title!r}", target["expr"]) for title, target in dashboard_targets()]
    out += [(f"rule {r.get('alert') or r.get('record')}", r["expr"]) for r in rule_documents()]
    return out


def check_selector(
    where: str, selector: Selector, exported: dict[str, dict[str, set[str]]], recorded: set[str]
) -> list[str]:
    if ":" in selector.metric:
        return (
            []
            if selector.metric in recorded
            else [f"{where}: recording rule {selector.metric} is not defined"]
        )
    labels = PROMETHEUS_SERIES.get(selector.metric)
    if labels is None:
        if selector.metric not in exported:
            return [
                f"{where}: {selector.metric} is not exported by tierwise.router.observability.metrics.Metrics"
            ]
        labels = set(exported[selector.metric]) | TARGET_LABELS
    problems = []
    for label, operator, value in selector.matchers:
        if label not in labels:
            problems.append(f"{where}: {selector.metric} has no label {label!r}")
        elif label == "le" and operator == "=" and value not in exported[selector.metric]["le"]:
            problems.append(f"{where}: {selector.metric} has no bucket le={value}")
    return problems


def test_every_metric_the_dashboard_and_the_rules_query_is_exported(
    exported: dict[str, dict[str, set[str]]],
) -> None:
    recorded = {r["record"] for r in rule_documents() if "record" in r}
    problems: list[str] = []
    seen: set[str] = set()
    for where, expr in queried():
        for selector in selectors(expr):
            seen.add(selector.metric)
            problems += check_selector(where, selector, exported, recorded)
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = _LABEL_VALUES.match(variable["query"]["query"])
        assert match, f"variable {variable['name']}: expected label_values(selector, label)"
        (selector,) = selectors(match.group(1))
        problems += check_selector(f"variable {variable['name']}", selector, exported, recorded)
        if match.group(2) not in exported[selector.metric]:
            problems.append(f"variable {variable['name']}: {selector.metric} has no label {match.group(2)}")
    assert not problems, "\n".join(problems)
    # The check saw the series it should have: each family is used somewhere.
    assert {
        "tierwise_cost_usd_total",
        "tierwise_saved_cost_usd_total",
        "tierwise_cache_lookups_total",
        "tierwise_request_overhead_seconds_bucket",
        "gen_ai_server_time_to_first_token_seconds_bucket",
        "tierwise_budget_remaining_usd",
        "tierwise_circuit_state",
        "tierwise_ledger_backlog_records",
        "tierwise_cost_anomalies_total",
    } <= seen


def test_a_misspelt_metric_or_label_or_bucket_is_caught(exported: dict[str, dict[str, set[str]]]) -> None:
    def problems(expr: str) -> list[str]:
        return [p for s in selectors(expr) for p in check_selector("q", s, exported, set())]

    assert problems('sum(rate(tierwise_cost_usd_total{tenant="a"}[5m]))') == []
    assert problems("sum(rate(tierwise_cost_usd[5m]))") == [
        "q: tierwise_cost_usd is not exported by tierwise.router.observability.metrics.Metrics"
    ]
    assert problems('tierwise_requests_total{state="OK"}') == [
        "q: tierwise_requests_total has no label 'state'"
    ]
    assert problems('tierwise_request_overhead_seconds_bucket{le="0.06"}') == [
        "q: tierwise_request_overhead_seconds_bucket has no bucket le=0.06"
    ]
    assert problems("tierwise:nothing:rate5m") == ["q: recording rule tierwise:nothing:rate5m is not defined"]


def test_the_latency_objective_is_a_bucket_boundary() -> None:
    objectives = {
        value
        for _, expr in queried()
        for s in selectors(expr)
        if s.metric == "tierwise_request_overhead_seconds_bucket"
        for label, _, value in s.matchers
        if label == "le"
    }
    assert objectives == {"0.05"} and 0.05 in OVERHEAD_BUCKETS


# -- promtool -------------------------------------------------------------------------------------


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip(
            "promtool not found: install Prometheus's tools (Debian/Ubuntu: apt-get install prometheus)"
        )
    return path


def run_promtool(*args: str, cwd: Path = DEPLOY) -> None:
    result = subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_pass_promtool_check() -> None:
    run_promtool("check", "rules", str(RULES))


def test_alert_rules_pass_their_unit_tests() -> None:
    """Fast burn pages, slow burn only tickets, budgets, circuits, errors, fallbacks, the ledger."""
    run_promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    rules = []
    for i, (_, target) in enumerate(dashboard_targets()):
        expr = target["expr"]
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"unknown Grafana variable in {target['expr']!r}"
        rules.append({"record": f"dashboard:query:{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run_promtool("check", "rules", str(path))


# -- the dashboard --------------------------------------------------------------------------------


def test_dashboard_uses_a_templated_prometheus_datasource() -> None:
    data = dashboard()
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    for panel in data["panels"]:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
    for name in ("tenant", "feature"):
        assert variables[name]["datasource"]["uid"] == "${datasource}"


# -- Kubernetes -----------------------------------------------------------------------------------

REQUIRED = {
    "Deployment": ("spec.selector.matchLabels", "spec.template.spec.containers"),
    "Service": ("spec.ports",),
    "ConfigMap": ("data",),
    "PodDisruptionBudget": ("spec.selector.matchLabels",),
    "Kustomization": ("resources",),
}


def dig(document: dict[str, Any], dotted: str) -> Any:
    value: Any = document
    for key in dotted.split("."):
        value = value[key]
    return value


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> document, for every resource the kustomization lists."""
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    files = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == files, "every manifest is listed in kustomization.yaml, and only those"
    out = {}
    for name in sorted(listed):
        for document in yaml.safe_load_all((KUBERNETES / name).read_text()):
            assert document["apiVersion"] and document["kind"], name
            key = (document["kind"], document["metadata"]["name"])
            assert key not in out, f"{key} defined twice"
            out[key] = document
    return out


def test_every_manifest_has_its_kind_and_required_fields() -> None:
    documents = manifests()
    kinds = {kind for kind, _ in documents}
    assert kinds == {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"}
    api = {"Deployment": "apps/v1", "PodDisruptionBudget": "policy/v1", "Service": "v1", "ConfigMap": "v1"}
    for (kind, name), document in documents.items():
        assert document["apiVersion"] == api[kind], name
        for field in REQUIRED[kind]:
            assert dig(document, field), f"{kind}/{name}: {field} is empty"
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    for field in REQUIRED["Kustomization"]:
        assert dig(kustomization, field)


def container() -> dict[str, Any]:
    (only,) = manifests()[("Deployment", "tierwise")]["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = only
    return result


def test_the_deployment_probes_grpc_health_on_its_port_and_mounts_what_exists() -> None:
    documents = manifests()
    deployment = documents[("Deployment", "tierwise")]
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["replicas"] > 1
    labels = deployment["spec"]["selector"]["matchLabels"]
    assert labels.items() <= pod["metadata"]["labels"].items()
    main = container()
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert main[probe]["grpc"]["port"] == ports["grpc"], probe
    assert main["readinessProbe"]["grpc"]["service"] == "tierwise.v1.Router"
    assert main["args"][:1] == ["serve"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(ports["metrics"])

    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert {m["name"] for m in main["volumeMounts"]} == set(volumes)
    config_map = volumes["config"]["configMap"]["name"]
    assert ("ConfigMap", config_map) in documents

    for service in (d for (kind, _), d in documents.items() if kind == "Service"):
        if service["spec"].get("type") == "ExternalName":
            continue
        assert service["spec"]["clusterIP"] == "None", "headless: clients balance per call"
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)
    pdb = documents[("PodDisruptionBudget", "tierwise")]
    assert pdb["spec"]["selector"]["matchLabels"] == labels


def test_the_configmap_holds_a_valid_config_that_matches_the_deployment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    documents = manifests()
    main = container()
    env = {e["name"]: e for e in main["env"]}
    # The Secret's values, as the kubelet would set them.
    for name, item in env.items():
        monkeypatch.setenv(name, item.get("value", f"secret-{name.lower()}"))
    monkeypatch.setenv(
        "TIERWISE_LEDGER__POSTGRES_DSN", "postgresql://tierwise@tierwise-postgres:5432/tierwise"
    )
    monkeypatch.setenv("TIERWISE_STORE__URL", "redis://tierwise-redis:6379/0")
    raw = yaml.safe_load(documents[("ConfigMap", "tierwise-config")]["data"]["tierwise.yaml"])
    config = parse_config(raw)

    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert config.server.host == "0.0.0.0"
    assert (config.server.port, config.server.metrics_port) == (ports["grpc"], ports["metrics"])
    assert config.server.http_port == ports["http"]
    mounts = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
    assert str(config.store.path) == mounts["state"]
    assert main["args"][-1] == f"{mounts['config']}/tierwise.yaml"
    assert config.store.kind == "redis" and config.ledger.postgres_dsn is not None
    assert {t.api_key_env for t in config.tiers} <= set(env)
    assert config.tiers[0].price.input_per_mtok == Decimal("0.15")
    assert config.ledger.user_salt_env in env
    # Host names in the config are services of this set.
    assert ("Service", "tierwise-redis") in documents and ("Service", "tierwise-postgres") in documents
    secret_names = {e["valueFrom"]["secretKeyRef"]["name"] for e in env.values() if "valueFrom" in e}
    assert secret_names == {"tierwise-secrets"}
    # Room to finish in-flight calls and flush the ledger before the kill.
    grace = documents[("Deployment", "tierwise")]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > config.server.grace_period_s + 10


def test_kustomize_renders_the_set() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not found: the kustomize rendering check needs it")
    result = subprocess.run(
        [kubectl, "kustomize", str(KUBERNETES)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    rendered = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(result.stdout)}
    assert set(rendered) == set(manifests())
    for document in rendered.values():
        assert document["metadata"]["labels"]["app.kubernetes.io/part-of"] == "tierwise"

"""Knowing when the model does not know: the unfamiliarity calibration a trained version carries (pinned
in its manifest, refused when missing or tampered), the guard's actions in the classifier policy, and an
unfamiliar request through the real server: its decision's reason, the metric per tenant and feature,
and the report's unfamiliar share."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from tests.harness import AUTH, build_config, config_dict, running_server
from tests.trained_registry import train_small_registry
from tests.upstream import ScriptedUpstream
from tierwise.classifier import FEATURE_SPEC, ModelRefused, ModelRegistry, ServingModel, load_model
from tierwise.classifier.manifest import MANIFEST_NAME, read_manifest, write_manifest
from tierwise.classifier.unfamiliarity import UNFAMILIARITY_FILE, UnfamiliarityCalibration
from tierwise.router.analytics.render import METRIC_NAMES
from tierwise.router.analytics.report import build_report
from tierwise.router.config import ConfigError, UnfamiliarConfig, parse_config
from tierwise.router.ledger.record import SpendRecord
from tierwise.router.observability.label_values import BoundedLabelValues
from tierwise.router.observability.metrics import Metrics
from tierwise.router.policies.base import RoutingContext, TierOption
from tierwise.router.policies.classifier import ClassifierPolicy
from tierwise.router.policies.factory import PinnedModel
from tierwise.router.service import build_service
from tierwise.router.types import ChatMessage, RequestSpec
from tierwise.training.unfamiliarity_fit import attach_unfamiliarity
from tierwise.v1 import tierwise_pb2 as pb

TIERS = ("small", "large")
OPTIONS = (
    TierOption("small", "small-model", Decimal("0.0001"), 512),
    TierOption("large", "large-model", Decimal("0.01"), 2048),
)


@pytest.fixture(scope="module")
def registry(
    shared_data: Path, tmp_path_factory: pytest.TempPathFactory, embeddings: Path
) -> tuple[Path, str]:
    """A registry of real versions trained on a RouterBench slice for the harness's tiers; the serving one."""
    root, versions = train_small_registry(
        shared_data, tmp_path_factory.mktemp("unfamiliar-models"), embeddings
    )
    return root, versions[0]


def recalibrated(root: Path, source: str, version: str, threshold: float, full: float) -> str:
    """A copy of ``source`` as ``version`` whose calibration's threshold and full score are moved (and
    pinned again, as training pins it): -1 makes every prompt unfamiliar, 5 none."""
    registry = ModelRegistry(root)
    target = registry.version_dir(version)
    shutil.copytree(registry.version_dir(source), target)
    calibration = UnfamiliarityCalibration.from_bytes((target / UNFAMILIARITY_FILE).read_bytes())
    moved = replace(calibration, threshold=threshold, full=full)
    write_manifest(
        target, attach_unfamiliarity(target, replace(read_manifest(target), version=version), moved)
    )
    return version


def context(quality_target: float = 0.8) -> RoutingContext:
    request = RequestSpec(tenant="t", messages=(ChatMessage("user", "What is the boiling point of water?"),))
    vector = np.ones(FEATURE_SPEC.embedding_dim, dtype=np.float32) / np.sqrt(FEATURE_SPEC.embedding_dim)
    return RoutingContext(request, 12, OPTIONS, quality_target, vector)


def test_a_trained_version_carries_its_calibration_pinned_in_the_manifest(registry: tuple[Path, str]) -> None:
    root, serving = registry
    directory = ModelRegistry(root).version_dir(serving)
    manifest = read_manifest(directory)
    assert manifest.unfamiliarity is not None and UNFAMILIARITY_FILE in manifest.files
    model = load_model(directory, TIERS, device="cpu", require_unfamiliarity=True)
    calibration = model.unfamiliarity
    assert calibration is not None and calibration.measure == manifest.unfamiliarity.measure
    statistics = calibration.statistics
    assert statistics["split"] == "validation" and set(statistics["spearman_with_brier"]) == {
        "neighbour_distance",
        "disagreement",
    }
    assert len(calibration.base_rates) == len(TIERS) and all(0 <= p <= 1 for p in calibration.base_rates)
    # the threshold is the calibrated quantile of the validation scores
    assert calibration.percentile(calibration.threshold) == pytest.approx(calibration.quantile, abs=0.02)
    statistics_part = np.zeros(FEATURE_SPEC.size - FEATURE_SPEC.embedding_dim, dtype=np.float32)
    assessed = model.assess(np.hstack([context().embedding, statistics_part]))  # type: ignore[list-item]
    assert set(assessed.p_adequate) == set(TIERS) and assessed.unfamiliarity is not None


def test_a_missing_or_tampered_calibration_is_refused(registry: tuple[Path, str], tmp_path: Path) -> None:
    root, serving = registry
    source = ModelRegistry(root).version_dir(serving)

    def copy(name: str) -> Path:
        return Path(shutil.copytree(source, tmp_path / name))

    edited = copy("file-edited")
    data = json.loads((edited / UNFAMILIARITY_FILE).read_text())
    data["threshold"] = 99.0
    (edited / UNFAMILIARITY_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelRefused, match=f"{UNFAMILIARITY_FILE} has SHA-256"):
        load_model(edited, TIERS, device="cpu")

    manifest_edited = copy("manifest-edited")
    data = json.loads((manifest_edited / MANIFEST_NAME).read_text())
    data["unfamiliarity"]["threshold"] = 99.0
    (manifest_edited / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ModelRefused, match="the manifest says"):
        load_model(manifest_edited, TIERS, device="cpu")

    missing = copy("missing")
    manifest = read_manifest(missing)
    files = {name: digest for name, digest in manifest.files.items() if name != UNFAMILIARITY_FILE}
    write_manifest(missing, replace(manifest, unfamiliarity=None, files=files))
    with pytest.raises(ModelRefused, match="no unfamiliarity calibration"):
        load_model(missing, TIERS, device="cpu", require_unfamiliarity=True)
    assert load_model(missing, TIERS, device="cpu").unfamiliarity is None  # trusting the model, it loads

    # the serving side: a registry whose pointer names the stripped version refuses to start the router
    stripped = tmp_path / "stripped-registry"
    shutil.copytree(root, stripped)
    shutil.rmtree(stripped / "versions" / serving)
    shutil.copytree(missing, stripped / "versions" / serving)
    watcher = ServingModel(ModelRegistry(stripped), TIERS, device="cpu", require_unfamiliarity=True)
    assert "no unfamiliarity calibration" in (watcher.reload().error or "")
    data = config_dict(tmp_path / "var", "http://127.0.0.1:1/v1", "http://127.0.0.1:1")
    data["routing"] = {"policy": "classifier", "classifier": {"registry": str(stripped)}}
    with pytest.raises(ConfigError, match=r"routing\.classifier\.registry: .*no unfamiliarity calibration"):
        asyncio.run(build_service(build_config(data)))


def test_the_guard_leans_on_the_prior_past_the_threshold(registry: tuple[Path, str], tmp_path: Path) -> None:
    source, serving = registry
    root = Path(shutil.copytree(source, tmp_path / "registry"))
    registry_store = ModelRegistry(root)
    always = recalibrated(root, serving, "always-unfamiliar", threshold=-1.0, full=-0.5)
    never = recalibrated(root, serving, "never-unfamiliar", threshold=5.0, full=6.0)
    always_model = load_model(registry_store.version_dir(always), TIERS, device="cpu")
    never_model = load_model(registry_store.version_dir(never), TIERS, device="cpu")
    assert always_model.unfamiliarity is not None
    base = dict(zip(TIERS, always_model.unfamiliarity.base_rates, strict=True))

    shrink = ClassifierPolicy(PinnedModel(always_model), TIERS, "utility", unfamiliar=UnfamiliarConfig())
    choice = shrink.choose(context())
    assert choice.reason.startswith("unfamiliar:") and choice.reason != "unfamiliar:tier"
    assert choice.p_adequate == pytest.approx(base)  # all the way to the base rates
    familiar = ClassifierPolicy(PinnedModel(never_model), TIERS, "utility", unfamiliar=UnfamiliarConfig())
    assert not familiar.choose(context()).reason.startswith("unfamiliar")
    trusting = ClassifierPolicy(
        PinnedModel(always_model), TIERS, "utility", unfamiliar=UnfamiliarConfig(action="trust_model")
    )
    assert not trusting.choose(context()).reason.startswith("unfamiliar")

    to_tier = ClassifierPolicy(
        PinnedModel(always_model), TIERS, unfamiliar=UnfamiliarConfig(action="tier", tier="large")
    )
    assert (to_tier.choose(context()).tier, to_tier.choose(context()).reason) == ("large", "unfamiliar:tier")
    only_small = replace(context(), candidates=OPTIONS[:1])  # large's circuit open: the strongest that can
    assert to_tier.choose(only_small).tier == "small"
    demanding = ClassifierPolicy(
        PinnedModel(always_model),
        TIERS,
        unfamiliar=UnfamiliarConfig(action="quality_target", quality_target=max(base.values()) + 1e-6),
    )
    choice = demanding.choose(context(quality_target=0.0))  # the request's own target is not used
    assert choice.reason == "unfamiliar:quality-target" and choice.tier == max(base, key=lambda t: base[t])

    stripped_model = load_model(registry_store.version_dir(always), TIERS, device="cpu")
    stripped_model.unfamiliarity = None
    with pytest.raises(ValueError, match="no unfamiliarity calibration"):
        ClassifierPolicy(PinnedModel(stripped_model), TIERS, unfamiliar=UnfamiliarConfig())


def test_the_config_names_a_bad_unfamiliar_field() -> None:
    def refused(unfamiliar: dict[str, object]) -> str:
        data = config_dict(Path("/tmp/unused"), "http://127.0.0.1:1/v1", "http://127.0.0.1:1")
        data["routing"] = {"policy": "classifier", "classifier": {"unfamiliar": unfamiliar}}
        with pytest.raises(ConfigError) as caught:
            parse_config(data)
        return str(caught.value)

    assert "routing.classifier.unfamiliar" in refused(
        {"action": "tier"}
    ) and "tier: action tier needs it" in (refused({"action": "tier"}))
    assert "routing.classifier.unfamiliar.tier: unknown tier 'huge'" in refused(
        {"action": "tier", "tier": "huge"}
    )
    assert "quality_target: only action quality_target takes it" in refused({"quality_target": 0.9})
    assert "routing.classifier.unfamiliar.action" in refused({"action": "off"})
    assert "routing.classifier.unfamiliar.quality_target" in refused(
        {"action": "quality_target", "quality_target": 1.5}
    )


def test_the_metric_counts_unfamiliar_requests_per_tenant_and_bounded_feature() -> None:
    metrics = Metrics(features=BoundedLabelValues(max_values=1))
    now = time.time()
    for i, (feature, reason) in enumerate(
        [("chat", "unfamiliar:utility"), ("chat", "utility"), ("search", "unfamiliar:tier")]
    ):
        metrics.observe_spend(SpendRecord(f"r{i}", now, "acme", feature=feature, reason=reason))
    value = metrics.registry.get_sample_value
    assert value("tierwise_unfamiliar_requests_total", {"tenant": "acme", "feature": "chat"}) == 1.0
    # a second feature name is past the bound: counted under "other", not as a new series
    assert value("tierwise_unfamiliar_requests_total", {"tenant": "acme", "feature": "other"}) == 1.0


@pytest.mark.asyncio
async def test_an_unfamiliar_request_through_the_server(registry: tuple[Path, str], tmp_path: Path) -> None:
    root, serving = registry
    copy = tmp_path / "registry"
    shutil.copytree(root, copy)
    always = recalibrated(copy, serving, "always-unfamiliar", threshold=-1.0, full=-0.5)
    ModelRegistry(copy).promote(always, force=True)
    async with ScriptedUpstream() as upstream:
        data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url)
        data["routing"] = {"policy": "classifier", "classifier": {"registry": str(copy), "rule": "threshold"}}
        async with running_server(build_config(data)) as svc:
            prompt = [pb.ChatMessage(role="user", content="Name the capital of Burkina Faso.")]
            decision = await svc.stub.Route(pb.RouteRequest(messages=prompt), metadata=AUTH)
            assert decision.reason.startswith("unfamiliar:") and decision.model_version == always
            await svc.stub.Complete(pb.CompleteRequest(messages=prompt, feature="atlas"), metadata=AUTH)
            metrics = svc.server.service.accounting.metrics
            counted = metrics.registry.get_sample_value(
                "tierwise_unfamiliar_requests_total", {"tenant": "acme", "feature": "atlas"}
            )
            assert counted == 1.0
            ledger = svc.server.service.accounting.ledger
            assert ledger is not None and await ledger.flush(10)
            now = time.time()
            report = await build_report(ledger, now - 3600, now + 3600, ["feature"])
    assert "unfamiliar_share" in METRIC_NAMES
    shares = {g.group["feature"]: (g.unfamiliar, g.unfamiliar_share) for g in report.groups}
    assert shares["atlas"] == (1, 1.0)
    assert report.total.unfamiliar == 2  # the Route call is booked too

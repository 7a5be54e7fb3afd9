"""The report and the dashboard against a real server with real traffic: the report's totals equal
the per-request responses and ``tierwise_cost_usd_total`` to the cent, no prompt text appears in
any report output, ``/dashboard`` is behind the admin API's keys, and headless Chromium renders
it with the report's numbers (the screenshot is kept under ``artifacts/`` or
``$TIERWISE_TEST_ARTIFACTS``)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from tests.harness import AUTH, OTHER_AUTH, build_config, running_server
from tests.test_accounting_server import metered_config, metric_sums, tagged_request
from tierwise.router.auth import sha256_hex
from tierwise.training.cli.app import app
from tierwise.v1 import tierwise_pb2 as pb

ADMIN_KEY = "test-key-ops-admin"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(
    os.environ.get("TIERWISE_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "artifacts")
)
SECRET = "secret-prompt-text"


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


async def _traffic(svc: Any) -> tuple[dict[str, Decimal], list[str]]:
    """Requests from two tenants over features, tiers and a team tag; returns spend per tenant."""
    spent: dict[str, Decimal] = defaultdict(Decimal)
    ids = []
    cases = [
        (AUTH, "acme", "chat", "", "red"),  # routed (cheapest): saves against the strongest tier
        (AUTH, "acme", "search", "large", "blue"),
        (OTHER_AUTH, "globex", "chat", "", "red"),
        (OTHER_AUTH, "globex", "summarise", "large", "blue"),
    ]
    for i in range(16):
        auth, tenant, feature, tier, team = cases[i % len(cases)]
        request = tagged_request(f"{SECRET} {i}", feature, tier, team)
        response = await svc.stub.Complete(request, metadata=auth)
        spent[tenant] += Decimal(response.cost_usd_exact)
        ids.append(response.request_id)
    for request_id, score in [(ids[0], 0.5), (ids[1], 1.0), (ids[4], 0.75)]:
        await svc.stub.Feedback(
            pb.FeedbackRequest(request_id=request_id, score=score, source=pb.FEEDBACK_SOURCE_JUDGE),
            metadata=AUTH,
        )
    return dict(spent), ids


def _run_report(config: Path, *args: str) -> str:
    result = CliRunner().invoke(app, ["report", "--config", str(config), *args], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    return result.stdout


async def _report(config: Path, *args: str) -> str:
    """``tierwise report`` in a thread: it runs its own event loop, the server runs in this one."""
    return await asyncio.to_thread(_run_report, config, *args)


def _fresh_artifact(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    path.unlink(missing_ok=True)
    return path


async def _chromium(*args: str, profile: Path) -> str:
    assert CHROMIUM is not None
    process = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=15000",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0
    return out.decode()


def _kpi(dom: str, key: str) -> str:
    match = re.search(rf'id="kpi-{key}"[^>]*data-raw="([^"]*)"', dom) or re.search(
        rf'data-raw="([^"]*)"[^>]*id="kpi-{key}"', dom
    )
    assert match, f"kpi {key} not rendered"
    return match.group(1)


@pytest.mark.asyncio
async def test_report_and_dashboard_on_real_traffic(tmp_path: Path) -> None:
    async with metered_config(tmp_path) as data:
        data["auth"]["api_keys"].append({"key_sha256": sha256_hex(ADMIN_KEY), "tenant": "ops", "admin": True})
        data["budgets"] = [{"tenant": "acme", "window": "month", "usd": "0.05"}]
        config_file = tmp_path / "config.yaml"
        config_file.write_text(yaml.safe_dump(data))
        async with running_server(build_config(data)) as svc:
            started = time.time()
            spent, _ = await _traffic(svc)
            ledger = svc.server.service.accounting.ledger
            assert ledger is not None and await ledger.flush(10)
            base = f"http://127.0.0.1:{svc.server.metrics_port}"
            async with httpx.AsyncClient(timeout=30) as client:
                exposition = (await client.get(f"{base}/metrics")).text
                window = {"since": _iso(started - 3600), "until": _iso(time.time() + 2)}
                # The report, in every format, read from the store while the server runs.
                cli_window = ["--since", window["since"], "--until", window["until"]]
                report = json.loads(
                    await _report(config_file, *cli_window, "--by", "tenant,team", "--format", "json")
                )
                outputs = [
                    await _report(
                        config_file, *cli_window, "--by", "tenant,feature,team", "--quality", "--forecast"
                    ),
                    await _report(config_file, *cli_window, "--by", "team,model", "--format", "csv"),
                    json.dumps(report),
                    await _report(config_file, *cli_window, "--format", "json", "--quality", "--forecast"),
                ]

                # /dashboard: the admin API's keys, a tenant's key sees only its tenant.
                page = f"{base}/dashboard"
                missing = await client.get(page, params=window)
                assert missing.status_code == 401 and "Basic" in missing.headers["WWW-Authenticate"]
                wrong = await client.get(page, params=window, auth=("x", "not-a-key"))
                assert wrong.status_code == 401
                globex = await client.get(page, params=window, headers=dict(OTHER_AUTH))
                assert globex.status_code == 200 and '"tenant":"globex"' in globex.text
                assert '"acme"' not in globex.text
                refused = await client.get(
                    page, params={**window, "tenant": "acme"}, headers=dict(OTHER_AUTH)
                )
                assert refused.status_code == 403
                bad = await client.get(page, params={"since": "soon"}, auth=("ops", ADMIN_KEY))
                assert bad.status_code == 400 and "--since" in bad.text
                html = (await client.get(page, params=window, auth=("ops", ADMIN_KEY))).text
                static = await client.get(
                    f"{base}/dashboard/static/chart.umd.min.js", auth=("ops", ADMIN_KEY)
                )
                assert static.status_code == 200 and b"Chart.js v4" in static.content[:200]
                outputs.append(html)

            # Reconciliation: responses = report = metrics, to the cent.
            by_tenant: dict[str, Decimal] = defaultdict(Decimal)
            for group in report["groups"]:
                by_tenant[group["group"]["tenant"]] += Decimal(group["spend_usd"])
            assert dict(by_tenant) == spent
            assert Decimal(report["total"]["spend_usd"]) == sum(spent.values())
            metric = metric_sums(exposition, "tierwise_cost_usd_total", "tenant")
            for tenant, amount in spent.items():
                assert round(metric[tenant], 2) == round(amount, 2)
            for text in outputs:
                assert SECRET not in text

            if CHROMIUM is None:
                pytest.skip(
                    "chromium is not installed (Debian package `chromium`): the browser half is skipped"
                )
            query = f"since={window['since']}&until={window['until']}".replace("+", "%2B")
            url = f"http://ops:{ADMIN_KEY}@127.0.0.1:{svc.server.metrics_port}/dashboard?{query}"
            dom = await _chromium("--dump-dom", url, profile=tmp_path / "chromium-dom")
            shot = await asyncio.to_thread(_fresh_artifact, "dashboard.png")
            await _chromium(
                f"--screenshot={shot}", "--window-size=1400,1900", url, profile=tmp_path / "chromium-shot"
            )

    assert 'data-ready="1"' in dom and 'data-charts="6"' in dom  # the script ran and drew every chart
    assert dom.count("<canvas") == 6
    total = report["total"]
    for key in (
        "spend_usd",
        "requests",
        "cache_saved_usd",
        "routing_saved_usd",
        "net_saved_usd",
        "latency_p95_ms",
    ):
        # The page prints numbers as JavaScript does (4.0 shows as 4): compare the values, exactly.
        assert Decimal(_kpi(dom, key)) == Decimal(str(total[key])), key
    assert "acme/*/month" in dom  # the budget's burn and run-out
    assert Decimal(total["routing_saved_usd"]) > 0
    assert SECRET not in dom
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    print(f"dashboard screenshot: {shot}")

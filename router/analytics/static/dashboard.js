// Draws the tierwise dashboard from the JSON the server embedded in the page (Chart.js).
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("dashboard-data").textContent);
  const palette = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];
  const charts = {};
  Chart.defaults.animation = false; // render at once: screenshots and printouts show the final state
  Chart.defaults.maintainAspectRatio = false;
  Chart.defaults.font.family = "system-ui, sans-serif";

  function text(id, value) { document.getElementById(id).textContent = value; }
  function el(tag, content) { const e = document.createElement(tag); if (content !== undefined) e.textContent = content; return e; }

  function table(id, columns, rows, empty) {
    const host = document.getElementById(id);
    host.replaceChildren();
    if (!rows.length) { host.appendChild(el("p", empty)).className = "empty"; return; }
    const t = el("table"), head = el("tr");
    columns.forEach(([label]) => head.appendChild(el("th", label)));
    t.appendChild(el("thead")).appendChild(head);
    const body = t.appendChild(el("tbody"));
    rows.forEach((row) => {
      const tr = body.appendChild(el("tr"));
      columns.forEach(([, key]) => tr.appendChild(el("td", row[key] === null || row[key] === undefined ? "" : String(row[key]))));
    });
    host.appendChild(t);
  }

  function kpis() {
    const t = data.summary.totals;
    const items = [
      ["spend (USD)", "spend_usd", t.spend_usd],
      ["requests", "requests", t.requests],
      ["saved by cache (USD)", "cache_saved_usd", t.cache_saved_usd],
      ["saved by routing (USD)", "routing_saved_usd", t.routing_saved_usd],
      ["net savings (USD)", "net_saved_usd", t.net_saved_usd],
      ["cache hit rate", "cache_hit_rate", (100 * t.cache_hit_rate).toFixed(2) + " %"],
      ["error rate", "error_rate", (100 * t.error_rate).toFixed(2) + " %"],
      ["p95 latency (ms)", "latency_p95_ms", t.latency_p95_ms === null ? "–" : t.latency_p95_ms],
    ];
    const host = document.getElementById("kpis");
    items.forEach(([label, key, value]) => {
      const box = host.appendChild(el("div"));
      box.className = "kpi";
      box.appendChild(el("div", label)).className = "label";
      const v = box.appendChild(el("div", String(value)));
      v.className = "value";
      v.id = "kpi-" + key;
      v.dataset.raw = String(t[key]);
    });
  }

  function spendChart(dimension) {
    const s = data.spend[dimension];
    const datasets = Object.entries(s.series).map(([name, values], i) => ({
      label: name || "(none)", data: values, backgroundColor: palette[i % palette.length], stack: "spend",
    }));
    if (charts.spend) charts.spend.destroy();
    charts.spend = new Chart(document.getElementById("chart-spend"), {
      type: "bar",
      data: { labels: s.labels, datasets },
      options: { scales: { x: { stacked: true }, y: { stacked: true, title: { display: true, text: "USD per " + s.bucket } } } },
    });
  }

  function savingsChart() {
    const t = data.summary.totals;
    charts.savings = new Chart(document.getElementById("chart-savings"), {
      type: "bar",
      data: {
        labels: ["cache", "routing", "tierwise compute", "net"],
        datasets: [{ data: [t.cache_saved_usd, t.routing_saved_usd, "-" + t.router_cost_usd, t.net_saved_usd].map(Number),
                     backgroundColor: ["#59a14f", "#4e79a7", "#e15759", "#76b7b2"] }],
      },
      options: { plugins: { legend: { display: false } }, scales: { y: { title: { display: true, text: "USD" } } } },
    });
  }

  function cacheChart() {
    const s = data.spend.tenant;
    charts.cache = new Chart(document.getElementById("chart-cache"), {
      type: "line",
      data: { labels: s.labels, datasets: [{ label: "hit rate", data: data.spend.cache_hit_rate.map((r) => r === null ? null : 100 * r),
              borderColor: "#59a14f", backgroundColor: "#59a14f33", fill: true, spanGaps: true, pointRadius: 2 }] },
      options: { plugins: { legend: { display: false } }, scales: { y: { min: 0, max: 100, title: { display: true, text: "%" } } } },
    });
  }

  function latencyChart() {
    const tiers = data.summary.tiers;
    charts.latency = new Chart(document.getElementById("chart-latency"), {
      type: "bar",
      data: {
        labels: tiers.map((t) => t.tier || "(none)"),
        datasets: [
          { label: "p95 latency", data: tiers.map((t) => t.latency_p95_ms), backgroundColor: "#4e79a7" },
          { label: "p95 TTFT", data: tiers.map((t) => t.ttft_p95_ms), backgroundColor: "#f28e2b" },
        ],
      },
      options: { scales: { y: { title: { display: true, text: "ms" } } } },
    });
  }

  function budgets() {
    const rows = data.forecast.budgets || [];
    charts.budgets = new Chart(document.getElementById("chart-budgets"), {
      type: "bar",
      data: {
        labels: rows.map((b) => b.budget),
        datasets: [
          { label: "used", data: rows.map((b) => Number(b.used_usd)), backgroundColor: "#4e79a7" },
          { label: "projected at window end", data: rows.map((b) => Number(b.projected_usd)), backgroundColor: "#4e79a755" },
          { label: "limit", data: rows.map((b) => Number(b.limit_usd)), type: "line", showLine: false, pointStyle: "line",
            pointRadius: 14, borderColor: "#e15759", borderWidth: 3 },
        ],
      },
      options: { indexAxis: "y", scales: { x: { title: { display: true, text: "USD" } } } },
    });
    table("table-budgets", [["budget", "budget"], ["used", "used_usd"], ["limit", "limit_usd"], ["projected", "projected_usd"], ["runs out", "runs_out"]],
          rows.map((b) => ({ ...b, runs_out: b.runs_out || "not this " + b.window })), "no USD budgets configured");
  }

  function clusters() {
    const view = data.clusters;
    if (view.unavailable) {
      text("clusters-coverage", view.unavailable);
      return;
    }
    const leading = view.clusters.filter((c) => c.leading);
    const rest = view.clusters.filter((c) => !c.leading);
    const labels = leading.map((c) => "cluster " + c.rank);
    const shares = leading.map((c) => 100 * c.spend_share);
    if (rest.length) {
      labels.push(rest.length + " others");
      shares.push(100 * rest.reduce((sum, c) => sum + c.spend_share, 0));
    }
    charts.clusters = new Chart(document.getElementById("chart-clusters"), {
      type: "bar",
      data: { labels, datasets: [{ label: "share of spend", data: shares,
              backgroundColor: labels.map((_, i) => i < leading.length ? palette[i % palette.length] : "#bab0ac") }] },
      options: { indexAxis: "y", plugins: { legend: { display: false } },
                 scales: { x: { min: 0, max: 100, title: { display: true, text: "% of clustered spend" } } } },
    });
    text("clusters-target", Math.round(100 * view.target_share) + " %");
    text("clusters-coverage", "clustered " + view.clustered_requests + " of " + view.requests + " requests (" +
         view.clustered_spend_usd + " of " + view.spend_usd + " USD); the others have no stored embedding");
    const mix = (c, key) => c.tiers.filter((t) => t[key] !== null).map((t) => (t.tier || "(none)") + " " + t[key]).join(" · ");
    table("table-clusters", [["cluster", "rank"], ["requests", "requests"], ["USD", "spend_usd"], ["share", "spend_share"],
          ["tier mix", "tier_mix"], ["USD / quality by tier", "tier_quality"], ["in tokens", "mean_input_tokens"],
          ["out tokens", "mean_output_tokens"], ["cache hits", "cache_hit_share"], ["cache saved", "cache_saved_usd"],
          ["routing saved", "routing_saved_usd"], ["USD / quality", "usd_per_quality"], ["representative prompts", "prompt_list"]],
          leading.map((c) => ({ ...c, tier_mix: mix(c, "requests"), tier_quality: mix(c, "usd_per_quality"),
                                prompt_list: c.prompts.join("\n") })),
          "no embedded requests in this window");
    document.querySelectorAll("#table-clusters td:last-child").forEach((td) => { td.className = "prompts"; });
  }

  kpis();
  text("tenant", data.tenant);
  text("window", data.since + " .. " + data.until);
  spendChart("tenant");
  document.getElementById("spend-dimension").addEventListener("change", (e) => spendChart(e.target.value));
  savingsChart();
  cacheChart();
  latencyChart();
  budgets();
  table("table-forecast", [["tenant", "tenant"], ["to date", "month_to_date_usd"], ["forecast", "forecast_usd"], ["low", "low_usd"], ["high", "high_usd"], ["model", "method"]],
        data.forecast.forecast || [], "no spend yet");
  table("table-anomalies", [["hour", "hour"], ["tenant", "tenant"], ["feature", "feature"], ["USD", "cost_usd"], ["baseline", "baseline_usd"], ["z", "z"]],
        data.anomalies, "no anomalies in this window");
  table("table-quality", [["", "dimension"], ["value", "value"], ["judged", "judged"], ["mean quality", "mean_quality"], ["USD / quality", "usd_per_quality"]],
        data.quality, "no judgments in this window");
  clusters();
  document.body.dataset.charts = String(Object.keys(charts).length);
  document.body.dataset.ready = "1";
})();

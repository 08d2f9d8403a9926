// The live dashboard: frames from /dashboard/stream (Server-Sent Events), one moving chart per figure.
import { LineChart } from "/web/charts.js";

const DASH = "–";

function number(v, digits = 0) {
  return v.toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}
const fmt = {
  count: (v) => number(v),
  rate: (v) => `${number(v, v < 10 ? 1 : 0)}/s`,
  seconds: (v) => (v < 1 ? `${number(v * 1000, v < 0.01 ? 2 : 1)} ms` : `${number(v, 2)} s`),
  bytes: (v) => {
    const units = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i += 1;
    }
    return `${number(v, i === 0 ? 0 : 1)} ${units[i]}`;
  },
  percent: (v) => `${number(v, 1)} %`,
  messages: (v) => `${number(v)} ${v === 1 ? "msg" : "msgs"}`,
};

function show(v, format) {
  return v === null || v === undefined ? DASH : format(v);
}

function sum(map) {
  return map ? Object.values(map).reduce((a, b) => a + b, 0) : null;
}

// Each panel: its title, the value shown big, the line(s) charted, a smaller line of detail.
const PANELS = [
  {
    id: "connections",
    title: "Connections",
    value: (f) => sum(f.connections),
    format: fmt.count,
    series: (f) => [f.connections ? f.connections.websocket ?? 0 : null, f.connections ? f.connections.polling ?? 0 : null],
    legend: ["websocket", "polling"],
    sub: (f) =>
      f.connections
        ? Object.entries(f.connections).map(([k, v]) => `${k} ${number(v)}`).join(" · ")
        : DASH,
  },
  { id: "accepted", title: "Messages accepted", value: (f) => f.accepted_per_s, format: fmt.rate },
  { id: "deliveries", title: "Deliveries", value: (f) => f.deliveries_per_s, format: fmt.rate },
  {
    id: "commit-latency",
    title: "Commit latency (receive → commit)",
    value: (f) => f.receive_to_commit_p99_s,
    format: fmt.seconds,
    series: (f) => [f.receive_to_commit_p50_s, f.receive_to_commit_p99_s],
    legend: ["p50", "p99"],
    sub: (f) =>
      `p50 ${show(f.receive_to_commit_p50_s, fmt.seconds)} · p99 ${show(f.receive_to_commit_p99_s, fmt.seconds)}` +
      ` · one batch's commit p99 ${show(f.commit_p99_s, fmt.seconds)}`,
  },
  {
    id: "delivery-latency",
    title: "Delivery latency (commit → write)",
    value: (f) => f.delivery_p99_s,
    format: fmt.seconds,
    series: (f) => [f.delivery_p50_s, f.delivery_p99_s],
    legend: ["p50", "p99"],
    sub: (f) => `p50 ${show(f.delivery_p50_s, fmt.seconds)} · p99 ${show(f.delivery_p99_s, fmt.seconds)}`,
  },
  {
    id: "outbox",
    title: "Outbox (bytes queued to clients)",
    value: (f) => f.outbox_bytes,
    format: fmt.bytes,
    sub: (f) => `largest one client's ${show(f.largest_outbox_bytes, fmt.bytes)}`,
  },
  {
    id: "backlog",
    title: "Catch-up backlog",
    value: (f) => f.catchup_backlog_messages,
    format: fmt.messages,
  },
  {
    id: "lagging",
    title: "Slow readers catching up",
    value: (f) => f.lagging_members,
    format: fmt.count,
    sub: () => "members reading from the log, not live",
  },
  {
    id: "rate-limits",
    title: "Rate limits hit",
    value: (f) => f.rate_limits_per_s,
    format: fmt.rate,
    sub: (f) => `${show(f.rate_limits_total, fmt.count)} since start`,
  },
  {
    id: "loop-lag",
    title: "Event-loop lag",
    value: (f) => f.loop_lag_s,
    format: fmt.seconds,
    series: (f) => [f.loop_lag_s, f.loop_lag_p99_s],
    legend: ["latest", "p99"],
    sub: (f) => `p99 ${show(f.loop_lag_p99_s, fmt.seconds)}`,
  },
  {
    id: "ingest",
    title: "Ingest queue",
    value: (f) => f.ingest_queue_messages,
    format: fmt.messages,
    sub: (f) => `capacity ${show(f.ingest_queue_capacity_messages, fmt.count)} · batch p50 ${show(f.batch_size_p50_messages, fmt.count)}`,
  },
  { id: "cpu", title: "CPU", value: (f) => f.cpu_percent, format: fmt.percent, sub: () => "100 % = one core" },
  {
    id: "rss",
    title: "Memory (RSS)",
    value: (f) => f.rss_bytes,
    format: fmt.bytes,
    sub: (f) => `limit ${f.memory_limit_bytes === 0 ? "none (no cgroup limit)" : show(f.memory_limit_bytes, fmt.bytes)}`,
  },
];

const container = document.getElementById("panels");
const streamState = document.getElementById("stream-state");
const ready = document.getElementById("ready");

const views = PANELS.map((panel) => {
  const section = document.createElement("section");
  section.className = "panel";
  section.id = panel.id;
  section.setAttribute("aria-labelledby", `${panel.id}-title`);
  const h = document.createElement("h2");
  h.id = `${panel.id}-title`;
  h.textContent = panel.title;
  const value = document.createElement("p");
  value.className = "value";
  value.textContent = DASH;
  const canvas = document.createElement("canvas");
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", `${panel.title}: the last two minutes`);
  const sub = document.createElement("p");
  sub.className = "sub";
  section.append(h, value, canvas, sub);
  if (panel.legend) {
    const legend = document.createElement("p");
    legend.className = "legend";
    panel.legend.forEach((name, i) => {
      const span = document.createElement("span");
      span.className = `k${i + 1}`;
      span.textContent = `— ${name} `;
      legend.append(span);
    });
    section.append(legend);
  }
  container.append(section);
  const series = panel.series ? panel.series({}).length : 1;
  return { panel, value, sub, chart: new LineChart(canvas, series) };
});

// Alerts: the stream's `alerts` list, evaluated by the server (empty until it has rules).
const alertsPanel = document.createElement("section");
alertsPanel.className = "panel";
alertsPanel.id = "alerts";
alertsPanel.setAttribute("aria-labelledby", "alerts-title");
alertsPanel.innerHTML = '<h2 id="alerts-title">Alerts firing</h2>';
const alertList = document.createElement("ul");
alertList.className = "alerts";
alertList.setAttribute("aria-live", "polite");
alertsPanel.append(alertList);
container.prepend(alertsPanel);

function renderAlerts(alerts) {
  const items = (alerts || []).map((a) => {
    const li = document.createElement("li");
    li.textContent = `${a.severity ? `[${a.severity}] ` : ""}${a.name}${a.summary ? `: ${a.summary}` : ""}`;
    return li;
  });
  if (items.length === 0) {
    const li = document.createElement("li");
    li.className = "none";
    li.textContent = "None";
    items.push(li);
  }
  alertList.replaceChildren(...items);
}

function onFrame(frame) {
  for (const { panel, value, sub, chart } of views) {
    const v = panel.value(frame);
    value.textContent = show(v, panel.format);
    value.dataset.value = v === null || v === undefined ? "" : String(v);
    if (panel.sub) sub.textContent = panel.sub(frame);
    chart.push(panel.series ? panel.series(frame) : [v]);
  }
  renderAlerts(frame.alerts);
  ready.textContent = frame.ready === null || frame.ready === undefined ? "" : frame.ready ? "ready" : "NOT READY";
}

const source = new EventSource("/dashboard/stream");
source.onopen = () => {
  streamState.dataset.state = "online";
  streamState.textContent = "Live";
};
source.onerror = () => {
  streamState.dataset.state = "offline";
  streamState.textContent = "Reconnecting…";
};
source.onmessage = (event) => {
  try {
    onFrame(JSON.parse(event.data));
  } catch (error) {
    console.error("bad frame", error);
  }
};
renderAlerts([]);
window.addEventListener("resize", () => views.forEach((v) => v.chart.draw()));

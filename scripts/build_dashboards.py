#!/usr/bin/env python3
"""Grafana dashboards as code: writes config/grafana/dashboards/*.json from the panel
lists below with Grafana's own typed builders (grafana-foundation-sdk, in the test
extra, the build for the Grafana that docker-compose.yml runs), so the JSON follows
Grafana's dashboard schema. Run it after changing the panels; a test checks the
committed JSON equals its output, another runs every panel's query against a real
Prometheus.

    python scripts/build_dashboards.py           # write the JSON files
    python scripts/build_dashboards.py --check   # exit 1 when a file is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from grafana_foundation_sdk.builders import bargauge, common, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUT_DIR = Path(__file__).resolve().parent.parent / "config" / "grafana" / "dashboards"
GRID_WIDTH = 24
DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
# Every query is filtered by these two variables.
SEL = 'job=~"$job", instance=~"$instance"'
RI = "$__rate_interval"

PanelKind = Literal["timeseries", "stat", "bargauge", "table"]
AnyPanel = timeseries.Panel | stat.Panel | bargauge.Panel | table.Panel


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    instant: bool = False


@dataclass(frozen=True)
class Panel:
    title: str
    queries: list[Query]
    kind: PanelKind = "timeseries"
    unit: str = "short"
    width: int = 12
    height: int = 8
    description: str = ""
    stacked: bool = False
    decimals: int | None = None
    thresholds: list[tuple[float | None, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Variable:
    """A query variable over label values (`label_values(...)`)."""

    name: str
    label: str
    query: str
    include_all: bool
    current: str


def q(expr: str, legend: str = "", instant: bool = False) -> Query:
    return Query(" ".join(expr.split()), legend, instant)


def _query_variable(v: Variable) -> dash.QueryVariable:
    var = (dash.QueryVariable(v.name).label(v.label).datasource(DATASOURCE)
           .query({"query": v.query, "refId": f"{v.name}-values"})
           .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.ALPHABETICAL_ASC)
           .multi(v.include_all).include_all(v.include_all).options([]).hide(dm.VariableHide.DONT_HIDE))
    if v.include_all:
        return var.all_value(".*").current(dm.VariableOption(selected=True, text=["All"], value=["$__all"]))
    return var.current(dm.VariableOption(selected=True, text=v.current, value=v.current))


def _variables(extra: list[Variable]) -> list[Builder[dm.VariableModel]]:
    return [
        dash.DatasourceVariable("datasource").label("Data source").type("prometheus").regex("")
        .current(dm.VariableOption(selected=True, text="Prometheus", value="prometheus"))
        .hide(dm.VariableHide.DONT_HIDE),
        _query_variable(Variable("job", "Job", "label_values(detector_build_info, job)", False, "detector")),
        _query_variable(Variable("instance", "Worker", 'label_values(detector_build_info{job=~"$job"}, instance)',
                                 True, "All")),
        *[_query_variable(e) for e in extra],
    ]


def _target(query: Query, ref_id: str, kind: PanelKind) -> prometheus.Dataquery:
    t = (prometheus.Dataquery().ref_id(ref_id).datasource(DATASOURCE).expr(query.expr)
         .legend_format(query.legend or "__auto"))
    t = t.instant() if query.instant else t.range()
    return t.format(PromQueryFormat.TABLE) if kind == "table" else t


def _reduce_last() -> common.ReduceDataOptions:
    return common.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)


def _panel(p: Panel, pid: int) -> AnyPanel:
    panel: AnyPanel
    if p.kind == "timeseries":
        panel = (timeseries.Panel().draw_style(cm.GraphDrawStyle.LINE).line_width(1)
                 .fill_opacity(20 if p.stacked else 5)
                 .stacking(common.StackingConfig().mode(cm.StackingMode.NORMAL if p.stacked else cm.StackingMode.NONE)
                           .group("A"))
                 .show_points(cm.VisibilityMode.NEVER).span_nulls(True)
                 .legend(common.VizLegendOptions().display_mode(cm.LegendDisplayMode.TABLE)
                         .placement(cm.LegendPlacement.RIGHT).calcs(["lastNotNull", "max"]).show_legend(True))
                 .tooltip(common.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING)))
    elif p.kind == "stat":
        panel = (stat.Panel().color_scheme(dash.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
                 .reduce_options(_reduce_last()).color_mode(cm.BigValueColorMode.VALUE)
                 .graph_mode(cm.BigValueGraphMode.AREA).text_mode(cm.BigValueTextMode.AUTO))
    elif p.kind == "bargauge":
        panel = (bargauge.Panel().color_scheme(dash.FieldColor().mode(dm.FieldColorModeId.CONTINUOUS_GR_YL_RD))
                 .reduce_options(_reduce_last()).orientation(cm.VizOrientation.HORIZONTAL)
                 .display_mode(cm.BarGaugeDisplayMode.GRADIENT).show_unfilled(True))
    else:
        panel = (table.Panel().show_header(True)
                 .sort_by([common.TableSortByFieldState().display_name("Value").desc(True)])
                 .with_transformation(dm.DataTransformerConfig(id_val="organize",
                                                               options={"excludeByName": {"Time": True}})))
    panel = panel.id(pid).title(p.title).datasource(DATASOURCE).span(p.width).height(p.height).unit(p.unit)
    panel = panel.thresholds(dash.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(
        [dm.Threshold(value=v, color=c) for v, c in (p.thresholds or [(None, "green")])]))
    if p.decimals is not None:
        panel = panel.decimals(p.decimals)
    if p.description:
        panel = panel.description(p.description)
    return panel.targets([_target(query, chr(ord("A") + i), p.kind) for i, query in enumerate(p.queries)])


def dashboard(uid: str, title: str, description: str, rows: list[tuple[str, list[Panel]]],
              extra_vars: list[Variable] | None = None) -> dm.Dashboard:
    """A dashboard of expanded rows; the builder lays the panels out left to right,
    a new line when one is full (each line of a row fills the grid's 24 columns)."""
    builder = (dash.Dashboard(title).uid(uid).description(description).tags(["detector"]).editable()
               .version(1).time("now-1h", "now").refresh("30s").timezone("browser")
               .tooltip(dm.DashboardCursorSync.CROSSHAIR).fiscal_year_start_month(0).live_now(False).week_start("")
               .variables(_variables(extra_vars or []))
               .annotation(dash.AnnotationQuery().built_in(1).datasource(dm.DataSourceRef(type_val="grafana",
                                                                                          uid="-- Grafana --"))
                           .enable(True).hide(True).icon_color("rgba(0, 211, 255, 1)").name("Annotations & Alerts")
                           .type("dashboard"))
               .link(dash.DashboardLink("Detector").type(dm.DashboardLinkType.DASHBOARDS).tags(["detector"])
                     .as_dropdown(False).include_vars(True).keep_time(True)))
    pid = 1
    for row_title, row in rows:
        builder = builder.with_row(dash.Row(row_title).id(pid).collapsed(False))
        pid += 1
        line = 0
        for p in row:
            if line + p.width > GRID_WIDTH:
                raise ValueError(f"{title} / {row_title}: {p.title!r} does not fit the line (fill each line)")
            line = (line + p.width) % GRID_WIDTH
            builder = builder.with_panel(_panel(p, pid))
            pid += 1
        if line:
            raise ValueError(f"{title} / {row_title}: the last line is not full")
    return builder.build()


# --------------------------------------------------------------------- overview
def overview() -> dm.Dashboard:
    psel = SEL + ', profile=~"$profile"'
    rows = [
        ("Now", [
            Panel("Requests / s", [q(f"sum(rate(detector_requests_total{{{SEL}}}[{RI}]))")], kind="stat",
                  unit="reqps", width=6, height=4),
            Panel("Malicious share", [q(f"""sum(rate(detector_verdicts_total{{{SEL}, verdict="malicious"}}[{RI}]))
                  / clamp_min(sum(rate(detector_verdicts_total{{{SEL}}}[{RI}])), 1e-9)""")], kind="stat",
                  unit="percentunit", width=6, height=4, decimals=1,
                  thresholds=[(None, "green"), (0.05, "orange"), (0.2, "red")]),
            Panel("Alert revisions in range", [q(f"sum(increase(detector_alerts_total{{{SEL}}}[$__range]))")],
                  kind="stat", width=6, height=4, decimals=0,
                  thresholds=[(None, "green"), (1, "orange")]),
            Panel("Workers up", [q('sum(up{job=~"$job", instance=~"$instance"})')], kind="stat", width=6, height=4,
                  decimals=0, thresholds=[(None, "red"), (1, "green")]),
        ]),
        ("Traffic", [
            Panel("Requests by profile and app version", [
                q(f"sum by (profile, app_version) (rate(detector_profile_requests_total{{{psel}}}[{RI}]))",
                  "{{profile}} {{app_version}}")], unit="reqps", stacked=True,
                  description="App versions outside the profile's release table are 'other'; requests whose user "
                              "agent carries no parsable version are 'none'."),
            Panel("Verdict mix", [q(f"sum by (verdict) (rate(detector_verdicts_total{{{SEL}}}[{RI}]))", "{{verdict}}")],
                  unit="reqps", stacked=True),
        ]),
        ("Signals and alerts", [
            Panel("Top signals", [q(f"topk(10, sum by (code) (rate(detector_signals_total{{{SEL}}}[{RI}])))",
                                    "{{code}}")], unit="reqps",
                  description="Signal codes and their weights: docs/detections.md."),
            Panel("Alert revisions by severity", [
                q(f"sum by (severity) (rate(detector_alerts_total{{{SEL}}}[{RI}]))", "{{severity}}")],
                  unit="ops", stacked=True),
            Panel("Signals in range", [
                q(f"topk(20, sum by (code) (increase(detector_signals_total{{{SEL}}}[$__range])))", "{{code}}",
                  instant=True)], kind="bargauge", width=24, height=10, decimals=0),
        ]),
    ]
    profile_var = Variable("profile", "Profile", 'label_values(detector_profile_requests_total{job=~"$job"}, profile)',
                           include_all=True, current="All")
    return dashboard("detector-overview", "Detector / Overview",
                     "Traffic, verdict mix, top signals and alert rate of the app-impersonation detector.", rows,
                     [profile_var])


# ----------------------------------------------------------------- fingerprints
def fingerprints() -> dm.Dashboard:
    def fp(kind: str) -> str:
        return f'detector_fingerprint_requests_total{{{SEL}, kind="{kind}"}}'

    rows = [
        ("TLS (JA4)", [
            Panel("Top JA4 fingerprints in range", [
                q(f"topk(10, sum by (fingerprint) (increase({fp('ja4')}[$__range])))", "{{fingerprint}}",
                  instant=True)], kind="bargauge", decimals=0,
                  description="A profile's allowed JA4 by value, a known non-app stack by its name "
                              "(config/fingerprints/known-stacks.yaml); anything else is 'other', "
                              "no TLS facts 'none'."),
            Panel("JA4 by verdict", [q(f"sum by (fingerprint, verdict) (rate({fp('ja4')}[{RI}]))",
                                       "{{fingerprint}} {{verdict}}")], unit="reqps"),
        ]),
        ("Devices (user-agent device tuples)", [
            Panel("Top device models in range", [
                q(f"topk(15, sum by (fingerprint) (increase({fp('device')}[$__range])))", "{{fingerprint}}",
                  instant=True)], kind="bargauge", decimals=0,
                  description="The most popular catalogue models by Build.MODEL; 'emulator' when an emulator marker "
                              "fired, 'other' for any other model, 'none' when the user agent did not parse."),
            Panel("Emulators and unlisted devices by verdict", [
                q(f'sum by (fingerprint, verdict) (rate(detector_fingerprint_requests_total{{{SEL}, kind="device", '
                  f'fingerprint=~"emulator|other|none"}}[{RI}]))', "{{fingerprint}} {{verdict}}")], unit="reqps"),
        ]),
        ("Header order", [
            Panel("Header-order fingerprints by verdict", [
                q(f"sum by (fingerprint, verdict) (rate({fp('headers')}[{RI}]))", "{{fingerprint}} {{verdict}}")],
                  unit="reqps",
                  description="Official orders are the profile's headers.order with optional headers left out "
                              "(hv1 fingerprints, detector/fingerprints/headers.py); anything else is 'other'."),
            Panel("Non-official header order share", [
                q(f"""sum(rate(detector_fingerprint_requests_total{{{SEL}, kind="headers", fingerprint="other"}}[{RI}]))
                  / clamp_min(sum(rate({fp('headers')}[{RI}])), 1e-9)""", "share")], unit="percentunit"),
            Panel("Fingerprints by verdict in range", [
                q(f"topk(30, sum by (kind, fingerprint, verdict) "
                  f"(increase(detector_fingerprint_requests_total{{{SEL}}}[$__range])))", instant=True)],
                  kind="table", width=24, height=10, decimals=0),
        ]),
    ]
    return dashboard("detector-fingerprints", "Detector / Fingerprints",
                     "TLS, device and header-order fingerprints by verdict (closed label sets from config).", rows)


# -------------------------------------------------------------- pipeline health
def pipeline() -> dm.Dashboard:
    def quantiles(metric: str) -> list[Query]:
        return [q(f"histogram_quantile({p}, sum by (le) (rate({metric}_bucket{{{SEL}}}[{RI}])))", f"p{int(p * 100)}")
                for p in (0.5, 0.95, 0.99)]

    rows = [
        ("Kafka consumers", [
            Panel("Consumer lag", [q(f"sum by (consumer) (detector_consumer_lag_messages{{{SEL}}})", "{{consumer}}")],
                  unit="short",
                  description="Messages behind each partition's end, summed per consumer: ingest (client-requests), "
                              "entity-shard (entity events), flag-feed (behaviour flags)."),
            Panel("Lag per partition", [
                q(f"max by (consumer, topic, partition) (detector_consumer_lag_messages{{{SEL}}})",
                  "{{consumer}} {{topic}}[{{partition}}]")], unit="short"),
            Panel("Throughput per worker", [
                q(f"sum by (instance) (rate(detector_requests_total{{{SEL}}}[{RI}]))", "{{instance}} requests"),
                q(f"sum by (instance) (rate(detector_ingest_messages_total{{{SEL}}}[{RI}]))", "{{instance}} messages")],
                  unit="ops"),
            Panel("Rebalances in range", [q(f"sum(increase(detector_rebalances_total{{{SEL}}}[$__range]))")],
                  kind="stat", width=6, decimals=0),
            Panel("Workers up", [q('up{job=~"$job", instance=~"$instance"}', "{{instance}}")], kind="stat",
                  width=6, decimals=0, thresholds=[(None, "red"), (1, "green")]),
        ]),
        ("Latency", [
            Panel("End-to-end latency (event ts to verdict)", quantiles("detector_end_to_end_latency_seconds"),
                  unit="s"),
            Panel("Batch processing time", quantiles("detector_batch_duration_seconds"), unit="s"),
            Panel("Requests per batch", [
                q(f"""sum(rate(detector_batch_requests_sum{{{SEL}}}[{RI}]))
                  / clamp_min(sum(rate(detector_batch_requests_count{{{SEL}}}[{RI}])), 1e-9)""", "mean")]),
            Panel("Behaviour flag broadcast delay", quantiles("detector_flag_delay_seconds"), unit="s",
                  description="From a behaviour flag's publication to a worker applying it: how far a verdict can "
                              "lag behind a flag (empty until a flag is raised)."),
            Panel("Event-loop lag", quantiles("detector_event_loop_lag_seconds"), unit="s",
                  description="How much later than asked a 100 ms timer of the worker's event loop woke up: the time "
                              "a state flush, a batch or a blocking call held the loop."),
            Panel("Event-loop stalls over 50 ms", [
                q(f"""sum(rate(detector_event_loop_lag_seconds_count{{{SEL}}}[{RI}]))
                  - sum(rate(detector_event_loop_lag_seconds_bucket{{{SEL}, le="0.05"}}[{RI}]))""", "stalls/s")],
                  unit="ops", description="Samples of the event-loop lag over 50 ms, per second (0 is the goal)."),
        ]),
        ("Dead letters and webhooks", [
            Panel("Dead letters by reason", [
                q(f"sum by (reason) (rate(detector_dlq_records_total{{{SEL}}}[{RI}]))", "{{reason}}")],
                  unit="ops", stacked=True),
            Panel("Hostile input: internal errors, future requests, oversized records", [
                q(f"sum by (stage) (rate(detector_internal_errors_total{{{SEL}}}[{RI}]))", "internal error {{stage}}"),
                q(f"sum(rate(detector_future_events_total{{{SEL}}}[{RI}]))", "future requests"),
                q(f"sum by (kind) (rate(detector_oversized_records_total{{{SEL}}}[{RI}]))", "oversized {{kind}}"),
                q(f"sum(rate(detector_log_lines_suppressed_total{{{SEL}}}[{RI}]))", "log lines suppressed")],
                  unit="ops",
                  description="Internal errors: messages, requests or envelopes whose processing raised, "
                              "dead-lettered as internal_error (the worker went on). Future requests: dated more "
                              "than event_time.max_future_s ahead of their Kafka timestamp, scored but kept out of "
                              "behaviour state. Oversized: records over their topic's limit, never sent (expected 0)."),
            Panel("Webhook deliveries by endpoint and outcome", [
                q(f"sum by (endpoint, outcome) (rate(detector_webhook_deliveries_total{{{SEL}}}[{RI}]))",
                  "{{endpoint}} {{outcome}}")], unit="ops"),
            Panel("Webhook failure ratio", [
                q(f"""sum by (endpoint) (rate(detector_webhook_deliveries_total{{{SEL}, outcome!="delivered"}}[{RI}]))
                  / clamp_min(sum by (endpoint) (rate(detector_webhook_deliveries_total{{{SEL}}}[{RI}])), 1e-9)""",
                  "{{endpoint}}")], unit="percentunit",
                  description="Rejected (4xx) and failed (retries exhausted) deliveries over all, per endpoint; "
                              "both go to alerts-dlq."),
            Panel("Webhook circuit breakers", [
                q(f"max by (endpoint) (detector_webhook_breaker_state{{{SEL}}})", "{{endpoint}}")], decimals=0,
                  thresholds=[(None, "green"), (1, "orange"), (2, "red")],
                  description="Per endpoint, the worst state over the workers: 0 closed, 1 half-open (a probe), "
                              "2 open (due deliveries held back). Not closed for 2 minutes: "
                              "DetectorWebhookEndpointDown."),
            Panel("Webhook pending deliveries", [
                q(f"sum by (endpoint) (detector_webhook_pending_deliveries{{{SEL}}})", "{{endpoint}}")],
                  description="Deliveries held by the workers and not resolved yet (waiting or in flight)."),
            Panel("Webhook attempts by result", [
                q(f"sum by (endpoint, result) (rate(detector_webhook_attempts_total{{{SEL}}}[{RI}]))",
                  "{{endpoint}} {{result}}")], unit="ops", width=24,
                  description="Every attempt by result; breaker_open counts due deliveries the open circuit breaker "
                              "held back (no request made), address_refused those the address policy refused."),
        ]),
        ("State", [
            Panel("State entries", [q(f"sum by (state) (detector_state_entries{{{SEL}}})", "{{state}}")]),
            Panel("State writes and late records", [
                q(f"sum(rate(detector_state_writes_total{{{SEL}}}[{RI}]))", "changelog writes"),
                q(f"sum(rate(detector_late_records_total{{{SEL}}}[{RI}]))", "late records")], unit="ops"),
            Panel("Build", [q(f"detector_build_info{{{SEL}}}", instant=True)], kind="table", width=24, height=5),
        ]),
    ]
    return dashboard("detector-pipeline", "Detector / Pipeline health",
                     "Consumer lag, latency, dead letters, webhook failures and state of the detector workers.", rows)


DASHBOARDS: dict[str, Callable[[], dm.Dashboard]] = {
    "overview.json": overview, "fingerprints.json": fingerprints, "pipeline.json": pipeline}


def render(build: Callable[[], dm.Dashboard]) -> str:
    return json.dumps(build(), cls=JSONEncoder, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail when a committed dashboard differs from the code")
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    args = ap.parse_args(argv)
    stale = []
    args.out.mkdir(parents=True, exist_ok=True)
    for name, build in DASHBOARDS.items():
        text, path = render(build), args.out / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print(f"stale dashboards (run scripts/build_dashboards.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

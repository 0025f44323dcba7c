"""Judges every panel of the Grafana dashboards against a live Prometheus that scraped a demo.

Usage:
  check_dashboards.py --prometheus URL --destinations deploy/local/destinations.yaml \
      --flaky 425 --partitions 6 [--rate-interval 30s] DASHBOARD.json...

A query that merely returns something proves little: every series is registered at 0, so a
`rate()` of an idle counter is 0 and a quantile of an empty histogram is NaN. So every panel
has an expectation in EXPECTATIONS below (a rate above 0 per destination, a finite quantile
below the partner timeout, a series per destination or partition, or zero allowed for a stated
reason), and a panel without one fails the check. `$__rate_interval` becomes --rate-interval;
a query using `$destination` runs once per destination of the destinations file. A dashboard
without panels, a panel without queries and a query with `or vector(...)` (which draws a line
even when nothing is scraped) fail as well. Exits 1 on any failure; standard library only.
"""
import argparse
import json
import math
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field, replace

# ---- expectations -------------------------------------------------------------------------
# Judges: what every judged series must show.
RATE = "rate > 0"
RATIO = "ratio in (0, 1]"
QUANTILE = "finite quantile"
LEVEL = "a level, 0 is fine"
ZERO_OK = "0 allowed"
# Scopes: which series must exist.
PER_DESTINATION = "per destination"
PER_PARTITION = "per partition"
ONE_OR_MORE = ""


@dataclass(frozen=True)
class Expectation:
    """What a panel shows while the demo's pipeline works."""

    judge: str
    scope: str
    # Only series with these labels are judged (the others may show anything).
    labels: dict = field(default_factory=dict)
    # QUANTILE: the value must stay below the destination's partner timeout.
    below_timeout: bool = False
    # QUANTILE with below_timeout: why the flaky destinations are exempt from the bound (empty:
    # they are not); there the value need only be finite.
    flaky_unbounded: str = ""
    # PER_DESTINATION: the judge applies only to these destinations ("flaky", "oauth"); the
    # others may show zero, for the reason in `why`.
    only: str = ""
    # ZERO_OK, or the destinations outside `only`: why a healthy demo shows zero there.
    why: str = ""

    def describe(self):
        words = [self.judge]
        if self.labels:
            words.append("of " + ",".join(f'{k}="{v}"' for k, v in self.labels.items()))
        if self.below_timeout:
            words.append("below the partner timeout")
            if self.flaky_unbounded:
                words.append(f"(at the flaky destination only finite: {self.flaky_unbounded})")
        if self.only:
            return " ".join(words) + f" at the {self.only} destination; 0 allowed elsewhere: {self.why}"
        if self.scope:
            words.append(self.scope)
        return " ".join(words) + (f": {self.why}" if self.why else "")


def rate(scope=ONE_OR_MORE, **labels):
    return Expectation(RATE, scope, labels)


def quantile(scope=ONE_OR_MORE, below_timeout=False, flaky_unbounded=""):
    return Expectation(QUANTILE, scope, below_timeout=below_timeout, flaky_unbounded=flaky_unbounded)


def level(scope=ONE_OR_MORE):
    return Expectation(LEVEL, scope)


def zero_ok(why, scope=ONE_OR_MORE):
    return Expectation(ZERO_OK, scope, why=why)


DELIVERY = "segment-relay / Delivery"
QUALIFIER = "segment-relay / Qualifier"

# dashboard title -> panel title -> expectation. A panel missing here fails the check.
EXPECTATIONS = {
    DELIVERY: {
        "Delivered per second by destination": rate(PER_DESTINATION),
        "Success ratio by destination": Expectation(RATIO, PER_DESTINATION),
        "Requests by outcome": rate(PER_DESTINATION, outcome="success"),
        "End-to-end latency p50/p95/p99": quantile(
            PER_DESTINATION, below_timeout=True,
            flaky_unbounded="a batch whose retry fails too waits (backoff, an open circuit's cooldown) "
                            "and is sent again rather than dead-lettered, and that wait is part of its "
                            "changes' end-to-end latency"),
        "Request latency p50/p95/p99": quantile(PER_DESTINATION, below_timeout=True),
        # The demo feeds the real-time input only; the batch input's series show NaN.
        "Upstream latency p50/p99 by span": Expectation(QUANTILE, ONE_OR_MORE, {"input": "real_time"}),
        "Retries per second": Expectation(
            RATE, PER_DESTINATION, only="flaky",
            why="the other partners answer every request with 200, so nothing is retried"),
        "Dead-lettered per second": zero_ok(
            "a change is dead-lettered only on a permanent answer (permanent_codes) or after "
            "max_backlog_age_s; the demo's partners answer 200 or fail transiently (500, 503)",
            PER_DESTINATION),
        "Circuit open": zero_ok(
            "the circuit opens after 5 consecutive failures: never at a healthy partner, and at "
            "the flaky one only around its outage", PER_DESTINATION),
        "OAuth token requests": Expectation(
            RATE, PER_DESTINATION, {"outcome": "ok"}, only="oauth",
            why="HMAC destinations never ask for a token"),
        "Decode errors": zero_ok("the demo's qualifier writes only valid protobuf"),
        "Backlog (messages behind)": zero_ok(
            "a destination reads behind the shared consumer only once its queue is full: the demo's "
            "partners keep up, so its series stay at 0", PER_DESTINATION),
        "Backlog age (oldest waiting)": zero_ok(
            "0 while a destination keeps up, which the demo's partners do", PER_DESTINATION),
        "Backoffs per second": zero_ok(
            "a batch waits and is tried again only when its retry fails too: never at a healthy "
            "partner, and at the flaky one (20% of 20% of requests) not necessarily within the window",
            PER_DESTINATION),
        "Batch size (users) p50/p99": quantile(PER_DESTINATION),
        "Batch size (bytes) p50/p99": quantile(PER_DESTINATION),
        "Queue depth": level(PER_DESTINATION),
        "In-flight requests": level(PER_DESTINATION),
        "Queue budget": level(),
        "Consumer lag per partition": level(PER_PARTITION),
        "Committed offsets": level(PER_PARTITION),
        "Partitions revoked": level(),
    },
    QUALIFIER: {
        "Ingest rate by status code": rate(code="202"),
        "Ingest errors": zero_ok(
            "loadgen sends valid batches under the size limit while Kafka is up, so every "
            "request is accepted"),
        "Events by type and outcome": rate(type="trait", outcome="applied"),
        # A series for every partition of the input topic (the demo's one qualifier owns them
        # all), at any level: under loadgen's traffic the last statistics may show a batch
        # not yet taken.
        "Consumer lag per partition": level(PER_PARTITION),
        "Partitions revoked": level(),
        "Status changes by status and reason": rate(status="1", reason="qualified"),
        "Evaluation latency p50/p99": quantile(),
        "Users held": level(),
        "Expiry backlog": level(),
        "Restore time (average)": level(),
        "Transaction latency p50/p99": quantile(),
        "Transaction failures": zero_ok("each failure ends the process; a healthy demo has none"),
    },
}

# ---- the demo's setting -------------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    id: str
    timeout_s: float
    oauth: bool


@dataclass(frozen=True)
class Setting:
    destinations: list
    flaky: frozenset
    partitions: int
    rate_interval: str

    def selected(self, only):
        if only == "flaky":
            return [d for d in self.destinations if d.id in self.flaky]
        if only == "oauth":
            return [d for d in self.destinations if d.oauth]
        return list(self.destinations)


def read_destinations(path):
    """The destinations of a delivery config: id, partner timeout (seconds), OAuth or not.

    A reader for the shape of deploy/local/destinations.yaml (top-level `defaults:` and a
    `destinations:` list), not YAML in general: the check runs on the standard library alone.
    """
    with open(path) as f:
        text = f.read()
    sections = {}
    for match in re.finditer(r"^(\w+):[^\n]*\n((?:[ #][^\n]*\n|\n)*)", text, re.M):
        sections[match.group(1)] = match.group(2)
    default = re.search(r"^  timeout_ms:\s*(\d+)", sections.get("defaults", ""), re.M)
    items = re.split(r"^  - ", sections.get("destinations", ""), flags=re.M)[1:]
    destinations = []
    for item in items:
        ident = re.search(r"^(?:    )?id:\s*(\d+)", item, re.M)
        timeout = re.search(r"^    timeout_ms:\s*(\d+)", item, re.M) or default
        if not ident or not timeout:
            raise ValueError(f"{path}: a destination without `id` or `timeout_ms` (and no default): {item[:60]!r}")
        destinations.append(Destination(ident.group(1), int(timeout.group(1)) / 1000, "oauth2:" in item))
    if not destinations:
        raise ValueError(f"{path}: no destinations found under `destinations:`")
    return destinations


# ---- findings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    dashboard: str
    panel: str
    ok: bool
    text: str

    def __str__(self):
        where = f"{self.dashboard} / {self.panel}" if self.panel else self.dashboard
        return f"{'ok  ' if self.ok else 'FAIL'} {where}: {self.text}"


def title_of(thing, untitled):
    return thing.get("title") or untitled


def panels_of(dashboard):
    """Every panel with queries or meant to have them; rows only contribute their children."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panels_of(panel)
        else:
            yield panel


FAKE_ZERO = re.compile(r"\bor\s+(on\s*\([^)]*\)\s*)?vector\s*\(", re.I)


def structural_problems(dashboard, expectations=EXPECTATIONS):
    """What is wrong with a dashboard before any query runs (no Prometheus needed)."""
    title = title_of(dashboard, "(untitled dashboard)")
    problems = []
    panels = list(panels_of(dashboard))
    if not panels:
        problems.append(Finding(title, "", False, "the dashboard has no panels, so it shows nothing to check"))
    expected = expectations.get(title, {})
    for panel in panels:
        name = title_of(panel, "(untitled panel)")
        targets = panel.get("targets", [])
        if not targets:
            problems.append(Finding(title, name, False, "the panel has no queries, so it shows nothing"))
        for target in targets:
            expr = target.get("expr", "")
            if not expr.strip():
                problems.append(Finding(title, name, False, f"query {target.get('refId', '?')} is empty"))
            elif FAKE_ZERO.search(expr):
                problems.append(Finding(
                    title, name, False,
                    f"the query falls back to a constant (`or vector(...)`), which draws a line even "
                    f"when nothing is scraped; query only real series: {expr}"))
        if name not in expected:
            problems.append(Finding(
                title, name, False,
                f"no expectation for this panel: add an expectation for panel {name!r} to EXPECTATIONS "
                f"in deploy/check_dashboards.py (what it shows while the demo works)"))
    names = {title_of(panel, "(untitled panel)") for panel in panels}
    for name in expected:
        if name not in names:
            problems.append(Finding(
                title, name, False,
                "EXPECTATIONS names this panel but the dashboard has none by that title: fix the title or drop the expectation"))
    return problems


def substitute(expr, setting, destination=None):
    expr = expr.replace("$__rate_interval", setting.rate_interval).replace("${__rate_interval}", setting.rate_interval)
    if destination is not None:
        expr = expr.replace("${destination}", destination).replace("$destination", destination)
    return expr


def legend(target, labels):
    text = target.get("legendFormat") or ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), m.group(0)), text)


def judge_value(expectation, value, timeout_s, window):
    """None if the value shows the pipeline working, else what is wrong with it."""
    judge = expectation.judge
    if math.isnan(value):
        return f"NaN, nothing was observed in the last {window}" if judge == QUANTILE else "NaN"
    if math.isinf(value):
        return f"{value}"
    if judge == RATE and value <= 0:
        return f"0, nothing was counted in the last {window}"
    if judge == RATIO and not 0 < value <= 1:
        return f"{value:.3g}, outside (0, 1]"
    if judge == QUANTILE and expectation.below_timeout and value >= timeout_s:
        return f"{value:.3g} s, not below the partner timeout of {timeout_s:g} s"
    if judge in (LEVEL, ZERO_OK) and value < 0:
        return f"{value:.3g}, below 0"
    return None


def matches(labels, wanted):
    return all(labels.get(k) == v for k, v in wanted.items())


def judge_panel(dashboard_title, panel, expectation, evaluate, setting):
    """Runs every query of one panel and judges its series; returns one Finding for the panel."""
    problems, shown = [], []
    for target in panel["targets"]:
        raw = target["expr"]
        per_destination = "$destination" in raw or "${destination}" in raw
        if per_destination != (expectation.scope == PER_DESTINATION):
            problems.append(
                "the query filters by $destination but its expectation is not per destination" if per_destination
                else "the expectation is per destination but the query does not filter by $destination")
            continue
        left = sorted(set(re.findall(r"\$\{?\w+", substitute(raw, setting, "0"))))
        if left:
            problems.append(f"the query uses {', '.join(left)}, which the check cannot fill in (query: {raw})")
            continue
        wrong = []  # this query's problems: (problem, the series or destination it concerns)
        if per_destination:
            judged = {d.id for d in setting.selected(expectation.only)}
            if not judged:
                problems.append(f"no destination is {expectation.only} (see --flaky and the destinations file), "
                                f"so the panel's {expectation.judge} cannot be judged anywhere")
                continue
            for destination in setting.destinations:
                expect = expectation
                if destination.id not in judged:
                    expect = Expectation(ZERO_OK, PER_DESTINATION, expectation.labels, why=expectation.why)
                elif expectation.flaky_unbounded and destination.id in setting.flaky:
                    expect = replace(expectation, below_timeout=False)
                result = run(evaluate, substitute(raw, setting, destination.id), wrong, f"destination {destination.id}")
                if result is not None:
                    mine = [s for s in result if s["metric"].get("destination", destination.id) == destination.id]
                    judge_series(target, mine, expect, destination.timeout_s, setting.rate_interval,
                                 f"destination {destination.id}", wrong, shown)
        else:
            result = run(evaluate, substitute(raw, setting), wrong, "")
            if result is not None:
                if expectation.scope == PER_PARTITION:
                    wrong.extend(missing_partitions(result, setting.partitions))
                timeout = min(d.timeout_s for d in setting.destinations)
                judge_series(target, result, expectation, timeout, setting.rate_interval, "", wrong, shown)
        if wrong:
            problems.append(f"{summarize(wrong)} (query: {substitute(raw, setting)})")
    if problems:
        return Finding(dashboard_title, panel["title"], False, "; ".join(problems))
    return Finding(dashboard_title, panel["title"], True, f"{', '.join(shown)} [{expectation.describe()}]")


def judge_series(target, result, expectation, timeout_s, window, who, wrong, shown):
    series = [s for s in result if matches(s["metric"], expectation.labels)]
    if not series:
        if result:
            wanted = ",".join(f'{k}="{v}"' for k, v in expectation.labels.items())
            wrong.append((f"none of its {len(result)} series has {wanted}", who))
        else:
            wrong.append(("no series, so the panel is empty", who))
        return
    for s in series:
        value = float(s["value"][1])
        label = legend(target, s["metric"])
        problem = judge_value(expectation, value, timeout_s, window)
        if problem:
            wrong.append((problem, label))
        else:
            shown.append(f"{label} {value:.3g}")


def run(evaluate, expr, wrong, who):
    try:
        return evaluate(expr)
    except Exception as error:  # noqa: BLE001 - report it as the panel's problem and go on
        wrong.append((f"the query failed: {error}", who))
        return None


def summarize(wrong):
    """`[(problem, who)]` as one clause per problem: "423 p50, 425 p50: NaN, nothing was observed …"."""
    whos = {}
    for problem, who in wrong:
        whos.setdefault(problem, []).append(who)
    clauses = []
    for problem, names in whos.items():
        names = [name for name in names if name]
        if len(names) > 1 and all(name.startswith("destination ") for name in names):
            names = ["destinations " + ", ".join(name.split(" ", 1)[1] for name in names)]
        clauses.append(f"{', '.join(names)}: {problem}" if names else problem)
    return "; ".join(clauses)


def missing_partitions(result, partitions):
    by_topic = {}
    for s in result:
        by_topic.setdefault(s["metric"].get("topic", "?"), set()).add(s["metric"].get("partition"))
    problems = []
    for topic, seen in sorted(by_topic.items()):
        missing = [str(p) for p in range(partitions) if str(p) not in seen]
        if missing:
            problems.append((f"no series for partitions {', '.join(missing)} of {partitions}", f"topic {topic}"))
    return problems


def check(dashboards, evaluate, setting, expectations=EXPECTATIONS):
    """Every finding for the given dashboards (dicts); a panel with a structural problem is
    reported for it and not queried."""
    findings = []
    for dashboard in dashboards:
        title = title_of(dashboard, "(untitled dashboard)")
        problems = structural_problems(dashboard, expectations)
        findings.extend(problems)
        broken = {p.panel for p in problems}
        for panel in panels_of(dashboard):
            name = title_of(panel, "(untitled panel)")
            if name not in broken:
                findings.append(judge_panel(title, panel, expectations[title][name], evaluate, setting))
    return findings


# ---- Prometheus ---------------------------------------------------------------------------


def prometheus_query(prometheus):
    def evaluate(expr):
        url = prometheus + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:
            body = json.load(error)
        if body.get("status") != "success":
            raise RuntimeError(body.get("error", body))
        if body["data"]["resultType"] != "vector":
            raise RuntimeError(f"a {body['data']['resultType']} instead of an instant vector")
        return body["data"]["result"]

    return evaluate


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", required=True, help="e.g. http://127.0.0.1:9090")
    parser.add_argument("--destinations", required=True, help="delivery config: destination ids and timeouts")
    parser.add_argument("--flaky", action="append", default=[], help="a destination whose partner fails some requests (repeatable)")
    parser.add_argument("--partitions", type=int, required=True, help="partitions of each consumed topic")
    parser.add_argument("--rate-interval", default="30s", help="what $__rate_interval becomes (default 30s)")
    parser.add_argument("dashboards", nargs="+")
    args = parser.parse_args(argv)

    setting = Setting(read_destinations(args.destinations), frozenset(args.flaky), args.partitions, args.rate_interval)
    unknown = setting.flaky - {d.id for d in setting.destinations}
    if unknown:
        parser.error(f"--flaky {', '.join(sorted(unknown))}: not a destination of {args.destinations}")
    dashboards = []
    for path in args.dashboards:
        with open(path) as f:
            dashboards.append(json.load(f))
    findings = check(dashboards, prometheus_query(args.prometheus), setting)
    for finding in findings:
        print(finding)
    failed = [f for f in findings if not f.ok]
    print(f"dashboards: {len(findings) - len(failed)} of {len(findings)} panels show the pipeline working "
          f"(window {args.rate_interval}, destinations {', '.join(d.id for d in setting.destinations)})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

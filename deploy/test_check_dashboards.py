"""Known-bad cases for deploy/check_dashboards.py: its judging against canned Prometheus
answers, so it is proven to fail before it is trusted to pass. Standard library only; run by
deploy/check.sh, or alone: python3 -m unittest discover -s deploy -p test_check_dashboards.py
"""
import contextlib
import http.server
import io
import json
import os
import re
import sys
import threading
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_dashboards as cd  # noqa: E402 - after the path it lives in

HERE = os.path.dirname(os.path.abspath(__file__))
REAL_DASHBOARDS = [os.path.join(HERE, "grafana", name) for name in ("delivery.json", "qualifier.json")]
DESTINATIONS = os.path.join(HERE, "local", "destinations.yaml")

SETTING = cd.Setting(
    [cd.Destination("423", 3.0, False), cd.Destination("424", 3.0, True), cd.Destination("425", 3.0, False)],
    flaky=frozenset({"425"}), partitions=2, rate_interval="30s")

DASHBOARD = "Test / Delivery"
DELIVERED = "Delivered per second by destination"
LATENCY = "End-to-end latency p50/p99"
QUEUE = "Queue depth"
LAG = "Consumer lag per partition"
RETRIES = "Retries per second"
DEAD = "Dead-lettered per second"

EXPECTATIONS = {
    DASHBOARD: {
        DELIVERED: cd.rate(cd.PER_DESTINATION),
        LATENCY: cd.quantile(cd.PER_DESTINATION, below_timeout=True),
        QUEUE: cd.level(cd.PER_DESTINATION),
        LAG: cd.level(cd.PER_PARTITION),
        RETRIES: cd.Expectation(cd.RATE, cd.PER_DESTINATION, only="flaky", why="healthy partners answer 200"),
        DEAD: cd.zero_ok("only a failed retry dead-letters", cd.PER_DESTINATION),
    }
}


def panel(title, *exprs, legend="{{destination}}"):
    return {"type": "timeseries", "title": title,
            "targets": [{"refId": chr(65 + i), "expr": e, "legendFormat": legend} for i, e in enumerate(exprs)]}


def rate_query(selector):
    return f'sum by (destination) (rate({selector}[$__rate_interval]))'


def quantile_query(q):
    return (f"histogram_quantile({q}, sum by (le, destination) "
            f'(rate(delivery_end_to_end_latency_seconds_bucket{{destination=~"$destination"}}[$__rate_interval])))')


def dashboard(*panels):
    return {"title": DASHBOARD, "panels": [{"type": "row", "title": "Throughput", "panels": []}, *panels]}


def good_dashboard():
    return dashboard(
        panel(DELIVERED, rate_query('delivery_events_total{outcome="delivered",destination=~"$destination"}')),
        panel(LATENCY, quantile_query(0.5), quantile_query(0.99)),
        panel(QUEUE, 'sum by (destination) (delivery_queue_depth{destination=~"$destination"})'),
        panel(LAG, "sum by (topic, partition) (delivery_consumer_lag)", legend="{{topic}}/{{partition}}"),
        panel(RETRIES, rate_query('delivery_retries_total{destination=~"$destination"}')),
        panel(DEAD, rate_query('delivery_events_total{outcome="dead_lettered",destination=~"$destination"}')),
    )


def series(value, **labels):
    return {"metric": labels, "value": [1700000000.0, str(value)]}


class CannedPrometheus:
    """Answers a query from the first key (a substring) it contains: key -> f(destination)."""

    def __init__(self, **overrides):
        self.answers = {
            'outcome="delivered"': lambda d: [series(5.0, destination=d)],
            'outcome="dead_lettered"': lambda d: [series(0, destination=d)],
            "delivery_end_to_end_latency_seconds_bucket": lambda d: [series(0.4, destination=d)],
            "delivery_queue_depth": lambda d: [series(0, destination=d)],
            "delivery_consumer_lag": lambda d: [series(1, topic="t", partition="0"), series(0, topic="t", partition="1")],
            "delivery_retries_total": lambda d: [series(2.0 if d == "425" else 0, destination=d)],
        }
        self.answers.update(overrides)
        self.queries = []

    def __call__(self, expr):
        self.queries.append(expr)
        if "$" in expr:
            raise AssertionError(f"a variable reached Prometheus: {expr}")
        destination = re.search(r'destination=~"([^"]*)"', expr)
        for key, answer in self.answers.items():
            if key in expr:
                return answer(destination.group(1) if destination else None)
        return []


def failures(findings):
    return [f for f in findings if not f.ok]


class JudgingTest(unittest.TestCase):
    def check(self, board, prometheus=None, expectations=EXPECTATIONS):
        return cd.check([board], prometheus or CannedPrometheus(), SETTING, expectations)

    def assert_fails(self, findings, panel_title, *phrases):
        """Exactly one failure, naming the dashboard, the panel and the problem."""
        bad = failures(findings)
        self.assertEqual(len(bad), 1, "\n".join(map(str, findings)))
        line = str(bad[0])
        self.assertTrue(line.startswith(f"FAIL {DASHBOARD} / {panel_title}: ") if panel_title
                        else line.startswith(f"FAIL {DASHBOARD}: "), line)
        for phrase in phrases:
            self.assertIn(phrase, line)
        return line

    def test_a_working_demo_passes(self):
        prometheus = CannedPrometheus()
        findings = self.check(good_dashboard(), prometheus)
        self.assertEqual(failures(findings), [], "\n".join(map(str, findings)))
        self.assertEqual(len(findings), 6)
        for destination in ("423", "424", "425"):
            self.assertTrue(any(f'destination=~"{destination}"' in q for q in prometheus.queries))
        self.assertTrue(all("[30s]" in q for q in prometheus.queries if "rate(" in q))

    def test_all_rates_zero_fail(self):
        # Every series is registered at 0, so an idle pipeline still answers: with zeros.
        findings = self.check(good_dashboard(), CannedPrometheus(**{'outcome="delivered"': lambda d: [series(0, destination=d)]}))
        self.assert_fails(findings, DELIVERED, "423, 424, 425: 0, nothing was counted in the last 30s")

    def test_a_rate_zero_at_one_destination_fails(self):
        delivered = lambda d: [series(0 if d == "425" else 3.0, destination=d)]  # noqa: E731
        line = self.assert_fails(self.check(good_dashboard(), CannedPrometheus(**{'outcome="delivered"': delivered})),
                                 DELIVERED, "425: 0, nothing was counted")
        self.assertNotIn("423", line.split("(query")[0])

    def test_no_retries_at_the_flaky_destination_fails(self):
        findings = self.check(good_dashboard(), CannedPrometheus(delivery_retries_total=lambda d: [series(0, destination=d)]))
        line = self.assert_fails(findings, RETRIES, ": 425: 0, nothing was counted")
        self.assertNotIn("423", line.split("(query")[0])

    def test_nan_quantile_fails(self):
        nan = lambda d: [series("NaN", destination=d)]  # noqa: E731 - what an empty histogram answers
        findings = self.check(good_dashboard(), CannedPrometheus(delivery_end_to_end_latency_seconds_bucket=nan))
        self.assert_fails(findings, LATENCY, "423, 424, 425: NaN, nothing was observed in the last 30s")

    def test_quantile_at_the_partner_timeout_fails(self):
        slow = lambda d: [series(3.2, destination=d)]  # noqa: E731
        findings = self.check(good_dashboard(), CannedPrometheus(delivery_end_to_end_latency_seconds_bucket=slow))
        self.assert_fails(findings, LATENCY, "423, 424, 425: 3.2 s, not below the partner timeout of 3 s")

    def test_the_flaky_destination_may_exceed_the_timeout_only_where_exempt(self):
        exempt = {DASHBOARD: dict(EXPECTATIONS[DASHBOARD])}
        exempt[DASHBOARD][LATENCY] = cd.quantile(cd.PER_DESTINATION, below_timeout=True,
                                                 flaky_unbounded="failed retries wait")
        slow_flaky = lambda d: [series(3.2 if d == "425" else 0.4, destination=d)]  # noqa: E731
        self.assertEqual(failures(self.check(good_dashboard(), CannedPrometheus(
            delivery_end_to_end_latency_seconds_bucket=slow_flaky), exempt)), [])
        slow_healthy = lambda d: [series(3.2 if d == "423" else 0.4, destination=d)]  # noqa: E731
        findings = self.check(good_dashboard(), CannedPrometheus(
            delivery_end_to_end_latency_seconds_bucket=slow_healthy), exempt)
        self.assert_fails(findings, LATENCY, "423: 3.2 s, not below the partner timeout of 3 s")
        nan_flaky = lambda d: [series("NaN" if d == "425" else 0.4, destination=d)]  # noqa: E731
        findings = self.check(good_dashboard(), CannedPrometheus(
            delivery_end_to_end_latency_seconds_bucket=nan_flaky), exempt)
        self.assert_fails(findings, LATENCY, "425: NaN")

    def test_empty_result_fails(self):
        findings = self.check(good_dashboard(), CannedPrometheus(delivery_queue_depth=lambda d: []))
        self.assert_fails(findings, QUEUE, "destinations 423, 424, 425: no series, so the panel is empty")

    def test_a_series_of_another_destination_does_not_count(self):
        other = lambda d: [series(0, destination="999" if d == "425" else d)]  # noqa: E731
        line = self.assert_fails(self.check(good_dashboard(), CannedPrometheus(delivery_queue_depth=other)),
                                 QUEUE, ": destination 425: no series")
        self.assertNotIn("423", line.split("(query")[0])

    def test_only_failed_requests_fail(self):
        requests = "Requests by outcome"
        board = dashboard(panel(requests, 'sum by (destination, outcome) (rate(delivery_requests_total{destination=~"$destination"}[$__rate_interval]))',
                                legend="{{destination}} {{outcome}}"))
        failing = lambda d: [series(4.0, destination=d, outcome="http_status")]  # noqa: E731
        findings = self.check(board, CannedPrometheus(delivery_requests_total=failing),
                              {DASHBOARD: {requests: cd.rate(cd.PER_DESTINATION, outcome="success")}})
        self.assert_fails(findings, requests, 'destinations 423, 424, 425: none of its 1 series has outcome="success"')

    def test_a_missing_partition_fails(self):
        lag = lambda d: [series(1, topic="t", partition="0")]  # noqa: E731
        self.assert_fails(self.check(good_dashboard(), CannedPrometheus(delivery_consumer_lag=lag)),
                          LAG, "topic t: no series for partitions 1 of 2")

    def test_or_vector_zero_fails(self):
        board = good_dashboard()
        board["panels"][-1]["targets"][0]["expr"] += " or vector(0)"
        self.assert_fails(self.check(board), DEAD, "or vector(", "draws a line even when nothing is scraped")

    def test_or_on_vector_zero_fails(self):
        board = good_dashboard()
        board["panels"][-1]["targets"][0]["expr"] += " or on() vector(0)"
        self.assert_fails(self.check(board), DEAD, "or vector(")

    def test_a_dashboard_without_panels_fails(self):
        findings = self.check({"title": DASHBOARD, "panels": []}, expectations={DASHBOARD: {}})
        self.assert_fails(findings, None, "the dashboard has no panels")

    def test_a_panel_without_queries_fails(self):
        board = good_dashboard()
        board["panels"][1]["targets"] = []
        self.assert_fails(self.check(board), DELIVERED, "the panel has no queries")

    def test_a_panel_without_an_expectation_fails(self):
        board = good_dashboard()
        board["panels"].append(panel("In-flight requests", 'sum by (destination) (delivery_in_flight_requests{destination=~"$destination"})'))
        self.assert_fails(self.check(board), "In-flight requests", "add an expectation for panel 'In-flight requests'")

    def test_an_expectation_without_its_panel_fails(self):
        board = good_dashboard()
        del board["panels"][2]
        self.assert_fails(self.check(board), LATENCY, "EXPECTATIONS names this panel but the dashboard has none")

    def test_a_variable_the_check_cannot_fill_fails(self):
        board = good_dashboard()
        board["panels"][3]["targets"][0]["expr"] = 'sum by (destination) (delivery_queue_depth{destination=~"$destination"}[$__range])'
        self.assert_fails(self.check(board), QUEUE, "uses $__range")

    def test_a_rejected_query_fails(self):
        def broken(d):
            raise RuntimeError("parse error: unexpected end of input")
        self.assert_fails(self.check(good_dashboard(), CannedPrometheus(delivery_queue_depth=broken)),
                          QUEUE, "the query failed: parse error")

    def test_a_per_destination_expectation_needs_the_destination_filter(self):
        board = good_dashboard()
        board["panels"][3]["targets"][0]["expr"] = "sum by (destination) (delivery_queue_depth)"
        self.assert_fails(self.check(board), QUEUE, "does not filter by $destination")


class RealDashboardsTest(unittest.TestCase):
    """The dashboards in deploy/grafana/ against the checker's own table and a canned Prometheus."""

    def load(self):
        dashboards = []
        for path in REAL_DASHBOARDS:
            with open(path) as f:
                dashboards.append(json.load(f))
        return dashboards

    def test_every_panel_has_an_expectation_and_no_fake_zero(self):
        for board in self.load():
            self.assertEqual([str(p) for p in cd.structural_problems(board)], [])

    def test_the_demo_destinations_are_read_from_the_config(self):
        destinations = cd.read_destinations(DESTINATIONS)
        self.assertEqual([d.id for d in destinations], ["423", "424", "425"])
        self.assertEqual({d.timeout_s for d in destinations}, {3.0})
        self.assertEqual([d.id for d in destinations if d.oauth], ["424"])

    def run_main(self, answer):
        """main() against an HTTP server answering /api/v1/query with answer(query)."""

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server interface
                query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)["query"][0]
                body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": answer(query)}})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                status = cd.main(["--prometheus", f"http://127.0.0.1:{server.server_address[1]}",
                                  "--destinations", DESTINATIONS, "--flaky", "425", "--partitions", "2",
                                  *REAL_DASHBOARDS])
        finally:
            server.shutdown()
            server.server_close()
        return status, out.getvalue()

    def test_a_working_demo_passes_every_real_panel(self):
        status, out = self.run_main(healthy_answer)
        self.assertEqual(status, 0, out)
        self.assertNotIn("FAIL", out)

    def test_stopped_delivery_fails_the_delivery_panels(self):
        # What deploy/check.sh's live known-bad does: the workers are gone, their series too.
        status, out = self.run_main(lambda q: [] if "delivery_" in q else healthy_answer(q))
        self.assertEqual(status, 1, out)
        self.assertIn("FAIL segment-relay / Delivery / Delivered per second by destination: destinations 423, 424, 425: no series", out)
        # Panels where 0 is fine still need their series: a 0 that nothing scraped proves nothing.
        for title in ("Backlog (messages behind)", "Backlog age (oldest waiting)", "Backoffs per second"):
            self.assertIn(f"FAIL segment-relay / Delivery / {title}: destinations 423, 424, 425: no series", out)
        self.assertNotIn("FAIL segment-relay / Qualifier", out)

    def test_a_qualifier_partition_without_lag_fails(self):
        # One of two qualifiers not scraped (or not reporting): its partitions' lag is missing.
        def answer(query):
            found = healthy_answer(query)
            if "qualifier_consumer_lag_messages" in query:
                return [s for s in found if s["metric"]["partition"] != "1"]
            return found

        status, out = self.run_main(answer)
        self.assertEqual(status, 1, out)
        self.assertIn("FAIL segment-relay / Qualifier / Consumer lag per partition: topic t: "
                      "no series for partitions 1 of 2", out)
        self.assertEqual(out.count("FAIL"), 1, out)

    def test_the_upstream_latency_is_judged_on_the_real_time_input_alone(self):
        # The demo feeds no batch input: its quantiles are NaN, the real-time input's must not be.
        def answer(real_time):
            def respond(query):
                if "delivery_upstream_latency_seconds" not in query:
                    return healthy_answer(query)
                return [series(real_time, input="real_time", span="change_to_read"),
                        series("NaN", input="batch", span="change_to_read")]
            return respond

        status, out = self.run_main(answer(0.2))
        self.assertEqual(status, 0, out)
        status, out = self.run_main(answer("NaN"))
        self.assertEqual(status, 1, out)
        self.assertIn("FAIL segment-relay / Delivery / Upstream latency p50/p99 by span: "
                      "real_time change_to_read p50: NaN, nothing was observed", out)
        self.assertEqual(out.count("FAIL"), 1, out)


def healthy_answer(query):
    """What a working demo answers to any panel query of the real dashboards."""
    destination = re.search(r'destination=~"(\d+)"', query)
    grouping = re.findall(r"by \(([^)]*)\)", query)
    names = [name.strip() for name in grouping[-1].split(",")] if grouping else []
    outcome = "ok" if "oauth" in query else "applied" if "qualifier_events" in query else "success"
    known = {"destination": destination.group(1) if destination else None, "outcome": outcome, "code": "202",
             "type": "trait", "status": "1", "reason": "qualified", "instance": "127.0.0.1:19101",
             "input": "real_time", "span": "change_to_read"}
    metric = {name: known[name] for name in names if name in known}
    value = 0.2 if "histogram_quantile" in query else 0.95 if " / " in query else 1.0
    if "partition" in names:
        return [series(value, topic="t", partition=str(p), **metric) for p in range(2)]
    return [series(value, **metric)]


if __name__ == "__main__":
    unittest.main()

"""Evaluates every panel query of the Grafana dashboards against a live Prometheus.

Usage: check_dashboards.py PROMETHEUS_URL DESTINATION DASHBOARD.json...

`$destination` becomes DESTINATION, `$__rate_interval` becomes 1m. A query that returns no
series fails the check, naming the dashboard and the panel. Standard library only.
"""
import json
import sys
import urllib.parse
import urllib.request


def query(prometheus, expr):
    url = prometheus + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise RuntimeError(f"query failed: {body}")
    return body["data"]["result"]


def main():
    prometheus, destination, *dashboards = sys.argv[1:]
    failures = 0
    checked = 0
    for path in dashboards:
        with open(path) as f:
            dashboard = json.load(f)
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"].replace("$destination", destination).replace("$__rate_interval", "1m")
                checked += 1
                try:
                    result = query(prometheus, expr)
                except Exception as error:  # noqa: BLE001 - report and go on
                    print(f"FAIL {dashboard['title']} / {panel['title']}: {error}")
                    failures += 1
                    continue
                if not result:
                    print(f"FAIL {dashboard['title']} / {panel['title']}: no data for {expr}")
                    failures += 1
                else:
                    print(f"ok   {dashboard['title']} / {panel['title']} ({len(result)} series)")
    print(f"dashboards: {checked - failures} of {checked} panel queries returned data")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

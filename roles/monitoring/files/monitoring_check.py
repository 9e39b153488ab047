#!/usr/bin/python3
# multinotes-monitoring-check: installed as it is by the monitoring role on each monitoring
# host; the launch check runs it there (read-only: it asks Prometheus and Alertmanager).
"""Ask the running Prometheus and Alertmanager what the launch checklist's monitoring lines
claim, instead of trusting the configuration files.

  targets --job JOB ...     every expected job is scraped and every active target is up
  alerts --rule NAME[OP VALUE][@SECONDS] ... [--route]
                            each rule is loaded and healthy, its expression compares with
                            OP VALUE (e.g. 'HighCpu>80', 'DiskSpaceLow<20') and it fires
                            after SECONDS (its `for`, e.g. 'RollbackErrorRate>10@300');
                            --route: an Alertmanager is attached and sends to a receiver

It prints one line per finding (the evidence) and exits 0 when all hold, 1 when one does
not, 2 on bad arguments. Where to ask: --config (JSON {"prometheus_url", "alertmanager_url"},
written by the monitoring role), or --prometheus-url / --alertmanager-url.
"""

import argparse
import json
import re
import sys
import urllib.error
import urllib.request

CONFIG = "/etc/prometheus/multinotes-check.json"
RULE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:(>=|<=|>|<|==)(-?[0-9]+(?:\.[0-9]+)?))?(?:@([0-9]+))?$")
# Alertmanager's receiver kinds that notify someone (its configuration as Alertmanager read it).
NOTIFIERS = re.compile(r"^\s*-?\s*(webhook|email|slack|pagerduty|opsgenie|telegram|victorops|pushover|sns|msteams|discord|webex|wechat)_configs:",
                       re.M)


class CheckError(Exception):
    pass


def get_json(url, timeout=10):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise CheckError(f"{url}: {exc}") from None


def prometheus_data(base, path):
    body = get_json(base.rstrip("/") + path)
    if body.get("status") != "success":
        raise CheckError(f"{base}{path}: status {body.get('status')!r}: {body.get('error', '')}")
    return body["data"]


def check_targets(prometheus, jobs):
    """(lines, ok): each expected job present with its targets up, no active target down."""
    targets = prometheus_data(prometheus, "/api/v1/targets?state=active")["activeTargets"]
    by_job = {}
    for target in targets:
        by_job.setdefault(target["labels"].get("job", "?"), []).append(target)
    lines, ok = [], True
    for job in sorted(set(jobs) | set(by_job)):
        found = by_job.get(job, [])
        if not found:
            lines.append(f"MISSING job {job}: Prometheus scrapes nothing for it")
            ok = False
            continue
        up = [t for t in found if t.get("health") == "up"]
        names = ", ".join(sorted(t["labels"].get("instance", "?") for t in found))
        lines.append(f"{job}: {len(up)} of {len(found)} up ({names})")
        for target in found:
            if target.get("health") != "up":
                ok = False
                lines.append(f"DOWN {job} {target['labels'].get('instance', '?')}: "
                             f"{target.get('health')}, {target.get('lastError') or 'no error given'}")
    return lines, ok


def parse_rule(text):
    m = RULE.match(text.replace(" ", ""))
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: a rule is NAME[<op><number>][@seconds], e.g. HighCpu>80 or RollbackErrorRate>10@300")
    name, op, value, seconds = m.groups()
    return name, op, value, None if seconds is None else int(seconds)


def compares(query, op, value):
    """Whether the rule's expression compares with OP VALUE (80 and 80.0 alike)."""
    for found_op, number in re.findall(r"(>=|<=|>|<|==)\s*(-?[0-9]+(?:\.[0-9]+)?)", query):
        if found_op == op and float(number) == float(value):
            return True
    return False


def check_alerts(prometheus, alertmanager, rules, route):
    loaded = {}
    for group in prometheus_data(prometheus, "/api/v1/rules?type=alert")["groups"]:
        for rule in group["rules"]:
            loaded[rule["name"]] = rule
    lines, ok = [], True
    for name, op, value, seconds in rules:
        rule = loaded.get(name)
        if rule is None:
            lines.append(f"MISSING alert rule {name}: not loaded by Prometheus")
            ok = False
            continue
        query = " ".join(rule.get("query", "").split())
        problems = []
        if rule.get("health") != "ok":
            problems.append(f"health {rule.get('health')!r}: {rule.get('lastError', '')}")
        if op and not compares(query, op, value):
            problems.append(f"does not compare {op} {value}")
        if seconds is not None and float(rule.get("duration", 0)) != seconds:
            problems.append(f"fires after {rule.get('duration', 0)} s, not {seconds} s")
        ok = ok and not problems
        lines.append(f"{'WRONG ' if problems else ''}{name}: {query} (for {rule.get('duration', 0)} s)"
                     + ("; " + "; ".join(problems) if problems else ""))
    if route:
        attached = prometheus_data(prometheus, "/api/v1/alertmanagers")["activeAlertmanagers"]
        config = get_json(alertmanager.rstrip("/") + "/api/v2/status").get("config", {}).get("original", "")
        kinds = sorted(set(NOTIFIERS.findall(config)))
        if not attached:
            ok = False
            lines.append("NO ROUTE: Prometheus has no active Alertmanager")
        elif not kinds:
            ok = False
            lines.append("NO ROUTE: Alertmanager's receivers notify no one (no webhook, email, ... configs)")
        else:
            lines.append(f"route: Prometheus -> {', '.join(a['url'] for a in attached)} -> {', '.join(kinds)} receivers")
    return lines, ok


def main(argv=None):
    parser = argparse.ArgumentParser(prog="multinotes-monitoring-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=CONFIG, help=f"JSON with prometheus_url and alertmanager_url ({CONFIG})")
    parser.add_argument("--prometheus-url")
    parser.add_argument("--alertmanager-url")
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("targets")
    t.add_argument("--job", action="append", default=[], help="a job that must be scraped (repeat)")
    a = sub.add_parser("alerts")
    a.add_argument("--rule", action="append", default=[], type=parse_rule, help="NAME or NAME<op><number> (repeat)")
    a.add_argument("--route", action="store_true", help="an Alertmanager is attached and notifies someone")
    args = parser.parse_args(argv)
    if args.cmd == "alerts" and not (args.rule or args.route):
        parser.error("alerts: name at least one --rule, or --route")
    urls = {"prometheus_url": args.prometheus_url, "alertmanager_url": args.alertmanager_url}
    if not all(urls.values()):
        try:
            with open(args.config, encoding="utf-8") as handle:
                configured = json.load(handle)
        except (OSError, ValueError) as exc:
            print(f"cannot read {args.config}: {exc}")
            return 1
        urls = {key: value or configured.get(key) for key, value in urls.items()}
    try:
        if args.cmd == "targets":
            lines, ok = check_targets(urls["prometheus_url"], args.job)
        else:
            lines, ok = check_alerts(urls["prometheus_url"], urls["alertmanager_url"], args.rule, args.route)
    except CheckError as exc:
        print(f"cannot ask: {exc}")
        return 1
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

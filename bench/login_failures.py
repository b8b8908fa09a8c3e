#!/usr/bin/env python3
"""Latency of the two failed-login kinds against a running Keyledger (standard library only).

    login_failures.py BASE_URL

A wrong password for an existing account and an unknown email must answer alike: same
body (checked here) and, as far as a client can measure, the same time. This script
measures both and prints their latency distributions side by side, and how far apart
they are.

How it measures, so that the two kinds see the same conditions:
  * one keep-alive connection, one request at a time (no queueing inside the server);
  * the two kinds interleaved in a random order, so a change of machine load during the
    run (other processes, the projector catching up) falls on both alike;
  * a warm-up of WARMUP requests of each kind first, not counted;
  * the lockout is kept out of the way without changing the server: each account takes
    at most LOCKOUT_MAX_FAILURES - 1 wrong passwords, and each unknown email is used
    once, so every answer is a plain 401 after a password check (a 429 stops the run).

The server needs the rate limit off or high enough (KEYLEDGER_RATE_LIMIT_PER_SECOND=0):
a 429 `rate_limited` stops the run. bench/login_failures.sh starts such a server.

Knobs (environment):
  SAMPLES=400               measured requests of each kind
  WARMUP=30                 unmeasured requests of each kind first
  LOCKOUT_MAX_FAILURES=5    the server's KEYLEDGER_LOCKOUT_MAX_FAILURES
  BENCH_PASSWORD            the accounts' password (a fixed strong one by default)
  BENCH_RUN_ID              distinguishes this run's accounts (random by default)

Output: a table (milliseconds) of min, p10, p25, p50, p75, p90, p99, max, mean and
standard deviation per kind; the differences of the means and medians; and the
Kolmogorov-Smirnov distance between the two distributions with its 5 % critical value
(a distance below it: no difference this many samples can show).
"""

import http.client
import json
import math
import os
import random
import statistics
import sys
import time
import urllib.parse
import uuid

SAMPLES = int(os.environ.get("SAMPLES", "400"))
WARMUP = int(os.environ.get("WARMUP", "30"))
MAX_FAILURES = int(os.environ.get("LOCKOUT_MAX_FAILURES", "5"))
PASSWORD = os.environ.get("BENCH_PASSWORD") or "bench-Quartz-lantern-9-orbit-Mosaic"
WRONG = "not-the-password-at-all-42"
RUN = os.environ.get("BENCH_RUN_ID") or uuid.uuid4().hex[:10]


def die(message):
    print(f"login_failures: {message}", file=sys.stderr)
    sys.exit(1)


class Client:
    def __init__(self, base):
        url = urllib.parse.urlsplit(base)
        self.host, self.port = url.hostname, url.port or 80
        self.conn = None

    def post(self, path, body):
        payload = json.dumps(body)
        headers = {"Content-Type": "application/json"}
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
                self.conn.connect()
            try:
                start = time.perf_counter()
                self.conn.request("POST", path, payload, headers)
                resp = self.conn.getresponse()
                data = resp.read()
                elapsed = time.perf_counter() - start
                return resp.status, (json.loads(data) if data else {}), elapsed
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def ks_distance(a, b):
    """Largest gap between the two empirical distribution functions."""
    a, b = sorted(a), sorted(b)
    i = j = 0
    d = 0.0
    while i < len(a) and j < len(b):
        x = min(a[i], b[j])
        while i < len(a) and a[i] <= x:
            i += 1
        while j < len(b) and b[j] <= x:
            j += 1
        d = max(d, abs(i / len(a) - j / len(b)))
    return d


def main():
    if len(sys.argv) != 2:
        die("usage: login_failures.py BASE_URL")
    client = Client(sys.argv[1])
    per_account = max(1, MAX_FAILURES - 1)
    total = SAMPLES + WARMUP
    accounts = [f"bench-fail-{RUN}-{i}@example.com" for i in range(math.ceil(total / per_account))]
    print(f"registering {len(accounts)} accounts ({per_account} wrong passwords each)", file=sys.stderr)
    for email in accounts:
        status, body, _ = client.post("/v1/auth/register", {"email": email, "password": PASSWORD})
        if status != 201:
            die(f"register {email}: {status} {body}")

    wrong = [accounts[i // per_account] for i in range(total)]
    unknown = [f"bench-nobody-{RUN}-{i}@example.com" for i in range(total)]
    plan = [("wrong_password", e) for e in wrong] + [("unknown_email", e) for e in unknown]
    warmup = [p for p in plan[:WARMUP]] + [p for p in plan[total:total + WARMUP]]
    measured = plan[WARMUP:total] + plan[total + WARMUP:]
    random.shuffle(warmup)
    random.shuffle(measured)

    times = {"wrong_password": [], "unknown_email": []}
    bodies = {}
    for index, (kind, email) in enumerate(warmup + measured):
        status, body, elapsed = client.post("/v1/auth/login", {"email": email, "password": WRONG})
        if status != 401:
            die(f"{kind} login of {email}: {status} {body} (rate limit or lockout in the way?)")
        bodies.setdefault(kind, body)
        if index >= len(warmup):
            times[kind].append(elapsed * 1000)
    if bodies["wrong_password"] != bodies["unknown_email"]:
        die(f"the answers differ: {bodies}")

    rows = [("min", 0), ("p10", 10), ("p25", 25), ("p50", 50), ("p75", 75), ("p90", 90), ("p99", 99), ("max", 100)]
    kinds = ["wrong_password", "unknown_email"]
    stats = {k: sorted(times[k]) for k in kinds}
    print(f"\nfailed-login latency, ms ({SAMPLES} of each, interleaved; same 401 body)")
    print(f"{'':<8}{'wrong password':>16}{'unknown email':>16}{'difference':>12}")
    for name, p in rows:
        a, b = percentile(stats[kinds[0]], p), percentile(stats[kinds[1]], p)
        print(f"{name:<8}{a:>16.2f}{b:>16.2f}{a - b:>+12.2f}")
    means = [statistics.fmean(times[k]) for k in kinds]
    sds = [statistics.stdev(times[k]) for k in kinds]
    print(f"{'mean':<8}{means[0]:>16.2f}{means[1]:>16.2f}{means[0] - means[1]:>+12.2f}")
    print(f"{'stdev':<8}{sds[0]:>16.2f}{sds[1]:>16.2f}")
    d = ks_distance(times[kinds[0]], times[kinds[1]])
    n, m = len(times[kinds[0]]), len(times[kinds[1]])
    critical = 1.358 * math.sqrt((n + m) / (n * m))
    verdict = "no difference shown" if d < critical else "the distributions differ"
    print(f"Kolmogorov-Smirnov distance {d:.3f} (5 % critical value {critical:.3f}): {verdict}")


if __name__ == "__main__":
    main()

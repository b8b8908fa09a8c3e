#!/usr/bin/env python3
"""Do the mail routes answer known and unknown addresses in the same time? (standard library only)

    email_timing.py BASE_URL

Two routes name an address, and neither may tell whether it has an account:
  * POST /v1/auth/forgot-password for an address with an account vs one without
    (answered 202 before the address is looked up; the work follows in the background);
  * POST /v1/auth/register for a taken address vs a new one, with verification on
    (202 either way, answered once the input is checked; the account work follows in
    the background since c8d6350, so the set-up waits for the accounts' mails).
This script measures both pairs and prints each pair's latency distributions side by
side, and how far apart they are. It checks that the answers (status and body) are the
same within each pair.

How it measures, so that both kinds of a pair see the same conditions:
  * one keep-alive connection, one request at a time;
  * the kinds of a pair interleaved in a random order (so a change of machine load,
    or background work left by an earlier request, falls on both alike);
  * a warm-up of WARMUP requests of each kind first, not counted;
  * every known address is used once per route, so no per-account mail interval
    (KEYLEDGER_MAIL_INTERVAL_SECS) skips work for it; every unknown or new address
    once overall.

The server needs verification on (KEYLEDGER_EMAIL_VERIFICATION=optional) and the rate
limits off (KEYLEDGER_RATE_LIMIT_PER_SECOND=0, KEYLEDGER_RATE_LIMIT_ACCOUNT_PER_MINUTE=0):
a 429 stops the run. bench/email_timing.sh starts such a server.

Knobs (environment):
  SAMPLES=400               measured requests of each kind
  WARMUP=30                 unmeasured requests of each kind first
  BENCH_PASSWORD            the password used throughout (a fixed strong one by default)
  BENCH_RUN_ID              distinguishes this run's addresses (random by default)
  BENCH_OUTBOX              the server's outbox directory (bench/email_timing.sh sets it):
                            wait for the set-up's and the measured requests' mails there
  BENCH_MAIL_WAIT=300       seconds to wait for them before giving up

Output per pair: a table (milliseconds) of min, p10, p25, p50, p75, p90, p99, max, mean
and standard deviation per kind and their differences; the Kolmogorov-Smirnov distance
with its 5 % critical value, and the Mann-Whitney U test (normal approximation): the
probability that a request of the first kind takes longer than one of the second
(0.5 = no tendency either way) and its two-sided p-value.
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
PASSWORD = os.environ.get("BENCH_PASSWORD") or "bench-Quartz-lantern-9-orbit-Mosaic"
RUN = os.environ.get("BENCH_RUN_ID") or uuid.uuid4().hex[:10]


def die(message):
    print(f"email_timing: {message}", file=sys.stderr)
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


def mann_whitney(a, b):
    """U of `a` over `b`, as P(a > b) + P(a = b) / 2, and the two-sided p-value
    (normal approximation with tie correction)."""
    n, m = len(a), len(b)
    ranked = sorted([(x, 0) for x in a] + [(y, 1) for y in b])
    ranks = [0.0] * len(ranked)
    ties = 0.0
    i = 0
    while i < len(ranked):
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        t = j - i + 1
        ties += t**3 - t
        i = j + 1
    rank_sum = sum(r for r, (_, group) in zip(ranks, ranked) if group == 0)
    u = rank_sum - n * (n + 1) / 2
    mean = n * m / 2
    var = n * m / 12 * ((n + m + 1) - ties / ((n + m) * (n + m - 1)))
    z = (u - mean) / math.sqrt(var) if var > 0 else 0.0
    p = math.erfc(abs(z) / math.sqrt(2))
    return u / (n * m), p


def measure(client, route, kinds, body_of, expected_status):
    """Interleaves the requests of two kinds (each a list of addresses, WARMUP first)."""
    plans = {kind: [(kind, email) for email in addresses] for kind, addresses in kinds.items()}
    warmup = [p for kind in kinds for p in plans[kind][:WARMUP]]
    measured = [p for kind in kinds for p in plans[kind][WARMUP:]]
    random.shuffle(warmup)
    random.shuffle(measured)
    times = {kind: [] for kind in kinds}
    answers = {}
    for index, (kind, email) in enumerate(warmup + measured):
        status, body, elapsed = client.post(route, body_of(email))
        if status != expected_status:
            die(f"{route} ({kind}) {email}: {status} {body} (rate limit in the way? verification off?)")
        answers.setdefault(kind, (status, body))
        if index >= len(warmup):
            times[kind].append(elapsed * 1000)
    first, second = kinds
    if answers[first] != answers[second]:
        die(f"{route}: the answers differ: {answers}")
    return times


def report(title, times):
    kinds = list(times)
    rows = [("min", 0), ("p10", 10), ("p25", 25), ("p50", 50), ("p75", 75), ("p90", 90), ("p99", 99), ("max", 100)]
    stats = {k: sorted(times[k]) for k in kinds}
    print(f"\n{title}, ms ({len(times[kinds[0]])} of each, interleaved; same answer)")
    print(f"{'':<8}{kinds[0]:>16}{kinds[1]:>16}{'difference':>12}")
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
    share, p = mann_whitney(times[kinds[0]], times[kinds[1]])
    verdict = "no difference shown" if p >= 0.05 else "one kind tends to be slower"
    print(f"Mann-Whitney: P({kinds[0]} slower) = {share:.3f}, two-sided p = {p:.3f}: {verdict}")


def wait_for_mails(count, what):
    """With BENCH_OUTBOX set (bench/email_timing.sh sets it), waits until the outbox
    holds COUNT mail files: the work after the answers is done."""
    outbox = os.environ.get("BENCH_OUTBOX")
    if not outbox:
        return
    deadline = time.monotonic() + float(os.environ.get("BENCH_MAIL_WAIT", "300"))
    while True:
        written = sum(
            name.endswith(".eml") for _, _, names in os.walk(outbox) for name in names
        )
        if written >= count:
            print(f"{written} mails written ({what})", file=sys.stderr)
            return
        if time.monotonic() > deadline:
            die(f"only {written} of {count} mails after waiting ({what}): work after the answer failed? see the server log")
        time.sleep(0.5)


def main():
    if len(sys.argv) != 2:
        die("usage: email_timing.py BASE_URL")
    client = Client(sys.argv[1])
    total = SAMPLES + WARMUP
    known = [f"bench-mail-{RUN}-{i}@example.com" for i in range(total)]
    print(f"creating {len(known)} accounts", file=sys.stderr)
    for email in known:
        status, body, _ = client.post("/v1/auth/register", {"email": email, "password": PASSWORD})
        if status != 202:
            die(f"register {email}: {status} {body} (KEYLEDGER_EMAIL_VERIFICATION must be on)")
    # Registration answers before the account work (c8d6350): the known addresses have
    # accounts only once their verification mails are written.
    wait_for_mails(len(known), "the accounts' verification mails")

    print("measuring forgot-password", file=sys.stderr)
    forgot = measure(
        client,
        "/v1/auth/forgot-password",
        {
            "known": known,
            "unknown": [f"bench-nobody-{RUN}-{i}@example.com" for i in range(total)],
        },
        lambda email: {"email": email},
        202,
    )
    print("measuring register", file=sys.stderr)
    register = measure(
        client,
        "/v1/auth/register",
        {
            "taken": known,
            "new": [f"bench-new-{RUN}-{i}@example.com" for i in range(total)],
        },
        lambda email: {"email": email, "password": PASSWORD},
        202,
    )
    # Each measured request's work follows its answer: wait for it (a reset link per
    # known address, a "someone tried to register" and a verification per pair).
    wait_for_mails(4 * total, "the measured requests' mails")
    report("POST /v1/auth/forgot-password latency", forgot)
    report("POST /v1/auth/register latency (verification on)", register)


if __name__ == "__main__":
    main()

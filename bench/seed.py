#!/usr/bin/env python3
"""Seeds a running Keyledger for bench/run.sh (standard library only).

    seed.py BASE_URL register COUNT USERS_FILE      # accounts bench-user-<i>@...
    seed.py BASE_URL login COUNT USERS_FILE OUT     # COUNT sessions: refresh tokens to OUT
    seed.py BASE_URL access USERS_FILE OUT          # one access token to OUT
    seed.py BASE_URL active TOKEN_FILE              # exit 0 iff the token validates as active

The password of every account is BENCH_PASSWORD (run.sh sets it). Requests run on
a few threads, each with its own keep-alive connection; any unexpected answer stops
the script with the server's reply.
"""

import http.client
import json
import os
import sys
import threading
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

WORKERS = int(os.environ.get("BENCH_SEED_WORKERS", "4"))
PASSWORD = os.environ.get("BENCH_PASSWORD", "")
_local = threading.local()


def connection(base):
    conn = getattr(_local, "conn", None)
    if conn is None:
        url = urllib.parse.urlsplit(base)
        conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=60)
        _local.conn = conn
    return conn


def post(base, path, body):
    for attempt in range(2):
        conn = connection(base)
        try:
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, json.loads(data) if data else {}
        except (http.client.HTTPException, ConnectionError):
            conn.close()
            _local.conn = None
            if attempt:
                raise


def fail(what, status, body):
    sys.exit(f"seed: {what}: HTTP {status}: {json.dumps(body)}")


def email(i):
    return f"bench-user-{i}@bench.keyledger.test"


def register(base, count, users_file):
    def one(i):
        status, body = post(base, "/v1/auth/register", {"email": email(i), "password": PASSWORD})
        if status != 201:
            fail(f"register {email(i)}", status, body)
        return email(i)

    with ThreadPoolExecutor(WORKERS) as pool:
        emails = list(pool.map(one, range(count)))
    with open(users_file, "w") as f:
        f.write("\n".join(emails) + "\n")


def login(base, user):
    status, body = post(base, "/v1/auth/login", {"email": user, "password": PASSWORD})
    if status != 200:
        fail(f"login {user}", status, body)
    return body


def users(users_file):
    with open(users_file) as f:
        return [line.strip() for line in f if line.strip()]


def sessions(base, count, users_file, out):
    accounts = users(users_file)
    with ThreadPoolExecutor(WORKERS) as pool:
        answers = list(pool.map(lambda i: login(base, accounts[i % len(accounts)]), range(count)))
    with open(out, "w") as f:
        f.write("\n".join(a["refresh_token"] for a in answers) + "\n")


def access(base, users_file, out):
    with open(out, "w") as f:
        f.write(login(base, users(users_file)[0])["access_token"] + "\n")


def active(base, token_file):
    with open(token_file) as f:
        token = f.read().strip()
    status, body = post(base, "/v1/auth/validate", {"token": token})
    if status != 200 or body.get("active") is not True:
        fail("validate", status, body)


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    base, command, args = argv[1].rstrip("/"), argv[2], argv[3:]
    if command in ("register", "login") and not PASSWORD:
        sys.exit("seed: set BENCH_PASSWORD")
    if command == "register" and len(args) == 2:
        register(base, int(args[0]), args[1])
    elif command == "login" and len(args) == 3:
        sessions(base, int(args[0]), args[1], args[2])
    elif command == "access" and len(args) == 2:
        access(base, args[0], args[1])
    elif command == "active" and len(args) == 1:
        active(base, args[0])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)

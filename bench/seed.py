#!/usr/bin/env python3
"""Seeds a running Keyledger for bench/run.sh (standard library only).

    seed.py BASE_URL register COUNT USERS_FILE      # accounts bench-user-<i>@...
    seed.py BASE_URL login COUNT USERS_FILE OUT     # COUNT sessions: refresh tokens to OUT
    seed.py BASE_URL refresh ROUNDS TOKENS_FILE     # ROUNDS refreshes of each session in
                                                    # TOKENS_FILE, chaining the rotated tokens
    seed.py BASE_URL access USERS_FILE OUT          # one access token to OUT
    seed.py BASE_URL accesses N USERS_FILE OUT      # N live access tokens of one session to OUT
    seed.py BASE_URL active TOKEN_FILE              # exit 0 iff the token validates as active
    seed.py BASE_URL authz USERS_FILE OUT           # an organization with every account in it;
                                                    # OUT: a member's access token, the org id
    seed.py BASE_URL allowed AUTHZ_FILE             # exit 0 iff authorize says allowed

The password of every account is BENCH_PASSWORD (run.sh sets it). Requests run on
a few threads, each with its own keep-alive connection; any unexpected answer stops
the script with the server's reply.
"""

import http.client
import json
import time
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


def post(base, path, body, token=None, method="POST"):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    for attempt in range(2):
        conn = connection(base)
        try:
            payload = None if body is None else json.dumps(body)
            conn.request(method, path, payload, headers)
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


def refresh(base, rounds, tokens_file):
    with open(tokens_file) as f:
        tokens = [line.strip() for line in f if line.strip()]

    def chain(token):
        for _ in range(rounds):
            status, body = post(base, "/v1/auth/refresh", {"refresh_token": token})
            if status != 200:
                fail("refresh", status, body)
            token = body["refresh_token"]

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(chain, tokens))


def access(base, users_file, out):
    with open(out, "w") as f:
        f.write(login(base, users(users_file)[0])["access_token"] + "\n")


def accesses(base, count, users_file, out):
    """`count` distinct live access tokens, as a gateway sees them: one login, then
    a chain of refreshes, each answer's access token kept (a rotation does not end
    the earlier access tokens of the session)."""
    answer = login(base, users(users_file)[0])
    tokens, refresh_token = [answer["access_token"]], answer["refresh_token"]
    while len(tokens) < count:
        status, body = post(base, "/v1/auth/refresh", {"refresh_token": refresh_token})
        if status != 200:
            fail("refresh", status, body)
        tokens.append(body["access_token"])
        refresh_token = body["refresh_token"]
    with open(out, "w") as f:
        f.write("\n".join(tokens) + "\n")


def active(base, token_file):
    with open(token_file) as f:
        token = f.read().strip()
    status, body = post(base, "/v1/auth/validate", {"token": token})
    if status != 200 or body.get("active") is not True:
        fail("validate", status, body)


AUTHZ_PERMISSION = "invoices:read"


def authz(base, users_file, out):
    """A realistic organization: every seeded account a member (invited and accepted), eight custom roles of
    twelve permissions each, the subject holding two of them (the permission asked
    for is granted through a wildcard of the second)."""
    accounts = users(users_file)
    owner = login(base, accounts[0])["access_token"]
    status, org = post(base, "/v1/organizations", {"slug": "bench-org", "name": "Bench"}, owner)
    if status != 201:
        fail("create organization", status, org)
    org_id = org["organization_id"]
    roles = []
    for r in range(8):
        permissions = [f"resource{r}x{p}:read" for p in range(11)]
        permissions.append("invoices:*" if r == 7 else f"reports{r}:write")
        status, role = post(
            base, f"/v1/organizations/{org_id}/roles", {"name": f"role-{r}", "permissions": permissions}, owner
        )
        if status != 201:
            fail("define role", status, role)
        roles.append(role["role_id"])

    def member(i):
        session = login(base, accounts[i])
        status, me = post(base, "/v1/auth/me", None, session["access_token"], method="GET")
        if status != 200:
            fail("me", status, me)
        grant = ["member", roles[i % 7]] + ([roles[7]] if i == 1 else [])
        # Members join by invitation only: the owner invites, the account accepts.
        # Concurrent invitations change one organization: a 409 asks to try
        # again.
        for attempt in range(5):
            status, invitation = post(
                base, f"/v1/organizations/{org_id}/invitations", {"user_id": me["user_id"], "roles": grant}, owner
            )
            if status != 409:
                break
            time.sleep(0.05 * (attempt + 1))
        if status != 201:
            fail("invite member", status, invitation)
        accept = f"/v1/users/me/invitations/{invitation['invitation_id']}/accept"
        for attempt in range(5):
            status, body = post(base, accept, None, session["access_token"])
            if status != 409:
                break
            time.sleep(0.05 * (attempt + 1))
        if status != 200:
            fail("accept invitation", status, body)
        return session["access_token"]

    with ThreadPoolExecutor(WORKERS) as pool:
        tokens = list(pool.map(member, range(1, len(accounts))))
    with open(out, "w") as f:
        f.write(f"{tokens[0]}\n{org_id}\n{AUTHZ_PERMISSION}\n")


def allowed(base, authz_file):
    with open(authz_file) as f:
        token, org_id, permission = f.read().split()
    body = {"token": token, "organization_id": org_id, "permission": permission}
    status, answer = post(base, "/v1/auth/authorize", body)
    if status != 200 or answer.get("allowed") is not True:
        fail("authorize", status, answer)


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
    elif command == "refresh" and len(args) == 2:
        refresh(base, int(args[0]), args[1])
    elif command == "access" and len(args) == 2:
        access(base, args[0], args[1])
    elif command == "accesses" and len(args) == 3:
        accesses(base, int(args[0]), args[1], args[2])
    elif command == "active" and len(args) == 1:
        active(base, args[0])
    elif command == "authz" and len(args) == 2:
        authz(base, args[0], args[1])
    elif command == "allowed" and len(args) == 1:
        allowed(base, args[0])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)

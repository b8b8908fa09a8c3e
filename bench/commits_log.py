#!/usr/bin/env python3
"""Where a phase's PostgreSQL commits come from, read from the server's log
(standard library only; bench/commits.sh calls it).

    commits_log.py LOG_FILE START_OFFSET END_OFFSET DATABASE REQUESTS

Reads the bytes [START_OFFSET, END_OFFSET) of a PostgreSQL log written with
`log_statement = 'all'` and the default-like prefix `%m [%p] %q%u@%d `, keeps the
lines of DATABASE, and groups them per backend into transactions: BEGIN ... COMMIT
is one commit, named by its statements; a statement outside a transaction block is
one commit of its own (PostgreSQL commits every standalone statement, a SELECT
too). Prints the sources, most frequent first, with their count per request.
"""

import re
import sys
from collections import Counter

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \S+ \[(\d+)\] (\S*)@(\S*) (\w+):  (.*)$")
STATEMENT = re.compile(r"^(?:statement|execute [^:]+): (.*)$", re.S)
SHOWN = 70


def shape(sql):
    """A statement's first words, whitespace collapsed, literals kept (they are
    the script's own or bind markers)."""
    text = " ".join(sql.split())
    return text if len(text) <= SHOWN else text[: SHOWN - 1] + "…"


def entries(path, start, end, database):
    """(pid, statement) for every statement logged for `database`."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start).decode("utf-8", "replace")
    current = None
    for line in data.splitlines():
        match = LINE.match(line)
        if match:
            if current:
                yield current
            current = None
            pid, _user, db, level, message = match.groups()
            if db != database or level != "LOG":
                continue
            statement = STATEMENT.match(message)
            if statement:
                current = (pid, statement.group(1))
        elif current and line[:1] in ("\t", " "):
            current = (current[0], current[1] + " " + line.strip())
    if current:
        yield current


def main(path, start, end, database, requests):
    commits = Counter()
    rollbacks = Counter()
    open_blocks = {}
    for pid, sql in entries(path, int(start), int(end), database):
        word = sql.strip().split(None, 1)[0].upper().rstrip(";") if sql.strip() else ""
        if word in ("BEGIN", "START"):
            open_blocks[pid] = []
        elif word in ("COMMIT", "END"):
            block = open_blocks.pop(pid, [])
            commits["tx: " + " | ".join(block[:3]) + (" | …" if len(block) > 3 else "")] += 1
        elif word == "ROLLBACK":
            block = open_blocks.pop(pid, [])
            rollbacks["tx: " + " | ".join(block[:3])] += 1
        elif pid in open_blocks:
            open_blocks[pid].append(shape(sql))
        else:
            commits[shape(sql)] += 1
    requests = max(int(requests), 1)
    total = sum(commits.values())
    print(f"  {total} commits logged ({total / requests:.2f} per request); by source:")
    for what, n in commits.most_common(25):
        print(f"  {n / requests:7.2f}  {n:6d}  {what}")
    if rollbacks:
        print(f"  rollbacks (not commits): {sum(rollbacks.values())}")
        for what, n in rollbacks.most_common(5):
            print(f"  {n / requests:7.2f}  {n:6d}  {what}")


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    main(*sys.argv[1:])

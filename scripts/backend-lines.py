#!/usr/bin/env python3
"""Counts the non-test Rust lines that exist only because Keyledger has a second
back end (the embedded SQLite engine beside PostgreSQL), and the types whose only
job is to say which back end is in use.

How it counts (a heuristic, stable enough to compare two commits):
- every line of a file whose path names SQLite or the embedded engine
  (`*sqlite*`, `embedded*`, `appender.rs`, `sqlite_events.rs`), tests excluded;
- in other files, the lines of each `match` arm or `if let` whose pattern names a
  back end (`...::Sqlite(`, `...::Embedded(`, `...::Postgres(`, `Backend::...`),
  and of each function, `impl` or struct that is for one back end: `sqlite`,
  `pg` or `postgres` in its name, or a signature naming one back end's types
  (`PgConnection`, `PgPool`, `SqlitePool`, `SqliteConnection`, their connect
  options and transactions). Twins and dispatch arms exist because there are two
  back ends; one of each pair would remain with one back end, but the count is of
  both, as the issue that asked for it counted them. A file that never mentions
  SQLite or the embedded engine is a PostgreSQL-only feature (`reseal`), not a
  twin, and is not counted;
- `#[cfg(test)]` modules (inline, or files named `tests.rs`), the storage
  crate's test helper (`testing.rs`) and `tests/` folders are left out.
Types: enums with both a PostgreSQL variant and a SQLite/embedded one.

Usage: scripts/backend-lines.py [REPO_ROOT]   (prints a table per crate and the
lines of each enum it counted)
"""
import pathlib
import re
import sys

CRATES = ["storage", "commands", "projections", "api", "replay-tools"]
ONLY_SQLITE_FILE = re.compile(r"(sqlite|embedded|appender\.rs$)", re.I)
ARM = re.compile(r"^\s*(?:[\w:]*::)?(Sqlite|Embedded|Postgres)\b[^=]*=>|Backend::(Sqlite|Postgres)\b.*=>|if let [\w:]*::(Sqlite|Embedded|Postgres)\(")
ONE_BACKEND_NAME = r"(\w*sqlite\w*|pg_\w+|\w+_pg|pg|\w*postgres\w*)"
SQLITE_FN = re.compile(
    r"^\s*(pub(\([\w:]+\))?\s+)?(async\s+)?(fn|struct|impl(<[^>]*>)?)\s+(\w+\s+for\s+)?" + ONE_BACKEND_NAME + r"\b"
    r"|^\s*(pub(\([\w:]+\))?\s+)?(async\s+)?fn\s+\w+(<[^>]*>)?\([^)]*\b(PgConnection|PgPool|SqlitePool|SqliteConnection|PgConnectOptions|SqliteConnectOptions|Sqlite>|Postgres>)",
    re.I,
)


def strip_tests(text):
    """Blanks `#[cfg(test)] mod ... { ... }` blocks (keeps line numbers)."""
    lines = text.split("\n")
    out, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "#[cfg(test)]" and i + 1 < len(lines) and re.match(r"\s*(pub(\(crate\))?\s+)?mod\s+\w+\s*\{", lines[i + 1]):
            depth, j = 0, i + 1
            while j < len(lines):
                depth += lines[j].count("{") - lines[j].count("}")
                j += 1
                if depth <= 0:
                    break
            out.extend([""] * (j - i))
            i = j
        else:
            out.append(lines[i])
            i += 1
    return out


def block_len(lines, start):
    """Lines of the arm or item starting at `start`: to the end of its braces, or
    the one line when it opens none."""
    depth, j, opened = 0, start, False
    while j < len(lines):
        line = re.sub(r'"(\\.|[^"\\])*"', '""', lines[j])
        depth += line.count("{") - line.count("}")
        opened = opened or "{" in line
        j += 1
        if (opened and depth <= 0) or (not opened and line.rstrip().endswith(",")):
            break
        if not opened and depth < 0:
            break
    return j - start


def code_lines(lines):
    return sum(1 for l in lines if l.strip() and not l.strip().startswith("//"))


def count(root):
    per_crate, enums = {}, []
    for crate in CRATES:
        total = only = 0
        for path in sorted((root / crate / "src").rglob("*.rs")):
            if path.name in ("tests.rs", "testing.rs"):
                continue  # test modules and test helpers kept in files of their own
            lines = strip_tests(path.read_text())
            n = code_lines(lines)
            total += n
            rel = path.relative_to(root)
            if ONLY_SQLITE_FILE.search(path.name) or ONLY_SQLITE_FILE.search(str(path.parent.name)):
                only += n
            elif not re.search(r"sqlite|embedded", "\n".join(lines), re.I):
                pass  # a PostgreSQL-only feature (`reseal`): no twin, it would exist anyway
            else:
                i = 0
                while i < len(lines):
                    head = lines[i]
                    if re.match(r"\s*(pub(\([\w:]+\))?\s+)?(async\s+)?fn\b", head):
                        # A signature over several lines is read as one.
                        j = i
                        while "{" not in lines[j] and ";" not in lines[j] and j + 1 < len(lines):
                            j += 1
                            head += " " + lines[j].strip()
                    if ARM.search(lines[i]) or SQLITE_FN.search(head):
                        k = block_len(lines, i)
                        only += code_lines(lines[i:i + k])
                        i += k
                    else:
                        i += 1
            text = "\n".join(lines)
            for m in re.finditer(r"\benum\s+(\w+)[^{;]*\{", text):
                depth, j = 1, m.end()
                while depth and j < len(text):
                    depth += {"{": 1, "}": -1}.get(text[j], 0)
                    j += 1
                body = text[m.end():j]
                if re.search(r"^\s*(Postgres|Pg)\b", body, re.M) and re.search(r"^\s*(Sqlite|Embedded)\b", body, re.M):
                    enums.append(f"{rel}: {m.group(1)}")
        per_crate[crate] = (total, only)
    return per_crate, enums


def main():
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    per_crate, enums = count(root)
    print(f"{'crate':<14}{'code lines':>12}{'second back end only':>22}")
    for crate, (total, only) in per_crate.items():
        print(f"{crate:<14}{total:>12}{only:>22}")
    total = sum(t for t, _ in per_crate.values())
    only = sum(o for _, o in per_crate.values())
    print(f"{'all':<14}{total:>12}{only:>22}")
    print(f"\nenums naming the back end (non-test code): {len(enums)}")
    for e in enums:
        print("  " + e)
    sys.stdout.flush()


if __name__ == "__main__":
    main()

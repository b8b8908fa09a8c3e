//! Tamper evidence: a live server's log is signed, then altered the way someone
//! with full access to the database could, in every way issue #3 lists;
//! `keyledger-replay verify`, run as a library call, must name the first bad event
//! or checkpoint every time. The kinds of tampering are the same on both back
//! ends; only the attacker's tools differ: on PostgreSQL a superuser's SQL with
//! every trigger off (`session_replication_role = replica`) and chains recomputed
//! in plpgsql; on the embedded store anyone who can write the file, dropping the
//! append-only triggers for the edit (and recreating them after), with chains
//! recomputed in Rust (SQLite has no SHA-256 in SQL).

use std::sync::Arc;
use std::time::Duration;

use keyledger_domain::chain::{CanonicalEvent, Hash, ZERO_HASH};
use keyledger_e2e::*;
use keyledger_projections::chain::hex;
use keyledger_projections::{AuditKey, AuditPublicKey, ChainSigner, Checkpoint};
use keyledger_replay_tools::verify::{CheckpointProblem, EventProblem};
use keyledger_replay_tools::{verify, Failure, VerifyOptions, VerifyReport};
use keyledger_storage::{connect_options, Durability, DATABASE_FILE};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection, SqliteConnection};

/// The audit key the test server signs with.
fn audit_key(app: &TestApp) -> Arc<AuditKey> {
    Arc::new(AuditKey::from_paserk(&app.resources.audit_key).unwrap())
}

fn public_key(app: &TestApp) -> AuditPublicKey {
    audit_key(app).public_key().clone()
}

/// A signer on the server's own store, with `key`.
fn signer(app: &TestApp, key: Arc<AuditKey>) -> ChainSigner {
    ChainSigner::new(app.state.storage.clone(), key)
}

/// Signs until a checkpoint covers every event in the table (the signer only signs
/// what the feed calls final, and another test's open transaction can hold that
/// back for a moment).
async fn sign_everything(app: &TestApp) -> Checkpoint {
    let signer = signer(app, audit_key(app));
    for _ in 0..1200 {
        let total = app.count_events().await;
        if let Some(checkpoint) = signer.sign_now().await.unwrap() {
            if checkpoint.state.event_count == total {
                return checkpoint;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no checkpoint ever covered the whole log");
}

/// Runs verify with the default cache and with a cache of two aggregates (every
/// other aggregate is then looked up again); both must say the same.
async fn run_verify(app: &TestApp, options: VerifyOptions) -> (VerifyReport, String) {
    let log = app.replay_log().await;
    let mut out = Vec::new();
    let report = verify(&log, &options, &mut out).await.unwrap();
    let tiny = VerifyOptions {
        cached_aggregates: 2,
        ..options
    };
    let again = verify(&log, &tiny, &mut Vec::new()).await.unwrap();
    assert_eq!(
        report.failure, again.failure,
        "the cache size changed the verdict"
    );
    assert_eq!(report.events, again.events);
    (report, String::from_utf8(out).unwrap())
}

fn with_key(key: AuditPublicKey) -> VerifyOptions {
    VerifyOptions {
        public_keys: vec![key],
        ..VerifyOptions::default()
    }
}

/// One way of altering the store, with each back end's tools.
#[derive(Clone, Debug)]
struct Attack {
    /// Run as the superuser with every ordinary trigger off.
    postgres: String,
    /// Run with the append-only triggers dropped.
    sqlite: String,
    /// On SQLite, every chain hash is recomputed after the SQL (PostgreSQL's SQL
    /// does it itself).
    sqlite_rechain: bool,
}

impl Attack {
    /// The same SQL on both back ends.
    fn sql(both: &str) -> Self {
        Self::pair(both.to_owned(), both.to_owned())
    }

    fn pair(postgres: String, sqlite: String) -> Self {
        Self {
            postgres,
            sqlite,
            sqlite_rechain: false,
        }
    }

    /// Then every chain hash recomputed, so that each event matches its chain again.
    fn then_recompute_every_chain(self) -> Self {
        Self {
            postgres: format!("{};\n{RECOMPUTE_EVERY_CHAIN}", self.postgres),
            sqlite_rechain: true,
            ..self
        }
    }
}

/// Alters the store behind the server's back, on a connection of its own.
async fn tamper(app: &TestApp, attack: &Attack) {
    match app.backend() {
        Backend::Postgres => tamper_postgres(app, &attack.postgres).await,
        Backend::Sqlite => tamper_sqlite(app, &attack.sqlite, attack.sqlite_rechain).await,
    }
}

/// Runs SQL as the superuser with every ordinary trigger off (append-only and
/// chain triggers included).
async fn tamper_postgres(app: &TestApp, sql: &str) {
    let mut conn = PgConnection::connect(&app.resources.database_url)
        .await
        .unwrap();
    sqlx::raw_sql("SET session_replication_role = replica")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::raw_sql(sql)
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("tampering failed: {e}\n{sql}"));
    conn.close().await.unwrap();
}

/// Opens the database file for writing, as anyone with access to it can, and in
/// one transaction (so the server never sees the log unguarded): drops the
/// triggers that keep `events` and `chain_checkpoints` append-only, runs the SQL,
/// recomputes every chain hash if asked, and recreates the triggers exactly as
/// they were.
async fn tamper_sqlite(app: &TestApp, sql: &str, rechain: bool) {
    let path = app.resources.data_dir.join(DATABASE_FILE);
    let mut conn = SqliteConnection::connect_with(&connect_options(&path, Durability::Normal))
        .await
        .unwrap();
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let triggers: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, sql FROM sqlite_master
          WHERE type = 'trigger' AND tbl_name IN ('events', 'chain_checkpoints')
          ORDER BY name",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let names: Vec<&str> = triggers.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "chain_checkpoints_no_delete",
            "chain_checkpoints_no_update",
            "events_no_delete",
            "events_no_update"
        ]
    );
    for (name, _) in &triggers {
        sqlx::raw_sql(&format!("DROP TRIGGER {name}"))
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    sqlx::raw_sql(sql)
        .execute(&mut *tx)
        .await
        .unwrap_or_else(|e| panic!("tampering failed: {e}\n{sql}"));
    if rechain {
        recompute_every_chain_sqlite(&mut tx).await;
    }
    for (_, create) in &triggers {
        sqlx::raw_sql(create).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    conn.close().await.unwrap();
}

/// What an attacker with a SQL prompt runs after editing events: every chain hash
/// recomputed, aggregate by aggregate, with the migration's own functions.
const RECOMPUTE_EVERY_CHAIN: &str = r"
DO $$
DECLARE
    r record;
    previous bytea;
BEGIN
    FOR r IN SELECT aggregate_type, aggregate_id, sequence FROM events
              ORDER BY aggregate_type, aggregate_id, sequence LOOP
        SELECT chain_hash INTO previous FROM events
         WHERE aggregate_type = r.aggregate_type AND aggregate_id = r.aggregate_id
           AND sequence = r.sequence - 1;
        UPDATE events e
           SET chain_hash = sha256(coalesce(previous, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea)
               || event_chain_canonical(e.aggregate_type, e.aggregate_id, e.sequence,
                      e.event_type, e.event_version, e.payload::text, e.metadata::text,
                      e.recorded_at, e.tx_id, e.global_position))
         WHERE e.aggregate_type = r.aggregate_type AND e.aggregate_id = r.aggregate_id
           AND e.sequence = r.sequence;
    END LOOP;
END $$;
";

/// [`RECOMPUTE_EVERY_CHAIN`] on the embedded store: the same walk, each hash
/// computed with the appender's own canonical bytes.
async fn recompute_every_chain_sqlite(conn: &mut SqliteConnection) {
    type Row = (
        String,
        String,
        i64,
        String,
        String,
        String,
        String,
        i64,
        i64,
        i64,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
                metadata, recorded_at, tx_id, global_position
           FROM events ORDER BY aggregate_type, aggregate_id, sequence",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let mut previous: Option<(&str, &str, i64, Hash)> = None;
    for row in &rows {
        let (aggregate_type, aggregate_id, sequence) = (row.0.as_str(), row.1.as_str(), row.2);
        let before = match previous {
            Some((t, i, s, hash)) if (t, i, s) == (aggregate_type, aggregate_id, sequence - 1) => {
                hash
            }
            _ => ZERO_HASH,
        };
        let hash = CanonicalEvent {
            aggregate_type,
            aggregate_id,
            sequence,
            event_type: &row.3,
            event_version: &row.4,
            payload: &row.5,
            metadata: &row.6,
            recorded_at_micros: row.7,
            tx_id: row.8,
            global_position: row.9,
        }
        .chain_hash(&before);
        sqlx::query(
            "UPDATE events SET chain_hash = $1
              WHERE aggregate_type = $2 AND aggregate_id = $3 AND sequence = $4",
        )
        .bind(hash.as_slice())
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(sequence)
        .execute(&mut *conn)
        .await
        .unwrap();
        previous = Some((aggregate_type, aggregate_id, sequence, hash));
    }
}

/// SQLite, which checks a unique index row by row, swaps the log positions of the
/// two events `rows` selects (told apart by `key`) through positions nobody uses.
fn sqlite_swap_positions(rows: &str, key: &str) -> String {
    format!(
        "CREATE TEMP TABLE swap AS SELECT {key} AS k, global_position FROM events WHERE {rows};
         UPDATE events SET global_position = global_position + 1000000000 WHERE {rows};
         UPDATE events
            SET global_position = (SELECT swap.global_position FROM swap
                                    WHERE swap.k <> events.{key})
          WHERE {rows};
         DROP TABLE swap;"
    )
}

/// A SQLite blob literal.
fn blob(bytes: &[u8]) -> String {
    format!("X'{}'", hex(bytes))
}

/// What PostgreSQL's `sha256(bytes)` returns.
fn sha256(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

/// A signed log: account A's journey (checkpoint 1), then account B's two logins
/// (checkpoint 2).
struct SignedLog {
    user_a: String,
    session_a: String,
    user_b: String,
    session_b2: String,
    first: Checkpoint,
    second: Checkpoint,
}

/// The owner of a session, from the event store rather than `/me`, which answers
/// from the read models (emails in the log are sealed, so they cannot be matched).
async fn user_id(app: &TestApp, session_id: &str) -> String {
    app.db()
        .scalar(
            (
                "SELECT payload -> 'SessionStarted' ->> 'user_id' FROM events
                  WHERE aggregate_type = 'session' AND aggregate_id = $1 AND sequence = 1",
                "SELECT payload ->> '$.SessionStarted.user_id' FROM events
                  WHERE aggregate_type = 'session' AND aggregate_id = $1 AND sequence = 1",
            ),
            &[session_id.into()],
        )
        .await
}

async fn signed_log(app: &TestApp) -> SignedLog {
    // A: UserRegistered, UserLoggedIn | SessionStarted, TokenRefreshed, UserLoggedOut.
    let (_, first) = app.signed_in_user().await;
    let user_a = user_id(app, &first.session_id).await;
    let second = app.tokens(app.refresh(&first.refresh_token).await).await;
    assert_eq!(
        app.logout(&second.access_token).await.status(),
        StatusCode::NO_CONTENT
    );
    let first_checkpoint = sign_everything(app).await;

    // B: UserRegistered, UserLoggedIn, UserLoggedIn | two sessions of one event each.
    let (email, b1) = app.signed_in_user().await;
    let user_b = user_id(app, &b1.session_id).await;
    let b2 = app.tokens(app.login(&email, PASSWORD).await).await;
    let second_checkpoint = sign_everything(app).await;
    SignedLog {
        user_a,
        session_a: first.session_id,
        user_b,
        session_b2: b2.session_id,
        first: first_checkpoint,
        second: second_checkpoint,
    }
}

/// Keeps an untouched copy of both tables, to undo each tampering.
async fn keep_pristine_copy(app: &TestApp) {
    tamper(
        app,
        &Attack::sql(
            "CREATE TABLE pristine_events AS SELECT * FROM events;
             CREATE TABLE pristine_checkpoints AS SELECT * FROM chain_checkpoints;",
        ),
    )
    .await;
}

async fn restore_pristine_copy(app: &TestApp) {
    tamper(
        app,
        &Attack::sql(
            "DELETE FROM events; INSERT INTO events SELECT * FROM pristine_events;
             DELETE FROM chain_checkpoints;
             INSERT INTO chain_checkpoints SELECT * FROM pristine_checkpoints;",
        ),
    )
    .await;
}

/// The store still refuses to edit or delete events and checkpoints, through the
/// server's own connections: tampering left the guards as they were.
async fn assert_still_append_only(app: &TestApp) {
    let db = app.db();
    for sql in [
        "UPDATE events SET event_type = 'Tampered'",
        "DELETE FROM events",
        "UPDATE chain_checkpoints SET key_id = 'k4.pid.forged'",
        "DELETE FROM chain_checkpoints",
    ] {
        assert!(
            db.execute(sql, &[]).await.is_err(),
            "the store allowed {sql}"
        );
    }
}

enum Expect {
    Event {
        aggregate_id: String,
        sequence: i64,
        problem: EventProblem,
    },
    Checkpoint {
        id: i64,
        problem: CheckpointProblem,
        since: Option<i64>,
    },
}

fn assert_caught(case: &str, report: &VerifyReport, out: &str, expect: &Expect) {
    let failure = report
        .failure
        .as_ref()
        .unwrap_or_else(|| panic!("{case}: not caught: {out}"));
    assert!(out.starts_with("TAMPERED: "), "{case}: {out}");
    match (expect, failure) {
        (
            Expect::Event {
                aggregate_id,
                sequence,
                problem,
            },
            Failure::Event { event, problem: p },
        ) => {
            assert_eq!(
                (&event.aggregate_id, event.sequence, p),
                (aggregate_id, *sequence, problem),
                "{case}: {out}"
            );
            assert!(out.contains(aggregate_id.as_str()), "{case}: {out}");
            assert!(
                out.contains(&format!("sequence {sequence} ")),
                "{case}: {out}"
            );
            assert!(
                out.contains(&format!(
                    "global position {}",
                    event.position.global_position
                )),
                "{case}: {out}"
            );
        }
        (
            Expect::Checkpoint { id, problem, since },
            Failure::Checkpoint {
                checkpoint,
                problem: p,
                since: s,
            },
        ) => {
            assert_eq!(
                (checkpoint.id, p, s.as_ref().map(|c| c.id)),
                (*id, problem, *since),
                "{case}: {out}"
            );
            assert!(out.contains(&format!("checkpoint #{id} ")), "{case}: {out}");
        }
        _ => panic!("{case}: caught as something else: {out}"),
    }
}

e2e! {
    async fn a_clean_log_verifies_and_later_events_are_reported_unsigned(backend) {
        let app = spawn_app_on_with(backend, |s| s.audit.checkpoint_interval = None).await;
        let log = signed_log(&app).await;
        assert_eq!(log.second.key_id, public_key(&app).id());
        assert!(log.first.state.event_count < log.second.state.event_count);

        let (report, out) = run_verify(&app, with_key(public_key(&app))).await;
        assert!(report.is_ok(), "{out}");
        assert_eq!(report.events, log.second.state.event_count as u64);
        assert_eq!(report.checkpoints, 2);
        assert_eq!(report.unsigned_events, 0);
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(
            out.starts_with(&format!(
                "verified {} events and 2 checkpoints in ",
                report.events
            )),
            "{out}"
        );
        assert!(out.contains(" events/s); last checkpoint at "), "{out}");
        assert!(out.contains(&hex(&log.second.state.log_hash)), "{out}");

        // Written after the last checkpoint: chained, reported, not a failure.
        let (_, tokens) = app.signed_in_user().await;
        app.refresh(&tokens.refresh_token).await;
        let total = app.count_events().await;
        let (report, out) = run_verify(&app, with_key(public_key(&app))).await;
        assert!(report.is_ok(), "{out}");
        assert_eq!(report.events, total as u64);
        let unsigned = (total - log.second.state.event_count) as u64;
        assert!(unsigned >= 4);
        assert_eq!(report.unsigned_events, unsigned);
        assert!(
            out.trim_end().ends_with(&format!(
                "{unsigned} events after it are chained but not yet signed"
            )),
            "{out}"
        );

        // Deleting every checkpoint leaves a log that merely looks unsigned, unless the
        // auditor brings the log hash an earlier run reported.
        tamper(&app, &Attack::sql("DELETE FROM chain_checkpoints")).await;
        let (report, out) = run_verify(&app, with_key(public_key(&app))).await;
        assert!(report.is_ok(), "{out}");
        assert!(out.contains("no checkpoint yet"), "{out}");
        let anchored = VerifyOptions {
            expected_log_hashes: vec![log.second.state.log_hash],
            ..with_key(public_key(&app))
        };
        let (report, out) = run_verify(&app, anchored).await;
        assert_eq!(
            report.failure,
            Some(Failure::MissingCheckpoint {
                log_hash: log.second.state.log_hash
            }),
            "{out}"
        );
    }
}

e2e! {
    async fn every_kind_of_tampering_is_caught_and_named(backend) {
        let app = spawn_app_on_with(backend, |s| s.audit.checkpoint_interval = None).await;
        let log = signed_log(&app).await;
        keep_pristine_copy(&app).await;
        let (a, sa, b, sb2) = (&log.user_a, &log.session_a, &log.user_b, &log.session_b2);
        let (c1, c2) = (log.first.id, log.second.id);
        let (n1, n2) = (log.first.state.event_count, log.second.state.event_count);

        let cases: Vec<(&str, Attack, Expect)> = vec![
            (
                "a payload modified",
                Attack::pair(
                    format!(
                        "UPDATE events SET payload = jsonb_set(payload::jsonb,
                                '{{UserRegistered,display_name}}', '\"Mallory\"')::json
                          WHERE aggregate_type = 'user' AND aggregate_id = '{a}' AND sequence = 1"
                    ),
                    format!(
                        "UPDATE events
                            SET payload = json_set(payload, '$.UserRegistered.display_name',
                                                   'Mallory')
                          WHERE aggregate_type = 'user' AND aggregate_id = '{a}' AND sequence = 1"
                    ),
                ),
                Expect::Event {
                    aggregate_id: a.clone(),
                    sequence: 1,
                    problem: EventProblem::ContentChanged,
                },
            ),
            (
                "a payload re-spaced (same JSON, other bytes)",
                Attack::pair(
                    format!(
                        "UPDATE events SET payload = (' ' || payload::text)::json
                          WHERE aggregate_type = 'user' AND aggregate_id = '{b}' AND sequence = 2"
                    ),
                    format!(
                        "UPDATE events SET payload = ' ' || payload
                          WHERE aggregate_type = 'user' AND aggregate_id = '{b}' AND sequence = 2"
                    ),
                ),
                Expect::Event {
                    aggregate_id: b.clone(),
                    sequence: 2,
                    problem: EventProblem::ContentChanged,
                },
            ),
            (
                "metadata modified",
                Attack::pair(
                    format!(
                        "UPDATE events SET metadata = jsonb_set(metadata::jsonb, '{{ip}}',
                                '\"203.0.113.66\"')::json
                          WHERE aggregate_type = 'session' AND aggregate_id = '{sa}'
                            AND sequence = 2"
                    ),
                    format!(
                        "UPDATE events SET metadata = json_set(metadata, '$.ip', '203.0.113.66')
                          WHERE aggregate_type = 'session' AND aggregate_id = '{sa}'
                            AND sequence = 2"
                    ),
                ),
                Expect::Event {
                    aggregate_id: sa.clone(),
                    sequence: 2,
                    problem: EventProblem::ContentChanged,
                },
            ),
            (
                "recorded_at backdated",
                Attack::pair(
                    format!(
                        "UPDATE events SET recorded_at = recorded_at - interval '1 day'
                          WHERE aggregate_type = 'session' AND aggregate_id = '{sa}'
                            AND sequence = 1"
                    ),
                    // Microseconds since 1970 on the embedded store.
                    format!(
                        "UPDATE events SET recorded_at = recorded_at - 86400000000
                          WHERE aggregate_type = 'session' AND aggregate_id = '{sa}'
                            AND sequence = 1"
                    ),
                ),
                Expect::Event {
                    aggregate_id: sa.clone(),
                    sequence: 1,
                    problem: EventProblem::ContentChanged,
                },
            ),
            (
                "an event deleted in the middle of its aggregate",
                Attack::sql(&format!(
                    "DELETE FROM events
                      WHERE aggregate_type = 'session' AND aggregate_id = '{sa}' AND sequence = 2"
                )),
                Expect::Event {
                    aggregate_id: sa.clone(),
                    sequence: 3,
                    problem: EventProblem::Missing { expected: 2 },
                },
            ),
            (
                "the last event of an aggregate deleted before a checkpoint",
                Attack::sql(&format!(
                    "DELETE FROM events
                      WHERE aggregate_type = 'session' AND aggregate_id = '{sa}' AND sequence = 3"
                )),
                Expect::Checkpoint {
                    id: c1,
                    problem: CheckpointProblem::EventCount { found: n1 - 1 },
                    since: None,
                },
            ),
            (
                "the only event of an aggregate deleted before the second checkpoint",
                Attack::sql(&format!(
                    "DELETE FROM events WHERE aggregate_type = 'session' AND aggregate_id = '{sb2}'"
                )),
                Expect::Checkpoint {
                    id: c2,
                    problem: CheckpointProblem::EventCount { found: n2 - 1 },
                    since: Some(c1),
                },
            ),
            (
                "a forged event appended to an aggregate with a correct chain hash",
                // PostgreSQL: slipped into the transaction of A's login, before the
                // first checkpoint, at a fresh position.
                // SQLite: the log order is the position alone, dense from 1, so the
                // forged event takes the position after A's login and every later
                // event moves up one, all chains recomputed.
                Attack {
                    sqlite_rechain: true,
                    ..Attack::pair(
                        format!(
                            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                    event_version, payload, metadata, global_position, tx_id,
                                    recorded_at, chain_hash)
                             SELECT p.aggregate_type, p.aggregate_id, p.sequence + 1,
                                    'PlatformAdminGranted', '1.0',
                                    f.payload, f.metadata, f.position,
                                    p.tx_id, p.recorded_at,
                                    sha256(p.chain_hash || event_chain_canonical(p.aggregate_type,
                                        p.aggregate_id, p.sequence + 1, 'PlatformAdminGranted',
                                        '1.0',
                                        f.payload::text, f.metadata::text, p.recorded_at, p.tx_id,
                                        f.position))
                               FROM events p,
                                    (SELECT '{{\"PlatformAdminGranted\":{{}}}}'::json AS payload,
                                            '{{}}'::json AS metadata,
                                            nextval('events_global_position_seq') AS position) f
                              WHERE p.aggregate_type = 'user' AND p.aggregate_id = '{a}'
                                AND p.sequence = 2"
                        ),
                        format!(
                            "CREATE TEMP TABLE p AS SELECT * FROM events
                              WHERE aggregate_type = 'user' AND aggregate_id = '{a}'
                                AND sequence = 2;
                             UPDATE events SET global_position = global_position + 1000000000
                              WHERE global_position > (SELECT global_position FROM p);
                             UPDATE events SET global_position = global_position - 1000000000 + 1
                              WHERE global_position > 1000000000;
                             INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                    event_version, payload, metadata, global_position, tx_id,
                                    recorded_at, chain_hash)
                             SELECT aggregate_type, aggregate_id, sequence + 1,
                                    'PlatformAdminGranted', '1.0',
                                    '{{\"PlatformAdminGranted\":{{}}}}',
                                    '{{}}', global_position + 1, tx_id, recorded_at, zeroblob(32)
                               FROM p;
                             DROP TABLE p;"
                        ),
                    )
                },
                match backend {
                    Backend::Postgres => Expect::Checkpoint {
                        id: c1,
                        problem: CheckpointProblem::EventCount { found: n1 + 1 },
                        since: None,
                    },
                    // Positions are dense: the first checkpoint's position now holds
                    // as many events as before, just not the same ones.
                    Backend::Sqlite => Expect::Checkpoint {
                        id: c1,
                        problem: CheckpointProblem::LogHash,
                        since: None,
                    },
                },
            ),
            (
                "two events of different aggregates swapped in the log",
                Attack::pair(
                    format!(
                        "WITH x AS (SELECT tx_id, global_position FROM events
                                     WHERE aggregate_type = 'user' AND aggregate_id = '{a}'
                                       AND sequence = 1),
                              y AS (SELECT tx_id, global_position FROM events
                                     WHERE aggregate_type = 'user' AND aggregate_id = '{b}'
                                       AND sequence = 1)
                         UPDATE events e
                            SET tx_id = CASE WHEN e.aggregate_id = '{a}'
                                               THEN y.tx_id ELSE x.tx_id END,
                                global_position = CASE WHEN e.aggregate_id = '{a}'
                                                       THEN y.global_position
                                                       ELSE x.global_position END
                           FROM x, y
                          WHERE e.aggregate_type = 'user' AND e.sequence = 1
                            AND e.aggregate_id IN ('{a}', '{b}')"
                    ),
                    // Every transaction id is 0 there: the positions say it all.
                    sqlite_swap_positions(
                        &format!(
                            "aggregate_type = 'user' AND sequence = 1
                             AND aggregate_id IN ('{a}', '{b}')"
                        ),
                        "aggregate_id",
                    ),
                ),
                // B's registration now comes first, where A's was.
                Expect::Event {
                    aggregate_id: b.clone(),
                    sequence: 1,
                    problem: EventProblem::ContentChanged,
                },
            ),
            (
                "two events of one aggregate swapped in the log",
                Attack::pair(
                    format!(
                        "WITH x AS (SELECT tx_id, global_position FROM events
                                     WHERE aggregate_type = 'session' AND aggregate_id = '{sa}'
                                       AND sequence = 2),
                              y AS (SELECT tx_id, global_position FROM events
                                     WHERE aggregate_type = 'session' AND aggregate_id = '{sa}'
                                       AND sequence = 3)
                         UPDATE events e
                            SET tx_id = CASE WHEN e.sequence = 2 THEN y.tx_id ELSE x.tx_id END,
                                global_position = CASE WHEN e.sequence = 2 THEN y.global_position
                                                       ELSE x.global_position END
                           FROM x, y
                          WHERE e.aggregate_type = 'session' AND e.aggregate_id = '{sa}'
                            AND e.sequence IN (2, 3)"
                    ),
                    sqlite_swap_positions(
                        &format!(
                            "aggregate_type = 'session' AND aggregate_id = '{sa}'
                             AND sequence IN (2, 3)"
                        ),
                        "sequence",
                    ),
                ),
                Expect::Event {
                    aggregate_id: sa.clone(),
                    sequence: 3,
                    problem: EventProblem::Missing { expected: 2 },
                },
            ),
            (
                "metadata modified and every chain hash recomputed",
                Attack::pair(
                    format!(
                        "UPDATE events SET metadata = jsonb_set(metadata::jsonb, '{{ip}}',
                                '\"203.0.113.66\"')::json
                          WHERE aggregate_type = 'session' AND aggregate_id = '{sa}'
                            AND sequence = 2"
                    ),
                    format!(
                        "UPDATE events SET metadata = json_set(metadata, '$.ip', '203.0.113.66')
                          WHERE aggregate_type = 'session' AND aggregate_id = '{sa}'
                            AND sequence = 2"
                    ),
                )
                .then_recompute_every_chain(),
                Expect::Checkpoint {
                    id: c1,
                    problem: CheckpointProblem::LogHash,
                    since: None,
                },
            ),
            (
                "an event deleted, the rest renumbered and every chain recomputed",
                Attack::sql(&format!(
                    "DELETE FROM events
                      WHERE aggregate_type = 'session' AND aggregate_id = '{sa}' AND sequence = 2;
                     UPDATE events SET sequence = 2
                      WHERE aggregate_type = 'session' AND aggregate_id = '{sa}' AND sequence = 3;"
                ))
                .then_recompute_every_chain(),
                Expect::Checkpoint {
                    id: c1,
                    problem: CheckpointProblem::EventCount { found: n1 - 1 },
                    since: None,
                },
            ),
            (
                "a checkpoint's log hash replaced",
                Attack::pair(
                    format!(
                        "UPDATE chain_checkpoints SET log_hash = sha256(log_hash) WHERE id = {c1}"
                    ),
                    format!(
                        "UPDATE chain_checkpoints SET log_hash = {} WHERE id = {c1}",
                        blob(&sha256(&log.first.state.log_hash))
                    ),
                ),
                Expect::Checkpoint {
                    id: c1,
                    problem: CheckpointProblem::BadSignature,
                    since: None,
                },
            ),
            (
                "the last event deleted and the checkpoint's count lowered to match",
                Attack::sql(&format!(
                    "DELETE FROM events WHERE aggregate_type = 'session' AND aggregate_id = '{sb2}';
                     UPDATE chain_checkpoints SET event_count = event_count - 1 WHERE id = {c2}"
                )),
                Expect::Checkpoint {
                    id: c2,
                    problem: CheckpointProblem::BadSignature,
                    since: Some(c1),
                },
            ),
            (
                "a checkpoint's signature replaced",
                Attack::pair(
                    format!(
                        "UPDATE chain_checkpoints
                            SET signature = sha256(signature) || sha256(signature)
                          WHERE id = {c1}"
                    ),
                    format!(
                        "UPDATE chain_checkpoints SET signature = {} WHERE id = {c1}",
                        blob(&[sha256(&log.first.signature), sha256(&log.first.signature)].concat())
                    ),
                ),
                Expect::Checkpoint {
                    id: c1,
                    problem: CheckpointProblem::BadSignature,
                    since: None,
                },
            ),
            (
                "a checkpoint claiming another key",
                Attack::sql(&format!(
                    "UPDATE chain_checkpoints SET key_id = 'k4.pid.forged' WHERE id = {c2}"
                )),
                Expect::Checkpoint {
                    id: c2,
                    problem: CheckpointProblem::UnknownKey,
                    since: Some(c1),
                },
            ),
        ];

        let (report, out) = run_verify(&app, with_key(public_key(&app))).await;
        assert!(report.is_ok(), "the untouched log: {out}");
        for (case, attack, expect) in &cases {
            tamper(&app, attack).await;
            let (report, out) = run_verify(&app, with_key(public_key(&app))).await;
            assert_caught(case, &report, &out, expect);
            restore_pristine_copy(&app).await;
        }
        let (report, out) = run_verify(&app, with_key(public_key(&app))).await;
        assert!(report.is_ok(), "restored: {out}");
        assert_still_append_only(&app).await;
    }
}

e2e! {
    async fn checkpoints_count_only_with_the_auditors_key(backend) {
        let app = spawn_app_on_with(backend, |s| s.audit.checkpoint_interval = None).await;
        let log = signed_log(&app).await;

        // Verified with some other public key: the first checkpoint is named.
        let (_, stranger) = AuditKey::generate().unwrap();
        let stranger = AuditPublicKey::from_paserk(&stranger).unwrap();
        let (report, out) = run_verify(&app, with_key(stranger)).await;
        assert_caught(
            "the wrong public key",
            &report,
            &out,
            &Expect::Checkpoint {
                id: log.first.id,
                problem: CheckpointProblem::UnknownKey,
                since: None,
            },
        );

        // An attacker rewrites history and signs it with a key of their own.
        let (attacker_secret, _) = AuditKey::generate().unwrap();
        let attacker = Arc::new(AuditKey::from_paserk(&attacker_secret).unwrap());
        let a = &log.user_a;
        tamper(
            &app,
            &Attack::pair(
                format!(
                    "UPDATE events SET payload = jsonb_set(payload::jsonb,
                            '{{UserRegistered,display_name}}', '\"Mallory\"')::json
                      WHERE aggregate_type = 'user' AND aggregate_id = '{a}' AND sequence = 1;
                     DELETE FROM chain_checkpoints;"
                ),
                format!(
                    "UPDATE events
                        SET payload = json_set(payload, '$.UserRegistered.display_name', 'Mallory')
                      WHERE aggregate_type = 'user' AND aggregate_id = '{a}' AND sequence = 1;
                     DELETE FROM chain_checkpoints;"
                ),
            )
            .then_recompute_every_chain(),
        )
        .await;
        let forged = signer(&app, attacker)
            .sign_now()
            .await
            .unwrap()
            .expect("the attacker signs the rewritten log");
        let (report, out) = run_verify(&app, with_key(public_key(&app))).await;
        assert_caught(
            "a log re-signed by another key",
            &report,
            &out,
            &Expect::Checkpoint {
                id: forged.id,
                problem: CheckpointProblem::UnknownKey,
                since: None,
            },
        );
    }
}

e2e! {
    async fn the_signer_refuses_to_sign_over_a_tampered_checkpoint(backend) {
        let app = spawn_app_on_with(backend, |s| s.audit.checkpoint_interval = None).await;
        let log = signed_log(&app).await;
        let c2 = log.second.id;
        tamper(
            &app,
            &Attack::pair(
                format!("UPDATE chain_checkpoints SET log_hash = sha256(log_hash) WHERE id = {c2}"),
                format!(
                    "UPDATE chain_checkpoints SET log_hash = {} WHERE id = {c2}",
                    blob(&sha256(&log.second.state.log_hash))
                ),
            ),
        )
        .await;
        app.signed_in_user().await;
        let refused = signer(&app, audit_key(&app)).sign_now().await.unwrap_err();
        assert!(
            matches!(
                refused,
                keyledger_projections::chain::ChainError::UntrustedCheckpoint { id } if id == c2
            ),
            "{refused}"
        );
    }
}

e2e! {
    async fn the_server_signs_checkpoints_by_itself(backend) {
        let app = spawn_app_on_with(backend, |s| {
            s.audit.checkpoint_interval = Some(Duration::from_secs(1))
        })
        .await;
        let (_, tokens) = app.signed_in_user().await;
        app.refresh(&tokens.refresh_token).await;
        let total = app.count_events().await;
        let mut signed = 0i64;
        for _ in 0..300 {
            signed = app
                .db()
                .scalar(
                    "SELECT coalesce(max(event_count), 0) FROM chain_checkpoints",
                    &[],
                )
                .await;
            if signed == total {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(signed, total, "the background signer did not catch up");
        let (report, out) = run_verify(&app, with_key(public_key(&app))).await;
        assert!(report.is_ok(), "{out}");
        assert!(report.checkpoints >= 1, "{out}");
    }
}

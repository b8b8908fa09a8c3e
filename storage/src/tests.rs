//! The handle's promises, on both back ends: codecs store what the tables hold,
//! one query text runs on either, writes and transactions commit or roll back
//! as documented, turns exclude each other, and scrubbing runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{on_both_back_ends, Backend, Database, Id, List, Micros};

/// Claims `slug` for `holder` at `at` through the writer.
async fn claim_slug(db: &Database, slug: &str, holder: Uuid, at: DateTime<Utc>) -> u64 {
    async fn run(db: &Database, slug: &str, holder: Uuid, at: DateTime<Utc>) -> sqlx::Result<u64> {
        Ok(crate::with_writer!(db, |conn| {
            sqlx::query(
                "INSERT INTO organization_slugs (slug, organization_id, claimed_at)
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(slug)
            .bind(Id(holder))
            .bind(at)
            .execute(&mut *conn)
            .await?
            .rows_affected()
        }))
    }
    run(db, slug, holder, at).await.unwrap()
}

on_both_back_ends! {
    async fn ids_and_instants_round_trip_in_the_stored_form(db) {
        let holder = Uuid::new_v4();
        let at = DateTime::parse_from_rfc3339("2026-12-06T10:00:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(claim_slug(&db, "acme", holder, at).await, 1);
        assert_eq!(claim_slug(&db, "acme", Uuid::new_v4(), at).await, 0);
        let row: Option<(Id, DateTime<Utc>)> = crate::with_readers!(db, |pool| {
            sqlx::query_as(
                "SELECT organization_id, claimed_at FROM organization_slugs WHERE slug = $1",
            )
            .bind("acme")
            .fetch_optional(pool)
            .await
            .unwrap()
        });
        assert_eq!(row, Some((Id(holder), at)));
        // The stored form is what each back end held before: a uuid, or the
        // lower-case hyphenated text.
        let text: String = crate::with_readers!(db, |pool| {
            sqlx::query_scalar("SELECT CAST(organization_id AS TEXT) FROM organization_slugs")
                .fetch_one(pool)
                .await
                .unwrap()
        });
        assert_eq!(text, holder.to_string());
    }
}

on_both_back_ends! {
    async fn one_query_text_with_dialect_fragments_runs_on_either(db) {
        let backend = db.backend();
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let at = Utc::now();
        for (slug, holder) in [("a", a), ("b", b), ("c", c)] {
            claim_slug(&db, slug, holder, at).await;
        }
        let sql = format!(
            "SELECT slug FROM organization_slugs WHERE {} AND {} <= {} ORDER BY slug",
            backend.any_of("organization_id", "$1"),
            backend.instant("claimed_at"),
            backend.instant("$2"),
        );
        let later = at + chrono::Duration::seconds(1);
        let slugs: Vec<String> = crate::with_readers!(db, |pool| {
            sqlx::query_scalar(&sql)
                .bind(List(&[Id(a), Id(c)]))
                .bind(later)
                .fetch_all(pool)
                .await
                .unwrap()
        });
        assert_eq!(slugs, ["a", "c"]);
        let json = backend.json_text("payload", &["SessionStarted", "user_id"]);
        let found: Option<String> = crate::with_readers!(db, |pool| {
            sqlx::query_scalar(&format!(
                "SELECT {json} FROM (SELECT CAST($1 AS {}) AS payload) AS probe",
                match backend {
                    Backend::Postgres => "jsonb",
                    Backend::Sqlite => "TEXT",
                }
            ))
            .bind(r#"{"SessionStarted":{"user_id":"u-1"}}"#)
            .fetch_optional(pool)
            .await
            .unwrap()
        });
        assert_eq!(found.as_deref(), Some("u-1"));
    }
}

/// Inserts two slugs in one transaction, then fails.
async fn two_claims_then_fail(db: &Database) -> sqlx::Result<()> {
    crate::with_transaction!(db, |tx| {
        for slug in ["x", "y"] {
            sqlx::query(
                "INSERT INTO organization_slugs (slug, organization_id, claimed_at)
                 VALUES ($1, $2, $3)",
            )
            .bind(slug)
            .bind(Id(Uuid::new_v4()))
            .bind(Utc::now())
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("SELECT no_such_column FROM organization_slugs")
            .execute(&mut *tx)
            .await?;
    });
    Ok(())
}

on_both_back_ends! {
    async fn a_transaction_that_fails_writes_nothing(db) {
        assert!(two_claims_then_fail(&db).await.is_err());
        let count: i64 = crate::with_readers!(db, |pool| {
            sqlx::query_scalar("SELECT count(*) FROM organization_slugs")
                .fetch_one(pool)
                .await
                .unwrap()
        });
        assert_eq!(count, 0);
    }
}

on_both_back_ends! {
    #[multi_thread]
    async fn a_turn_excludes_every_other_holder_of_the_same_key(db) {
        let inside = Arc::new(AtomicBool::new(false));
        let holders = (0..4).map(|_| {
            let (db, inside) = (db.clone(), inside.clone());
            tokio::spawn(async move {
                let _turn = db.turn(0x5445_5354).await.unwrap();
                assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                tokio::time::sleep(Duration::from_millis(20)).await;
                inside.store(false, Ordering::SeqCst);
            })
        });
        for holder in futures::future::join_all(holders).await {
            holder.unwrap();
        }
    }
}

on_both_back_ends! {
    async fn scrubbing_runs_on_either(db) {
        db.scrub_after_erasure().await.unwrap();
        db.scrub_data_keys().await.unwrap();
    }
}

on_both_back_ends! {
    async fn exact_instants_keep_their_microseconds_as_each_back_end_stores_them(db) {
        async fn run(db: &Database, at: DateTime<Utc>) -> sqlx::Result<(Micros, String)> {
            crate::with_writer!(db, |conn| {
                sqlx::query(
                    "INSERT INTO chain_checkpoints
                            (signed_at, tx_id, global_position, event_count, log_hash, key_id,
                             signature)
                     VALUES ($1, 0, 1, 1, $2, 'k', $3)",
                )
                .bind(Micros(at))
                .bind(&[0u8; 32][..])
                .bind(&[0u8; 64][..])
                .execute(&mut *conn)
                .await?;
            });
            Ok(crate::with_readers!(db, |pool| {
                sqlx::query_as("SELECT signed_at, CAST(signed_at AS TEXT) FROM chain_checkpoints")
                    .fetch_one(pool)
                    .await?
            }))
        }
        let at = DateTime::parse_from_rfc3339("2026-12-06T10:00:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let (read, stored) = run(&db, at).await.unwrap();
        assert_eq!(read, Micros(at));
        match db.backend() {
            Backend::Postgres => assert!(stored.starts_with("2026-12-06"), "{stored}"),
            Backend::Sqlite => assert_eq!(stored, at.timestamp_micros().to_string()),
        }
    }
}

//! Where each feed follower stands: one row per follower in
//! `projection_checkpoints` (the read models' and the audit trail's shared
//! position, each relay's), the same table and columns on both back ends.
//!
//! Written once for both: a follower that moves its checkpoint with its effects
//! does so on the [`Connection`] of its transaction; one that writes nothing else
//! (the relay, after its acknowledgements) saves on its own through the handle.
//! The write time is bound from Rust on both (microseconds, what both columns
//! keep), so no statement needs `now()`.

use chrono::{SubsecRound, Utc};
use keyledger_storage::{per_backend, with_readers, with_writer, Connection, Database};

use crate::feed::Position;

/// The live checkpoints table.
pub const TABLE: &str = "projection_checkpoints";

/// Where a follower stands, in the live table.
const READ: &str = "SELECT tx_id, global_position FROM projection_checkpoints WHERE name = $1";

/// Moves a follower's checkpoint, in the live table.
const SAVE: &str = "INSERT INTO projection_checkpoints (name, tx_id, global_position, updated_at)
     VALUES ($1, $2, $3, $4)
     ON CONFLICT (name) DO UPDATE
        SET tx_id = excluded.tx_id, global_position = excluded.global_position,
            updated_at = excluded.updated_at";

/// Where the follower `name` stands, read through the handle's readers;
/// [`Position::START`] when it never saved a position.
pub async fn checkpoint(db: &Database, name: &str) -> Result<Position, sqlx::Error> {
    let row: Option<(i64, i64)> = with_readers!(db, |pool| {
        sqlx::query_as(READ).bind(name).fetch_optional(pool).await?
    });
    Ok(position(row))
}

/// Records where the follower `name` stands, on its own (a follower that writes
/// nothing else, such as the NATS relay): one statement through the writer.
pub async fn save_checkpoint(
    db: &Database,
    name: &str,
    position: Position,
) -> Result<(), sqlx::Error> {
    with_writer!(db, |conn| {
        bind_save(sqlx::query(SAVE), name, position)
            .execute(&mut *conn)
            .await?;
    });
    Ok(())
}

/// [`checkpoint`] on `conn`, in the caller's transaction if any.
pub async fn checkpoint_on(conn: Connection<'_>, name: &str) -> Result<Position, sqlx::Error> {
    read_with(conn, READ, name).await
}

/// [`save_checkpoint`] on `conn`, in the caller's transaction (the one that
/// holds the follower's effects).
pub async fn save_checkpoint_on(
    conn: Connection<'_>,
    name: &str,
    position: Position,
) -> Result<(), sqlx::Error> {
    save_with(conn, SAVE, name, position).await
}

/// Several followers' checkpoints on `conn`, in the caller's transaction, in
/// one statement: a batch moves the read models' checkpoint and the relays'
/// together, and each statement is a round trip. Names must differ (a
/// statement cannot update one row twice); an empty list writes nothing.
pub async fn save_checkpoints_on(
    conn: Connection<'_>,
    checkpoints: &[(&str, Position)],
) -> Result<(), sqlx::Error> {
    if checkpoints.is_empty() {
        return Ok(());
    }
    let sql = save_many(checkpoints.len());
    per_backend!(conn, |conn| {
        let mut query = sqlx::query(&sql);
        for (name, position) in checkpoints {
            query = bind_save(query, name, *position);
        }
        query.execute(conn).await?;
    });
    Ok(())
}

/// [`SAVE`] for `rows` checkpoints: `$1..$4` for the first, `$5..$8` for the
/// second, and so on.
fn save_many(rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|row| {
            let n = row * 4;
            format!("(${}, ${}, ${}, ${})", n + 1, n + 2, n + 3, n + 4)
        })
        .collect();
    SAVE.replacen("($1, $2, $3, $4)", &values.join(", "), 1)
}

/// [`checkpoint_on`] from the checkpoints table `table` (a rebuild's scratch
/// copy; the qualified name as the caller's SQL spells it).
pub async fn checkpoint_in(
    conn: Connection<'_>,
    table: &str,
    name: &str,
) -> Result<Position, sqlx::Error> {
    read_with(conn, &READ.replace(TABLE, table), name).await
}

/// [`save_checkpoint_on`] into the checkpoints table `table`.
pub async fn save_checkpoint_in(
    conn: Connection<'_>,
    table: &str,
    name: &str,
    position: Position,
) -> Result<(), sqlx::Error> {
    save_with(conn, &SAVE.replace(TABLE, table), name, position).await
}

async fn read_with(conn: Connection<'_>, sql: &str, name: &str) -> Result<Position, sqlx::Error> {
    let row: Option<(i64, i64)> = per_backend!(conn, |conn| {
        sqlx::query_as(sql).bind(name).fetch_optional(conn).await?
    });
    Ok(position(row))
}

async fn save_with(
    conn: Connection<'_>,
    sql: &str,
    name: &str,
    position: Position,
) -> Result<(), sqlx::Error> {
    per_backend!(conn, |conn| {
        bind_save(sqlx::query(sql), name, position)
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// Binds `$1`..`$4` of the save, the same on both back ends.
fn bind_save<'q, DB: sqlx::Database>(
    query: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>,
    name: &'q str,
    position: Position,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    chrono::DateTime<Utc>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    query
        .bind(name)
        .bind(position.tx_id)
        .bind(position.global_position)
        .bind(Utc::now().trunc_subsecs(6))
}

fn position(row: Option<(i64, i64)>) -> Position {
    row.map_or(Position::START, |(tx_id, global_position)| Position {
        tx_id,
        global_position,
    })
}

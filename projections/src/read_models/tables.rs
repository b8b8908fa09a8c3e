//! Where the read-model tables are on SQLite, and creating them there: the
//! live tables in `main`, or a rebuild's scratch space (an `ATTACH`ed file, or
//! tables with a generation prefix beside the live ones). PostgreSQL's scratch
//! space is a schema put first on the `search_path`, so its statements need no
//! names: this is SQLite's half of that strategy.

use std::borrow::Cow;

use sqlx::SqliteConnection;

/// The SQLite DDL of every read model, a template: see [`install_into`].
pub const SQLITE_DDL: &str = include_str!("../../sql/read_models.sqlite.sql");

/// Where the read-model tables are in a SQLite connection: a schema (`main`, or
/// the name an `ATTACH DATABASE ... AS name` gave a scratch file) and a prefix of
/// every table and index name (empty, or e.g. `rb1732000000_` for a rebuild
/// beside the live tables in `main`).
///
/// Names are pasted into the SQL, so they are checked to be plain identifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteTables {
    schema: Cow<'static, str>,
    prefix: Cow<'static, str>,
}

/// A schema or prefix that is not a plain SQL identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a plain SQL name (ASCII letters, digits and `_`, not starting with a digit)")]
pub struct InvalidSqliteName(pub String);

impl SqliteTables {
    /// The live read models: unprefixed tables in `main`.
    pub const MAIN: SqliteTables = SqliteTables {
        schema: Cow::Borrowed("main"),
        prefix: Cow::Borrowed(""),
    };

    /// Tables named `<prefix><table>` in `schema`.
    pub fn new(schema: &str, prefix: &str) -> Result<Self, InvalidSqliteName> {
        let plain = |name: &str, may_be_empty: bool| {
            (may_be_empty && name.is_empty())
                || (name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && name.bytes().next().is_some_and(|b| !b.is_ascii_digit()))
        };
        if !plain(schema, false) {
            return Err(InvalidSqliteName(schema.to_owned()));
        }
        if !plain(prefix, true) {
            return Err(InvalidSqliteName(prefix.to_owned()));
        }
        Ok(Self {
            schema: Cow::Owned(schema.to_owned()),
            prefix: Cow::Owned(prefix.to_owned()),
        })
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A read-model table's qualified name, e.g. `"rebuild".users`, for SQL.
    pub fn table(&self, name: &str) -> String {
        format!("\"{}\".{}{name}", self.schema, self.prefix)
    }
}

/// Creates the tables of [`SQLITE_DDL`] that are missing from `tables` (each
/// with its indexes, named with the same prefix), and adds to a table that
/// exists the columns its section has and the table lacks (SQLite has no `ADD
/// COLUMN IF NOT EXISTS`): a column added to the DDL reaches older files
/// without further code. An existing table's indexes are left alone: after a
/// rebuild switch the live tables' indexes keep their generation-prefixed names
/// (SQLite cannot rename an index). Runs on the caller's connection, in the
/// caller's transaction if any.
pub async fn install_into(
    conn: &mut SqliteConnection,
    tables: &SqliteTables,
) -> Result<(), sqlx::Error> {
    let schema = format!("\"{}\"", tables.schema);
    for (table, section) in ddl_sections() {
        let name = format!("{}{table}", tables.prefix);
        let existing: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pragma_table_info($1, $2)")
                .bind(&name)
                .bind(tables.schema())
                .fetch_all(&mut *conn)
                .await?;
        if existing.is_empty() {
            let sql = section
                .replace("{schema}", &schema)
                .replace("{prefix}", &tables.prefix);
            sqlx::raw_sql(&sql).execute(&mut *conn).await?;
            continue;
        }
        for (column, definition) in column_definitions(section) {
            if !existing.iter().any(|c| c == column) {
                sqlx::raw_sql(&format!(
                    "ALTER TABLE {schema}.{name} ADD COLUMN {definition}"
                ))
                .execute(&mut *conn)
                .await?;
            }
        }
    }
    Ok(())
}

/// The `-- table: NAME` sections of [`SQLITE_DDL`] (table name, SQL), in order.
pub(crate) fn ddl_sections() -> Vec<(&'static str, &'static str)> {
    const HEADER: &str = "-- table: ";
    let ddl = SQLITE_DDL;
    let starts: Vec<usize> = ddl
        .match_indices(&format!("\n{HEADER}"))
        .map(|(i, _)| i + 1)
        .collect();
    starts
        .iter()
        .enumerate()
        .map(|(k, &start)| {
            let end = starts.get(k + 1).copied().unwrap_or(ddl.len());
            let section = &ddl[start..end];
            let name = section[HEADER.len()..]
                .lines()
                .next()
                .unwrap_or_default()
                .trim();
            (name, section)
        })
        .collect()
}

/// The column definitions of a section's `CREATE TABLE` (name, definition):
/// its lines between `(` and `)`, one column each.
fn column_definitions(section: &str) -> Vec<(&str, &str)> {
    section
        .lines()
        .skip_while(|line| line.trim() != "(")
        .skip(1)
        .take_while(|line| !line.trim_start().starts_with(')'))
        .filter_map(|line| {
            let definition = line.trim().trim_end_matches(',');
            let name = definition.split_whitespace().next()?;
            (!name.starts_with("--")).then_some((name, definition))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ddl_has_one_section_per_table() {
        let names: Vec<_> = ddl_sections().into_iter().map(|(name, _)| name).collect();
        assert_eq!(
            names,
            ["projection_checkpoints", "users", "sessions", "audit_trail"]
        );
        for (name, section) in ddl_sections() {
            assert!(section.contains(&format!("CREATE TABLE {{schema}}.{{prefix}}{name}\n")));
        }
        let (_, checkpoints) = ddl_sections()[0];
        assert_eq!(
            column_definitions(checkpoints),
            [
                ("name", "name            TEXT    PRIMARY KEY"),
                ("tx_id", "tx_id           INTEGER NOT NULL"),
                ("global_position", "global_position INTEGER NOT NULL"),
                ("updated_at", "updated_at      TEXT    NOT NULL"),
            ]
        );
    }

    #[test]
    fn only_plain_names_qualify_tables() {
        assert_eq!(SqliteTables::MAIN.table("users"), "\"main\".users");
        assert_eq!(
            SqliteTables::new("rebuild", "rb_1_")
                .unwrap()
                .table("users"),
            "\"rebuild\".rb_1_users"
        );
        for (schema, prefix) in [("", ""), ("main; DROP", ""), ("1db", ""), ("main", "x\"")] {
            assert!(
                SqliteTables::new(schema, prefix).is_err(),
                "{schema:?} {prefix:?}"
            );
        }
    }
}

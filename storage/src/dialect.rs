//! The SQL fragments that differ between the back ends, in one place: role code
//! writes one query text and asks the handle's [`Backend`] for these pieces.
//! Queries that need a fragment are built once, when their role is constructed,
//! never per request.

use crate::Backend;

impl Backend {
    /// The schema the live tables are in: `public` on PostgreSQL, `main` on
    /// SQLite. Tools qualify the tables they read with it, so neither a
    /// connection's search path (a rebuild's fresh schema) nor an attached file
    /// (its scratch space) can stand in for them.
    pub fn live_schema(self) -> &'static str {
        match self {
            Self::Postgres => "public",
            Self::Sqlite => "main",
        }
    }

    /// The text at `path` inside the JSON column `column`, written exactly as
    /// each back end's expression indexes are (`col -> 'a' ->> 'b'` on
    /// PostgreSQL, `col ->> '$.a.b'` on SQLite), so a query on it uses them.
    pub fn json_text(self, column: &str, path: &[&str]) -> String {
        match self {
            Self::Postgres => {
                let mut fragment = format!("({column}");
                for (n, key) in path.iter().enumerate() {
                    let arrow = if n + 1 == path.len() { "->>" } else { "->" };
                    fragment.push_str(&format!(" {arrow} '{key}'"));
                }
                fragment.push(')');
                fragment
            }
            Self::Sqlite => format!("({column} ->> '$.{}')", path.join(".")),
        }
    }

    /// An instant given as RFC 3339 text (a JSON field) or as a bound
    /// `DateTime<Utc>`, in a form that compares and orders as time: a
    /// `timestamptz` on PostgreSQL; seconds with millisecond precision on
    /// SQLite, whose `unixepoch` reads any number of fractional digits and `Z`
    /// or an offset. Apply it to both sides of a comparison.
    pub fn instant(self, expression: &str) -> String {
        match self {
            Self::Postgres => format!("({expression})::timestamptz"),
            Self::Sqlite => format!("unixepoch({expression}, 'subsec')"),
        }
    }

    /// "`expression` is one of the list bound at `parameter`" (a
    /// [`crate::List`]).
    pub fn any_of(self, expression: &str, parameter: &str) -> String {
        match self {
            Self::Postgres => format!("{expression} = ANY({parameter})"),
            Self::Sqlite => format!("{expression} IN (SELECT value FROM json_each({parameter}))"),
        }
    }

    /// A `SELECT` of the rows of a batch bound column by column, for one
    /// `INSERT ... SELECT` whatever the batch's size: on PostgreSQL one array
    /// per column (`$1`, `$2`, ...), unnested side by side, which binds in the
    /// binary format; on SQLite, which has no arrays, one JSON array of rows
    /// at `$1`, each row an array of its values in column order. `types` are
    /// the columns' PostgreSQL types; a `json`/`jsonb` value stays JSON text on
    /// SQLite. Ends in a `WHERE`, so SQLite reads an `ON CONFLICT` after it
    /// as the upsert's.
    pub fn batch_rows(self, types: &[&str]) -> String {
        self.batch_rows_from(types, 1)
    }

    /// [`Self::batch_rows`] with its parameters numbered from `$first`, for a
    /// statement that binds other values before them.
    pub fn batch_rows_from(self, types: &[&str], first: usize) -> String {
        match self {
            Self::Postgres => {
                let arrays: Vec<String> = types
                    .iter()
                    .enumerate()
                    .map(|(i, ty)| format!("${}::{ty}[]", first + i))
                    .collect();
                format!("SELECT * FROM UNNEST({}) WHERE true", arrays.join(", "))
            }
            Self::Sqlite => {
                let values: Vec<String> = types
                    .iter()
                    .enumerate()
                    .map(|(i, ty)| match *ty {
                        "json" | "jsonb" => format!("value -> {i}"),
                        _ => format!("value ->> {i}"),
                    })
                    .collect();
                format!(
                    "SELECT {} FROM json_each(${first}) WHERE true",
                    values.join(", ")
                )
            }
        }
    }

    /// What ends a `SELECT` whose rows a transaction is about to update while
    /// other writers may work beside it: PostgreSQL locks them and skips rows
    /// another transaction holds; SQLite's single writer already excludes
    /// every other writer, so it needs nothing.
    pub fn lock_rows_skipping_locked(self) -> &'static str {
        match self {
            Self::Postgres => " FOR UPDATE SKIP LOCKED",
            Self::Sqlite => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_paths_are_written_as_the_indexes_are() {
        assert_eq!(
            Backend::Postgres.json_text("s.payload", &["SessionStarted", "user_id"]),
            "(s.payload -> 'SessionStarted' ->> 'user_id')"
        );
        assert_eq!(
            Backend::Sqlite.json_text("s.payload", &["SessionStarted", "user_id"]),
            "(s.payload ->> '$.SessionStarted.user_id')"
        );
    }

    #[test]
    fn list_membership_and_instants() {
        assert_eq!(Backend::Postgres.any_of("id", "$1"), "id = ANY($1)");
        assert_eq!(
            Backend::Sqlite.any_of("id", "$1"),
            "id IN (SELECT value FROM json_each($1))"
        );
        assert_eq!(Backend::Postgres.instant("$2"), "($2)::timestamptz");
        assert_eq!(Backend::Sqlite.instant("$2"), "unixepoch($2, 'subsec')");
    }

    #[test]
    fn batch_rows_unnest_arrays_or_read_one_json_array() {
        assert_eq!(
            Backend::Postgres.batch_rows(&["uuid", "text", "jsonb"]),
            "SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::jsonb[]) WHERE true"
        );
        assert_eq!(
            Backend::Sqlite.batch_rows(&["uuid", "text", "jsonb"]),
            "SELECT value ->> 0, value ->> 1, value -> 2 FROM json_each($1) WHERE true"
        );
        assert_eq!(
            Backend::Postgres.batch_rows_from(&["uuid", "text"], 4),
            "SELECT * FROM UNNEST($4::uuid[], $5::text[]) WHERE true"
        );
    }
}

//! `sqlx::migrate!` embeds the migration files it finds when it is expanded, but
//! cargo does not know the directories: without this, a new migration file would
//! not reach an incremental build.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
    println!("cargo:rerun-if-changed=../migrations/sqlite");
}

//! Fresh databases of either kind for tests, and [`crate::on_both_back_ends!`],
//! which runs one test body on each.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use futures::FutureExt as _;
use sqlx::{Connection, Executor, PgPool};
use uuid::Uuid;

use crate::{Backend, Database, Durability, EmbeddedDatabase, EmbeddedSettings};

/// The PostgreSQL server tests create their databases on.
pub const POSTGRES_SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// A path of its own under the system's temporary directory, for a test's data
/// directory (not created).
pub fn temp_data_dir(purpose: &str) -> PathBuf {
    std::env::temp_dir().join(format!("keyledger-{purpose}-{}", Uuid::new_v4().simple()))
}

/// An embedded database's settings for a test: `readers` read connections, and
/// `normal` durability (a test has no power cut to survive, and runs faster).
pub fn embedded_settings(data_dir: &Path, readers: u32) -> EmbeddedSettings {
    EmbeddedSettings {
        data_dir: data_dir.to_owned(),
        durability: Durability::Normal,
        readers,
    }
}

/// A fresh, migrated database that [`Self::remove`] deletes again: its own
/// PostgreSQL database, or its own temporary data directory.
pub struct TestDatabase {
    database: Database,
    postgres_name: Option<String>,
    data_dir: Option<PathBuf>,
}

impl TestDatabase {
    /// Creates and migrates a database of `backend`.
    pub async fn create(backend: Backend) -> Self {
        match backend {
            Backend::Postgres => {
                let name = format!(
                    "keyledger_test_{}",
                    &Uuid::new_v4().simple().to_string()[..16]
                );
                admin_connection()
                    .await
                    .execute(format!("CREATE DATABASE {name}").as_str())
                    .await
                    .expect("a test database");
                let pool = PgPool::connect(&format!("{POSTGRES_SERVER}/{name}"))
                    .await
                    .expect("the test database");
                crate::migrate_postgres(&pool)
                    .await
                    .expect("migrations apply");
                Self {
                    database: Database::from_pool(pool),
                    postgres_name: Some(name),
                    data_dir: None,
                }
            }
            Backend::Sqlite => {
                let data_dir = temp_data_dir("test");
                let embedded = EmbeddedDatabase::open(&embedded_settings(&data_dir, 4))
                    .await
                    .expect("an embedded database in a temporary directory");
                Self {
                    database: Database::from_embedded(embedded),
                    postgres_name: None,
                    data_dir: Some(data_dir),
                }
            }
        }
    }

    /// The handle on it.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Closes and deletes the database.
    pub async fn remove(self) {
        self.database.close().await;
        drop(self.database);
        if let Some(name) = self.postgres_name {
            admin_connection()
                .await
                .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                .await
                .expect("the test database is dropped");
        }
        if let Some(data_dir) = self.data_dir {
            let _ = std::fs::remove_dir_all(data_dir);
        }
    }
}

async fn admin_connection() -> sqlx::PgConnection {
    sqlx::PgConnection::connect(&format!("{POSTGRES_SERVER}/postgres"))
        .await
        .expect("PostgreSQL on 127.0.0.1:5432")
}

/// Runs `test` on a fresh database of `backend` and removes it afterwards,
/// also when the test fails.
pub async fn with_database<F, Fut>(backend: Backend, test: F)
where
    F: FnOnce(Database) -> Fut,
    Fut: Future<Output = ()>,
{
    let fresh = TestDatabase::create(backend).await;
    let outcome = AssertUnwindSafe(test(fresh.database().clone()))
        .catch_unwind()
        .await;
    fresh.remove().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// `async fn name(db) { … }` becomes `mod name` with one test per back end,
/// `postgres` and `sqlite`, each given its own fresh `db: Database`.
/// `#[multi_thread]` before it runs both on a multi-threaded runtime. The
/// calling crate needs tokio with its `macros` feature.
#[macro_export]
macro_rules! on_both_back_ends {
    (async fn $name:ident($db:ident) $body:block) => {
        $crate::on_both_back_ends!(@expand [tokio::test] $name $db $body);
    };
    (#[multi_thread] async fn $name:ident($db:ident) $body:block) => {
        $crate::on_both_back_ends!(
            @expand [tokio::test(flavor = "multi_thread", worker_threads = 4)] $name $db $body
        );
    };
    (@expand [$($test:tt)*] $name:ident $db:ident $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[$($test)*]
            async fn postgres() {
                $crate::testing::with_database($crate::Backend::Postgres, |$db| async move $body)
                    .await;
            }

            #[$($test)*]
            async fn sqlite() {
                $crate::testing::with_database($crate::Backend::Sqlite, |$db| async move $body)
                    .await;
            }
        }
    };
}

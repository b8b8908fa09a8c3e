//! The embedded engine: one SQLite database in a data directory, for development
//! and single-node use without a database server.
//!
//! One process owns a data directory at a time (`server.lock`, an OS file lock
//! that dies with the process, even on `kill -9`). Inside it every write goes
//! through a single writer connection, so writers queue fairly in the pool rather
//! than in SQLite's sleeping busy handler, and positions handed out under that
//! lock are commit order. Readers have their own pool; in WAL mode they never
//! block the writer.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::appender::AppendQueue;
use crate::turn::Turns;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};
use tokio::sync::watch;

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "keyledger.db";
/// The lock file a server holds while it runs.
pub const LOCK_FILE: &str = "server.lock";
/// How long a connection waits for another process's write lock (the replay
/// tools) before the request answers 503.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// When a commit is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Every commit syncs the WAL: survives power loss, like PostgreSQL's
    /// `synchronous_commit = on`.
    #[default]
    Full,
    /// Survives a crash of the process (kill -9) but may lose the last commits on
    /// power loss; for disposable data.
    Normal,
}

impl FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "full" => Ok(Self::Full),
            "normal" => Ok(Self::Normal),
            other => Err(format!("expected full or normal, got {other:?}")),
        }
    }
}

/// Where and how the embedded store keeps its data.
#[derive(Debug, Clone)]
pub struct EmbeddedSettings {
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// Connections for reads (the writer is always one more).
    pub readers: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "data directory {0} is in use by another Keyledger process (it holds {LOCK_FILE}); \
         stop it first"
    )]
    InUse(PathBuf),
    /// A tool was pointed at a data directory that holds no database (tools
    /// never create one beside a server).
    #[error("no embedded database at {0}")]
    Missing(PathBuf),
    #[error("embedded database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("embedded database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Counts commits that wrote events, so in-process feed followers wake at once
/// (the embedded counterpart of PostgreSQL's NOTIFY).
#[derive(Clone)]
pub struct CommitSignal(Arc<watch::Sender<u64>>);

impl CommitSignal {
    pub fn new() -> Self {
        Self(Arc::new(watch::channel(0).0))
    }

    /// Called by the appender after each commit.
    pub fn committed(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver for a feed follower.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

impl Default for CommitSignal {
    fn default() -> Self {
        Self::new()
    }
}

/// An open embedded store.
#[derive(Clone)]
pub struct EmbeddedDatabase {
    writer: SqlitePool,
    readers: SqlitePool,
    commits: CommitSignal,
    appends: AppendQueue,
    turns: Turns,
    path: PathBuf,
    _lock: Option<Arc<File>>,
}

impl std::fmt::Debug for EmbeddedDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedDatabase")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl EmbeddedDatabase {
    /// Opens (creating it when missing) the data directory's database for a
    /// server: takes the directory's lock, applies the migrations.
    pub async fn open(settings: &EmbeddedSettings) -> Result<Self, EmbeddedError> {
        let lock = lock_data_dir(&settings.data_dir)?;
        let mut db = Self::open_unlocked(settings).await?;
        db._lock = Some(Arc::new(lock));
        Ok(db)
    }

    /// Opens without taking the directory's lock, for tools that work beside a
    /// running server (reads) or that take it themselves.
    pub async fn open_unlocked(settings: &EmbeddedSettings) -> Result<Self, EmbeddedError> {
        let path = settings.data_dir.join(DATABASE_FILE);
        create_private_dir(&settings.data_dir)?;
        create_private_file(&path)?;
        // SQLite gives its -wal and -shm files the database file's mode; ones left
        // by an older version are tightened like the database.
        for suffix in ["-wal", "-shm"] {
            let mut companion = path.clone().into_os_string();
            companion.push(suffix);
            restrict(Path::new(&companion), PRIVATE_FILE)?;
        }
        let options = connect_options(&path, settings.durability);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .connect_with(options.clone().create_if_missing(true))
            .await?;
        sqlx::migrate!("../migrations/sqlite").run(&writer).await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(settings.readers.max(1))
            .connect_with(options.read_only(true))
            .await?;
        let commits = CommitSignal::new();
        Ok(Self {
            appends: AppendQueue::start(writer.clone(), commits.clone()),
            writer,
            readers,
            commits,
            turns: Turns::default(),
            path,
            _lock: None,
        })
    }

    /// Opens a data directory's existing database for a tool that only reads,
    /// beside a running server or not: the directory's lock is not taken,
    /// nothing is created or migrated, and every connection is read-only (the
    /// writer too), so a write fails rather than compete with the server. In
    /// WAL mode readers neither block the server's writer nor wait for it.
    pub async fn open_read_only(data_dir: &Path, readers: u32) -> Result<Self, EmbeddedError> {
        let path = existing_database(data_dir)?;
        // The durability setting only matters for writes; these never write.
        let options = connect_options(&path, Durability::Full).read_only(true);
        let readers = SqlitePoolOptions::new()
            .max_connections(readers.max(1))
            .acquire_timeout(TOOL_ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        Ok(Self::beside_server(readers.clone(), readers, path))
    }

    /// Opens a data directory's existing database for a tool that writes
    /// beside a running server (a rebuild): the directory's lock is not taken
    /// and nothing is created or migrated (a tool newer than the server must
    /// not change the server's schema under it). Its single writer waits for
    /// the server's through the busy timeout, as another process's would; its
    /// readers are read-only.
    pub async fn open_beside_server(data_dir: &Path, readers: u32) -> Result<Self, EmbeddedError> {
        let path = existing_database(data_dir)?;
        let options = connect_options(&path, Durability::Full);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(TOOL_ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(readers.max(1))
            .acquire_timeout(TOOL_ACQUIRE_TIMEOUT)
            .connect_with(options.read_only(true))
            .await?;
        Ok(Self::beside_server(writer, readers, path))
    }

    /// The same database again, with pools of its own on the calling runtime
    /// (a tool's reading thread runs one of its own): the same connection
    /// settings, read-only where this handle's are; nothing locked, created or
    /// migrated. The writer connects only if it is used.
    pub async fn reopen(&self, readers: u32) -> Result<Self, EmbeddedError> {
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(TOOL_ACQUIRE_TIMEOUT)
            .connect_lazy_with((*self.writer.connect_options()).clone());
        let readers = SqlitePoolOptions::new()
            .max_connections(readers.max(1))
            .acquire_timeout(TOOL_ACQUIRE_TIMEOUT)
            .connect_with((*self.readers.connect_options()).clone())
            .await?;
        Ok(Self::beside_server(writer, readers, self.path.clone()))
    }

    /// A handle of a process that does not own the data directory: its commit
    /// signal never fires for the owner's commits and its appender is idle.
    fn beside_server(writer: SqlitePool, readers: SqlitePool, path: PathBuf) -> Self {
        let commits = CommitSignal::new();
        Self {
            appends: AppendQueue::start(writer.clone(), commits.clone()),
            writer,
            readers,
            commits,
            turns: Turns::default(),
            path,
            _lock: None,
        }
    }

    /// The one connection every write of this process goes through. Write
    /// transactions start with `BEGIN IMMEDIATE`, so none is ever upgraded from a
    /// read (which fails at once with SQLITE_BUSY_SNAPSHOT instead of waiting).
    pub fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// A write transaction on the writer, `BEGIN IMMEDIATE`: it takes the write
    /// lock up front (waiting up to the busy timeout for another process), so it
    /// can never fail half-way for having started as a read.
    pub async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.writer.begin_with("BEGIN IMMEDIATE").await
    }

    /// Connections for reads only.
    pub fn readers(&self) -> &SqlitePool {
        &self.readers
    }

    /// The event log's group committer (every append of this process).
    pub fn appends(&self) -> &AppendQueue {
        &self.appends
    }

    /// The process's exclusive turns on this database.
    pub(crate) fn turns(&self) -> &Turns {
        &self.turns
    }

    /// Wakes in-process feed followers after a commit.
    pub fn commits(&self) -> &CommitSignal {
        &self.commits
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes both pools (the WAL is checkpointed when the last connection
    /// closes).
    pub async fn close(&self) {
        self.readers.close().await;
        self.writer.close().await;
    }
}

/// The connection settings every embedded connection uses.
pub fn connect_options(path: &Path, durability: Durability) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(match durability {
            Durability::Full => SqliteSynchronous::Full,
            Durability::Normal => SqliteSynchronous::Normal,
        })
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true)
        // Deleted and overwritten content is zeroed in the file rather than left
        // in free space: an erased person's rows must not survive as free pages.
        .pragma("secure_delete", "ON")
}

/// How long a tool waits for one of its own pooled connections: a tool runs one
/// command at a time, so a longer wait means something is stuck.
const TOOL_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The database file of a data directory that must already hold one.
fn existing_database(data_dir: &Path) -> Result<PathBuf, EmbeddedError> {
    let path = data_dir.join(DATABASE_FILE);
    if path.is_file() {
        Ok(path)
    } else {
        Err(EmbeddedError::Missing(path))
    }
}

/// Takes the data directory's lock, held for as long as the returned file lives.
pub fn lock_data_dir(data_dir: &Path) -> Result<File, EmbeddedError> {
    create_private_dir(data_dir)?;
    let path = data_dir.join(LOCK_FILE);
    let file = private_file_options()
        .open(&path)
        .map_err(|source| EmbeddedError::DataDir {
            path: path.clone(),
            source,
        })?;
    restrict(&path, PRIVATE_FILE)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(EmbeddedError::InUse(data_dir.to_owned())),
        Err(TryLockError::Error(source)) => Err(EmbeddedError::DataDir { path, source }),
    }
}

/// Mode of the data directory: only the server's user may list or enter it.
const PRIVATE_DIR: u32 = 0o700;
/// Mode of the files in it (database, WAL, lock): the database holds the
/// sealed personal data's keys and the password hashes.
const PRIVATE_FILE: u32 = 0o600;

/// Creates the data directory (and missing parents) with mode 0700, and takes
/// group and other permissions off one created by an older version (0755).
fn create_private_dir(data_dir: &Path) -> Result<(), EmbeddedError> {
    let fail = |source| EmbeddedError::DataDir {
        path: data_dir.to_owned(),
        source,
    };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, PRIVATE_DIR);
    builder.create(data_dir).map_err(fail)?;
    restrict(data_dir, PRIVATE_DIR)
}

/// Options that create a missing file with mode 0600 (an existing one keeps its
/// contents).
fn private_file_options() -> std::fs::OpenOptions {
    let mut options = File::options();
    options.create(true).truncate(false).write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, PRIVATE_FILE);
    options
}

/// Creates the database file with mode 0600 before SQLite opens it (SQLite would
/// create it 0644 less the umask), or tightens an existing one.
fn create_private_file(path: &Path) -> Result<(), EmbeddedError> {
    private_file_options()
        .open(path)
        .map_err(|source| EmbeddedError::DataDir {
            path: path.to_owned(),
            source,
        })?;
    restrict(path, PRIVATE_FILE)
}

/// Sets `mode` on `path` when it grants anything to group or others; a missing
/// path is left missing.
fn restrict(path: &Path, mode: u32) -> Result<(), EmbeddedError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let fail = |source| EmbeddedError::DataDir {
            path: path.to_owned(),
            source,
        };
        match std::fs::metadata(path) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                    .map_err(fail)?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(e)),
        }
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_server_cannot_open_a_data_dir_in_use() {
        let dir = crate::testing::temp_data_dir("lock");
        let settings = crate::testing::embedded_settings(&dir, 2);
        let first = EmbeddedDatabase::open(&settings).await.unwrap();
        let second = EmbeddedDatabase::open(&settings).await;
        assert!(matches!(second, Err(EmbeddedError::InUse(_))), "{second:?}");
        first.close().await;
        drop(first);
        EmbeddedDatabase::open(&settings)
            .await
            .unwrap()
            .close()
            .await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn tools_open_a_data_dir_beside_its_server_read_only_or_for_writing() {
        let dir = std::env::temp_dir().join(format!("keyledger-tools-{}", uuid::Uuid::new_v4()));
        let missing = EmbeddedDatabase::open_read_only(&dir, 1).await;
        assert!(
            matches!(missing, Err(EmbeddedError::Missing(_))),
            "{missing:?}"
        );
        assert!(!dir.exists(), "a tool creates nothing");
        let server = EmbeddedDatabase::open(&crate::testing::embedded_settings(&dir, 1))
            .await
            .unwrap();

        let reader = EmbeddedDatabase::open_read_only(&dir, 1).await.unwrap();
        let write = "INSERT INTO projection_handover (name, requested_at) VALUES ('t', 'x')";
        assert!(sqlx::query(write).execute(reader.writer()).await.is_err());
        let again = reader.reopen(1).await.unwrap();
        assert!(sqlx::query(write).execute(again.readers()).await.is_err());

        let writer = EmbeddedDatabase::open_beside_server(&dir, 1).await.unwrap();
        sqlx::query(write).execute(writer.writer()).await.unwrap();
        let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_handover")
            .fetch_one(again.readers())
            .await
            .unwrap();
        assert_eq!(seen, 1);

        for db in [again, reader, writer, server] {
            db.close().await;
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}

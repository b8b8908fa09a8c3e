//! What the tests that run the `keyledger` binary as a child process share. Each
//! test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::Child;
use std::time::{Duration, Instant};

use sqlx::migrate::MigrateDatabase;
use sqlx::Postgres;

/// Drops the Postgres database at `url`, connections and all. For `Drop`
/// impls: it runs on a thread of its own, so it works whether or not the
/// dropping thread is inside a Tokio runtime.
pub fn force_drop_postgres_database(url: String) {
    let _ = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(Postgres::force_drop_database(&url))
    })
    .join();
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("address")
        .port()
}

/// A running server process, killed when dropped so a failed test leaves none
/// behind.
pub struct ServerProcess {
    pub child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
}

impl ServerProcess {
    /// Waits until `/health/ready` answers 2xx; fails at once if the process
    /// exited, and after a minute otherwise.
    pub async fn ready(&mut self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("child status") {
                panic!("the server exited before it was ready: {status}");
            }
            if let Ok(r) = client
                .get(format!("{}/health/ready", self.base))
                .send()
                .await
            {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "the server did not get ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

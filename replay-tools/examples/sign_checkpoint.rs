//! Signs one chain checkpoint of `DATABASE_URL` (PostgreSQL) now, as the server's signer would,
//! with the audit key in the file named by the first argument (created when
//! missing). Without `DATABASE_URL`, the embedded store of `KEYLEDGER_DATA_DIR`
//! is signed (its lock is taken: the server must be stopped). For measuring
//! `keyledger-replay verify` on a seeded database without running the server:
//!
//! ```sh
//! cargo run --release -p keyledger-replay-tools --example sign_checkpoint -- /tmp/audit.paserk
//! keyledger-replay verify --audit-key-file /tmp/audit.paserk
//! ```

use std::sync::Arc;

use keyledger_projections::{AuditKey, ChainSigner};
use keyledger_storage::{Database, Durability, EmbeddedDatabase, EmbeddedSettings};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: sign_checkpoint <audit key file>")?;
    let secret = match std::fs::read_to_string(&path) {
        Ok(secret) => secret,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (secret, _) = AuditKey::generate()?;
            std::fs::write(&path, &secret)?;
            secret
        }
        Err(e) => return Err(e.into()),
    };
    let key = Arc::new(AuditKey::from_paserk(&secret)?);
    // Kept open (with its lock, for the embedded store) until the signature is
    // written.
    let db = match std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
    {
        Some(url) => Database::from_pool(keyledger_replay_tools::connect(&url).await?),
        None => {
            let data_dir = std::env::var_os("KEYLEDGER_DATA_DIR")
                .ok_or("set DATABASE_URL (PostgreSQL) or KEYLEDGER_DATA_DIR (embedded) to sign")?;
            Database::from_embedded(
                EmbeddedDatabase::open(&EmbeddedSettings {
                    data_dir: data_dir.into(),
                    durability: Durability::Full,
                    readers: 2,
                })
                .await?,
            )
        }
    };
    let started = std::time::Instant::now();
    let signed = ChainSigner::new(db.clone(), key.clone()).sign_now().await;
    db.close().await;
    match signed? {
        Some(c) => println!(
            "signed checkpoint #{} over {} events in {:.2}s; audit public key {}",
            c.id,
            c.state.event_count,
            started.elapsed().as_secs_f64(),
            key.public_key().paserk()
        ),
        None => println!("nothing new to sign"),
    }
    Ok(())
}

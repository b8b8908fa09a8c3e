//! Signs one chain checkpoint of `DATABASE_URL` (PostgreSQL) now, as the server's signer would,
//! with the audit key in the file named by the first argument (created when
//! missing). For measuring `keyledger-replay verify` on a seeded database without
//! running the server:
//!
//! ```sh
//! cargo run --release -p keyledger-replay-tools --example sign_checkpoint -- /tmp/audit.paserk
//! keyledger-replay verify --audit-key-file /tmp/audit.paserk
//! ```

use std::sync::Arc;

use keyledger_projections::{AuditKey, ChainSigner, ReadStore};

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
    let url = std::env::var("DATABASE_URL")
        .map_err(|_| "set DATABASE_URL to the PostgreSQL database to sign")?;
    let pool = keyledger_replay_tools::connect(&url).await?;
    let started = std::time::Instant::now();
    match ChainSigner::new(ReadStore::Postgres(pool), key.clone())
        .sign_now()
        .await?
    {
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

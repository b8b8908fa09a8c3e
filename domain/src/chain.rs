//! The per-aggregate hash chain's canonical bytes (decision 0007).
//!
//! PostgreSQL computes a chain hash in a trigger; the embedded store has no SHA-256
//! in SQL, so its appender computes it here, and `keyledger-replay verify` checks
//! both with this one function. Keeping it in the domain means the write side and
//! the read side cannot drift apart.

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The "previous hash" of the first event of every aggregate.
pub const ZERO_HASH: Hash = [0; 32];

/// What an event's chain hash covers, borrowed from wherever the event is, so that
/// checking a row costs no allocation.
#[derive(Debug, Clone, Copy)]
pub struct CanonicalEvent<'a> {
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub sequence: i64,
    pub event_type: &'a str,
    pub event_version: &'a str,
    /// The stored JSON text, byte for byte: re-serialising would change it.
    pub payload: &'a str,
    /// The stored JSON text, byte for byte.
    pub metadata: &'a str,
    /// `recorded_at` in microseconds since 1970 (PostgreSQL's precision).
    pub recorded_at_micros: i64,
    /// The writing transaction (PostgreSQL) or 0 (embedded).
    pub tx_id: i64,
    pub global_position: i64,
}

impl CanonicalEvent<'_> {
    /// `sha256(previous || canonical bytes)`, exactly as the PostgreSQL trigger
    /// computes it: texts as a 4-byte big-endian length and their UTF-8 bytes,
    /// numbers as 8 bytes big-endian, in the order of the migration's
    /// `event_chain_canonical`.
    pub fn chain_hash(&self, previous: &Hash) -> Hash {
        let mut hasher = Sha256::new();
        hasher.update(previous);
        text(&mut hasher, self.aggregate_type);
        text(&mut hasher, self.aggregate_id);
        hasher.update(self.sequence.to_be_bytes());
        text(&mut hasher, self.event_type);
        text(&mut hasher, self.event_version);
        text(&mut hasher, self.payload);
        text(&mut hasher, self.metadata);
        hasher.update(self.recorded_at_micros.to_be_bytes());
        hasher.update(self.tx_id.to_be_bytes());
        hasher.update(self.global_position.to_be_bytes());
        hasher.finalize().into()
    }
}

fn text(hasher: &mut Sha256, value: &str) {
    // Both stores limit a value to 1 GB, so the length always fits.
    hasher.update((value.len() as u32).to_be_bytes());
    hasher.update(value.as_bytes());
}

//! Raw Argon2id verification rate at the server's default parameters, on every core.
//!
//! This is the ceiling for `POST /v1/auth/login`: every successful login costs exactly
//! one verification, so the server cannot log people in faster than this machine can
//! verify passwords. `bench/run.sh` prints it beside the measured login rate.
//!
//! ```sh
//! cargo run --release -p keyledger-commands --example argon2_rate -- [SECONDS] [THREADS] [reuse|alloc]
//! ```
//!
//! SECONDS defaults to 10, THREADS to the number of available cores. `reuse` (the
//! default) gives each thread one preallocated work area, as the server's hashing
//! threads do; `alloc` calls argon2's `verify_password`, which allocates the work
//! area on every call. The parameters are
//! those of `HasherSettings::default()` (m=19456 KiB, t=2, p=1), or the server's
//! `KEYLEDGER_ARGON2_MEMORY_KIB` / `_ITERATIONS` / `_PARALLELISM` when those are set.
//! The last line of output is machine-readable: `verifications_per_second=<float>`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
use keyledger_commands::HasherSettings;

fn env_u32(name: &str, default: u32) -> u32 {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("argon2_rate: {name}={v:?} is not a number");
            std::process::exit(2)
        }),
        Err(_) => default,
    }
}

fn arg<T: std::str::FromStr>(index: usize, what: &str, default: T) -> T {
    match std::env::args().nth(index) {
        None => default,
        Some(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("argon2_rate: {what} must be a positive number, got {v:?}");
            eprintln!("usage: argon2_rate [SECONDS] [THREADS]");
            std::process::exit(2)
        }),
    }
}

/// CPU time this thread has run, from Linux's schedstat (None elsewhere). Unlike the
/// wall clock it does not grow when other processes take the cores, so the CPU cost
/// of one verification stays comparable on a busy machine.
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

fn main() {
    let defaults = HasherSettings::default();
    let memory_kib = env_u32("KEYLEDGER_ARGON2_MEMORY_KIB", defaults.memory_kib);
    let iterations = env_u32("KEYLEDGER_ARGON2_ITERATIONS", defaults.iterations);
    let parallelism = env_u32("KEYLEDGER_ARGON2_PARALLELISM", defaults.parallelism);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let seconds: f64 = arg(1, "SECONDS", 10.0);
    let threads: usize = arg(2, "THREADS", cores);
    let reuse = match std::env::args().nth(3).as_deref() {
        None | Some("reuse") => true,
        Some("alloc") => false,
        Some(other) => {
            eprintln!("argon2_rate: the mode is reuse or alloc, not {other:?}");
            std::process::exit(2)
        }
    };
    if seconds.is_nan() || seconds <= 0.0 || threads == 0 {
        eprintln!("usage: argon2_rate [SECONDS>0] [THREADS>0] [reuse|alloc]");
        std::process::exit(2);
    }

    let params = Params::new(memory_kib, iterations, parallelism, None).unwrap_or_else(|e| {
        eprintln!("argon2_rate: invalid parameters: {e}");
        std::process::exit(2)
    });
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let password = b"correct horse battery staple";
    let phc = argon2
        .hash_password(password)
        .expect("hashing with valid parameters succeeds")
        .to_string();
    // Sanity: the right password verifies, a wrong one does not.
    assert!(argon2.verify_password(password, phc.as_str()).is_ok());
    assert!(argon2.verify_password(b"wrong", phc.as_str()).is_err());

    let parsed = PasswordHash::new(&phc).expect("a PHC string we just made parses");
    let salt = parsed
        .salt
        .expect("the hash has a salt")
        .as_ref()
        .to_owned();
    let expected = parsed
        .hash
        .expect("the hash has an output")
        .as_bytes()
        .to_owned();
    let block_count = params.block_count();

    println!(
        "argon2id m={memory_kib} KiB t={iterations} p={parallelism}: {threads} thread(s) \
         on {cores} core(s), {seconds} s, work area {}",
        if reuse {
            "reused per thread"
        } else {
            "allocated per call"
        }
    );

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (argon2, phc, stop, done) =
                (argon2.clone(), phc.clone(), stop.clone(), done.clone());
            let (salt, expected) = (salt.clone(), expected.clone());
            std::thread::spawn(move || {
                let mut blocks = if reuse {
                    vec![Block::default(); block_count]
                } else {
                    Vec::new()
                };
                let mut out = vec![0u8; expected.len()];
                let cpu_start = thread_cpu();
                let mut slowest = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let ok = if reuse {
                        argon2
                            .hash_password_into_with_memory(password, &salt, &mut out, &mut blocks)
                            .is_ok()
                            && out == expected
                    } else {
                        argon2.verify_password(password, phc.as_str()).is_ok()
                    };
                    assert!(ok, "verification failed");
                    slowest = slowest.max(t.elapsed());
                    done.fetch_add(1, Ordering::Relaxed);
                }
                let cpu = cpu_start
                    .zip(thread_cpu())
                    .map(|(a, b)| b.saturating_sub(a));
                (slowest, cpu)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let results: Vec<_> = workers
        .into_iter()
        .map(|w| w.join().expect("worker panicked"))
        .collect();
    let slowest = results.iter().map(|r| r.0).max().unwrap_or_default();
    let cpu: Option<Duration> = results.iter().map(|r| r.1).sum();
    // Count every verification that finished, over the time until the last one did.
    let elapsed = start.elapsed().as_secs_f64();
    let total = done.load(Ordering::Relaxed);
    let rate = total as f64 / elapsed;
    println!(
        "{total} verifications in {elapsed:.2} s: {rate:.1}/s in all, {:.1}/s per thread, \
         mean {:.1} ms, slowest {:.1} ms per verification",
        rate / threads as f64,
        elapsed * 1000.0 * threads as f64 / total.max(1) as f64,
        slowest.as_secs_f64() * 1000.0
    );
    if let Some(cpu) = cpu.filter(|_| total > 0) {
        let per = cpu.as_secs_f64() * 1000.0 / total as f64;
        println!(
            "CPU time {:.2} s: {per:.2} ms of CPU per verification (wall-clock independent)",
            cpu.as_secs_f64()
        );
        println!("cpu_ms_per_verification={per:.3}");
    }
    println!("verifications_per_second={rate:.1}");
}

//! Making a failed login for an unknown email take as long as one for a real account.
//!
//! Both spend one password check (the unknown email against a dummy hash), but a real
//! account also costs storage work the unknown email has nothing to do with: loading
//! the account before the check and, after a wrong password, committing the
//! `LoginFailed` event (a durable write: about 2 ms more, enough to tell accounts
//! apart from outside). That write has to stay on the response path: the lockout
//! counts it before the next attempt for the address gets its turn, and moving it
//! behind the answer would let later requests (a logout, a suspension) race it.
//!
//! So the unknown-email path waits instead, for as long as the real path's extra
//! work took: a duration drawn at random from the last [`SAMPLES`] measured ones.
//! Drawing from the real measurements makes the unknown path's extra time follow the
//! same distribution as the real path's, under whatever load the server has now,
//! rather than a fixed figure that is right at one load only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many recent measurements a [`Durations`] keeps.
pub const SAMPLES: usize = 128;

/// The most recent durations of one step, to draw from.
pub struct Durations {
    ring: Mutex<Ring>,
}

struct Ring {
    micros: [u32; SAMPLES],
    len: usize,
    next: usize,
}

impl Durations {
    pub fn new() -> Self {
        Self {
            ring: Mutex::new(Ring {
                micros: [0; SAMPLES],
                len: 0,
                next: 0,
            }),
        }
    }

    pub fn record(&self, took: Duration) {
        let micros = u32::try_from(took.as_micros()).unwrap_or(u32::MAX);
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let next = ring.next;
        ring.micros[next] = micros;
        ring.next = (next + 1) % SAMPLES;
        ring.len = (ring.len + 1).min(SAMPLES);
    }

    /// One of the recorded durations, each as likely; zero before the first.
    pub fn sample(&self) -> Duration {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len == 0 {
            return Duration::ZERO;
        }
        // A failure of the system's random source leaves the first sample: still a
        // real duration, only less varied.
        let index = getrandom::u32().unwrap_or(0) as usize % ring.len;
        Duration::from_micros(u64::from(ring.micros[index]))
    }
}

impl Default for Durations {
    fn default() -> Self {
        Self::new()
    }
}

/// What a failed login for a real account costs beyond what an unknown one does.
#[derive(Default)]
pub struct LoginTimings {
    /// Loading the account (every login for a known address does it).
    pub load: Durations,
    /// Recording a wrong password: sealing the metadata and committing the event.
    pub record_failure: Durations,
    /// How late a [`Self::pause`] has been ending lately (a moving average, in
    /// microseconds), taken off the next one.
    late_micros: AtomicU64,
}

impl LoginTimings {
    /// Waits `duration`, as measured by the caller. The async timer ticks in whole
    /// milliseconds, as coarse as the difference being hidden, so this sleeps on a
    /// blocking thread instead; that thread and then this task must be scheduled
    /// again afterwards, which on a busy machine takes long enough to matter, so
    /// the recent average of that lateness is taken off the wait.
    pub async fn pause(&self, duration: Duration) {
        if duration.is_zero() {
            return;
        }
        let late = Duration::from_micros(self.late_micros.load(Ordering::Relaxed));
        let asked = duration.saturating_sub(late);
        let started = Instant::now();
        if !asked.is_zero() {
            let _ = tokio::task::spawn_blocking(move || std::thread::sleep(asked)).await;
        }
        let late_now = u64::try_from(started.elapsed().saturating_sub(asked).as_micros())
            .unwrap_or(u64::MAX / 2);
        // An exponential moving average (weight 1/8); concurrent pauses may
        // overwrite each other's update, which only slows the average down.
        let average = self.late_micros.load(Ordering::Relaxed);
        self.late_micros
            .store(average - average / 8 + late_now / 8, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn nothing_recorded_means_no_wait() {
        assert_eq!(Durations::new().sample(), Duration::ZERO);
    }

    #[test]
    fn samples_are_drawn_from_the_most_recent_measurements() {
        let durations = Durations::new();
        for ms in 0..(SAMPLES as u64 + 50) {
            durations.record(Duration::from_millis(ms));
        }
        // The first 50 have been replaced.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let sample = durations.sample();
            assert!(sample >= Duration::from_millis(50), "{sample:?}");
            assert!(sample < Duration::from_millis(SAMPLES as u64 + 50));
            seen.insert(sample);
        }
        // Drawn across the whole window, not one value.
        assert!(seen.len() > SAMPLES / 2, "{}", seen.len());
    }

    #[tokio::test]
    async fn a_pause_waits_about_its_duration_and_a_zero_one_not_at_all() {
        let timings = LoginTimings::default();
        let wanted = Duration::from_micros(1_700);
        let started = Instant::now();
        timings.pause(wanted).await;
        // The first pause knows of no lateness yet: it waits at least as asked.
        assert!(started.elapsed() >= wanted);
        // Nothing to wait: no wait at all.
        let started = Instant::now();
        timings.pause(Duration::ZERO).await;
        assert!(started.elapsed() < Duration::from_millis(1));
    }
}

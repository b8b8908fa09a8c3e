//! A circuit breaker per provider. When a provider is down, every sign-in with it would
//! otherwise wait for the full timeout and hold a worker; an open breaker answers at once,
//! and after a cool-down lets a single call through to see whether the provider is back.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where the breaker reads the time; tests drive it by hand.
pub(crate) trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// The cool-down is over and one trial call is out; others are refused until it ends.
    HalfOpen,
}

/// Whether a failure opened the breaker (the caller logs that, once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    StillClosed,
    Opened,
}

pub(crate) struct Breaker<C: Clock = SystemClock> {
    state: Mutex<State>,
    threshold: u32,
    cooldown: Duration,
    clock: C,
}

impl Breaker<SystemClock> {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker::with_clock(threshold, cooldown, SystemClock)
    }
}

impl<C: Clock> Breaker<C> {
    pub(crate) fn with_clock(threshold: u32, cooldown: Duration, clock: C) -> Self {
        Breaker {
            state: Mutex::new(State::Closed { failures: 0 }),
            // A threshold of 0 would open before any call was made.
            threshold: threshold.max(1),
            cooldown,
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a plain value, always left consistent: a panic elsewhere cannot
        // have torn it, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// May a call go out now? Once the cool-down is over the first caller gets the trial
    /// call; later callers are refused until that call reports back.
    pub(crate) fn try_acquire(&self) -> bool {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if self.clock.now() >= until => {
                *state = State::HalfOpen;
                true
            }
            State::Open { .. } | State::HalfOpen => false,
        }
    }

    /// Is the breaker refusing calls right now? For steps that make no network call (an
    /// authorization URL from cached metadata): they must not take the half-open trial,
    /// which belongs to a call that can show whether the provider is back.
    pub(crate) fn is_open(&self) -> bool {
        match *self.lock() {
            State::Closed { .. } => false,
            State::Open { until } => self.clock.now() < until,
            State::HalfOpen => true,
        }
    }

    pub(crate) fn record_success(&self) {
        *self.lock() = State::Closed { failures: 0 };
    }

    pub(crate) fn record_failure(&self) -> Outcome {
        let mut state = self.lock();
        let open = State::Open {
            until: self.clock.now() + self.cooldown,
        };
        match *state {
            State::Closed { failures } if failures + 1 >= self.threshold => {
                *state = open;
                Outcome::Opened
            }
            State::Closed { failures } => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                Outcome::StillClosed
            }
            State::HalfOpen => {
                *state = open;
                Outcome::Opened
            }
            // A call let through before the breaker opened has failed as well: already open.
            State::Open { .. } => Outcome::StillClosed,
        }
    }

    /// A call that ended without deciding anything about the provider's health (it answered,
    /// but refused the code) must still end a half-open trial, or the breaker would refuse
    /// every call from then on. An answer proves the provider is up, so it closes.
    pub(crate) fn record_neutral(&self) {
        let mut state = self.lock();
        if *state == State::HalfOpen {
            *state = State::Closed { failures: 0 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone)]
    struct FakeClock(Arc<Mutex<Instant>>);

    impl FakeClock {
        fn new() -> Self {
            FakeClock(Arc::new(Mutex::new(Instant::now())))
        }
        fn advance(&self, d: Duration) {
            *self.0.lock().unwrap() += d;
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Instant {
            *self.0.lock().unwrap()
        }
    }

    fn breaker() -> (Breaker<FakeClock>, FakeClock) {
        let clock = FakeClock::new();
        (
            Breaker::with_clock(3, Duration::from_secs(30), clock.clone()),
            clock,
        )
    }

    #[test]
    fn opens_after_the_configured_consecutive_failures() {
        let (b, _) = breaker();
        assert_eq!(b.record_failure(), Outcome::StillClosed);
        assert_eq!(b.record_failure(), Outcome::StillClosed);
        assert!(b.try_acquire());
        assert_eq!(b.record_failure(), Outcome::Opened);
        assert!(b.is_open());
        assert!(!b.try_acquire());
    }

    #[test]
    fn is_open_does_not_take_the_trial_call() {
        let (b, clock) = breaker();
        assert!(!b.is_open());
        for _ in 0..3 {
            b.record_failure();
        }
        clock.advance(Duration::from_secs(30));
        assert!(!b.is_open());
        assert!(!b.is_open());
        assert!(b.try_acquire());
        assert!(b.is_open(), "the trial is out");
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let (b, _) = breaker();
        b.record_failure();
        b.record_failure();
        b.record_success();
        b.record_failure();
        b.record_failure();
        assert!(b.try_acquire());
    }

    #[test]
    fn after_the_cooldown_only_one_trial_call_goes_through() {
        let (b, clock) = breaker();
        for _ in 0..3 {
            b.record_failure();
        }
        clock.advance(Duration::from_secs(29));
        assert!(!b.try_acquire());
        clock.advance(Duration::from_secs(1));
        assert!(b.try_acquire());
        assert!(!b.try_acquire(), "a second caller waits for the trial");
    }

    #[test]
    fn a_successful_trial_closes_the_breaker() {
        let (b, clock) = breaker();
        for _ in 0..3 {
            b.record_failure();
        }
        clock.advance(Duration::from_secs(30));
        assert!(b.try_acquire());
        b.record_success();
        assert!(b.try_acquire());
        assert!(b.try_acquire());
        // And it takes the full count of failures to open again.
        assert_eq!(b.record_failure(), Outcome::StillClosed);
    }

    #[test]
    fn a_failed_trial_reopens_for_another_cooldown() {
        let (b, clock) = breaker();
        for _ in 0..3 {
            b.record_failure();
        }
        clock.advance(Duration::from_secs(30));
        assert!(b.try_acquire());
        assert_eq!(b.record_failure(), Outcome::Opened);
        assert!(!b.try_acquire());
        clock.advance(Duration::from_secs(29));
        assert!(!b.try_acquire());
        clock.advance(Duration::from_secs(1));
        assert!(b.try_acquire());
    }

    #[test]
    fn a_refused_trial_closes_because_the_provider_answered() {
        let (b, clock) = breaker();
        for _ in 0..3 {
            b.record_failure();
        }
        clock.advance(Duration::from_secs(30));
        assert!(b.try_acquire());
        b.record_neutral();
        assert!(b.try_acquire());
    }

    #[test]
    fn a_zero_threshold_still_lets_the_first_call_out() {
        let b = Breaker::with_clock(0, Duration::from_secs(1), FakeClock::new());
        assert!(b.try_acquire());
        assert_eq!(b.record_failure(), Outcome::Opened);
    }
}

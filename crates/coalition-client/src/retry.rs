//! When a call is sent again, and how long the client waits before it does.

use std::time::Duration;

use tonic::Code;

/// How often and how patiently a failed call is sent again. Only the failures of
/// [`is_retryable`] are retried, and only with the very same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 turns retries off.
    pub attempts_max: u32,
    /// The wait before the first retry; it doubles for each further one.
    pub backoff_initial: Duration,
    /// The longest wait between two attempts.
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    /// Eight attempts, waiting 50 ms, 100 ms, … up to 2 s between them: about 5 s in all,
    /// the time a server takes to restart.
    fn default() -> Self {
        Self {
            attempts_max: 8,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// No retries: every failure is returned at once.
    pub fn never() -> Self {
        Self {
            attempts_max: 1,
            ..Self::default()
        }
    }

    /// The wait after the `failures`-th failed attempt (1 for the first): doubling from
    /// `backoff_initial`, capped at `backoff_max`, minus up to a quarter at random so that
    /// many clients cut off together do not come back together.
    pub fn backoff(&self, failures: u32) -> Duration {
        let doubled = self
            .backoff_initial
            .saturating_mul(1_u32 << failures.saturating_sub(1).min(20));
        let wait = doubled.min(self.backoff_max);
        let jitter = wait.as_nanos() as u64 / 4;
        if jitter == 0 {
            return wait;
        }
        wait - Duration::from_nanos(random() % jitter)
    }
}

/// Whether a failed call may have failed only for the moment, so that the same bytes are sent
/// again: `UNAVAILABLE` (the server is starting, stopping, or its database did not answer),
/// `DEADLINE_EXCEEDED`, and any failure of the connection itself (refused, reset, dropped
/// mid-call), which tonic reports with the transport error as the status's source. A
/// status the server sent for a reason of its own (`INVALID_ARGUMENT`, `RESOURCE_EXHAUSTED`,
/// `UNAUTHENTICATED`, `PERMISSION_DENIED`, `NOT_FOUND`, `INTERNAL`) is not retried.
///
/// Resending is always safe for submissions: the server answers the same body with its
/// original result ([`crate::Outcome::Duplicate`]), so a transaction whose answer was lost is
/// booked once however often it is sent.
pub fn is_retryable(status: &tonic::Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => true,
        Code::Unknown | Code::Internal | Code::Cancelled => {
            std::error::Error::source(status).is_some()
        }
        _ => false,
    }
}

fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos()),
    );
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_up_to_its_cap_and_jitter_only_shortens_it() {
        let policy = RetryPolicy::default();
        for (failures, full) in [
            (1, 50),
            (2, 100),
            (3, 200),
            (6, 1600),
            (7, 2000),
            (40, 2000),
        ] {
            let full = Duration::from_millis(full);
            for _ in 0..50 {
                let wait = policy.backoff(failures);
                assert!(wait <= full && wait >= full * 3 / 4, "{failures}: {wait:?}");
            }
        }
    }

    #[test]
    fn only_passing_failures_are_retried() {
        assert!(is_retryable(&tonic::Status::unavailable("restarting")));
        assert!(is_retryable(&tonic::Status::deadline_exceeded("slow")));
        for refused in [
            tonic::Status::invalid_argument("bad"),
            tonic::Status::resource_exhausted("too large"),
            tonic::Status::unauthenticated("who"),
            tonic::Status::permission_denied("no"),
            tonic::Status::internal("bug"),
            tonic::Status::unknown("sent by the server"),
        ] {
            assert!(!is_retryable(&refused), "{refused:?}");
        }
        let transport = tonic::Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert!(is_retryable(&transport), "{transport:?}");
    }
}

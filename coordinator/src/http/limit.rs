//! A rate limit per API token, and a short-lived cache of token lookups.
//!
//! Every authenticated request takes a slot of its token's budget ([`RateLimiter`]: a GCRA
//! token bucket, [`API_REQUESTS_PER_SEC`] a second with a burst of [`API_BURST`]); a request
//! over the budget *waits* for its slot, and only one that would wait longer than
//! [`API_MAX_WAIT`] is refused (429, `rate_limited`, with `Retry-After`). Unauthenticated
//! `/metrics` scrapes share one budget. Why: the API and the rounds share the coordinator's
//! CPU, and a reader polling as fast as it can would otherwise take as much of it as the
//! scheduler leaves (`coordinator/benches/api_readers.rs`: 100 unpaced readers made rounds
//! 16% slower on 2 cores); a console refreshing every second stays far below the budget.
//!
//! Tokens are looked up in the database at most once per [`TOKEN_CACHE_TTL`] per token
//! ([`TokenCache`]), so a revoked token stops working within that time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::http::tokens::Caller;

/// Requests a second one token may make, sustained.
pub const API_REQUESTS_PER_SEC: f64 = 200.0;

/// Requests one token may make at once above the sustained rate.
pub const API_BURST: u32 = 50;

/// The longest a request waits for its token's slot before it is refused.
pub const API_MAX_WAIT: Duration = Duration::from_secs(5);

/// How long a token lookup is reused (and so how long a revoked token may still work).
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(1);

/// Budgets kept before stale ones are dropped.
const MAX_KEYS: usize = 10_000;

/// A request that would wait longer than [`API_MAX_WAIT`] for its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    /// When a retry would find a slot.
    pub retry_after: Duration,
}

/// Per-key token buckets (GCRA: each key keeps its theoretical arrival time).
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    tolerance: Duration,
    max_wait: Duration,
    tat: Mutex<HashMap<[u8; 32], Instant>>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new(API_REQUESTS_PER_SEC, API_BURST, API_MAX_WAIT)
    }
}

impl RateLimiter {
    /// `per_sec` requests a second per key, `burst` at once above it, waits of at most
    /// `max_wait`.
    pub fn new(per_sec: f64, burst: u32, max_wait: Duration) -> Self {
        let interval = Duration::from_secs_f64(1.0 / per_sec.max(1e-3));
        Self {
            interval,
            tolerance: interval * burst,
            max_wait,
            tat: Mutex::new(HashMap::new()),
        }
    }

    /// The instant `key`'s next request may run, reserving it; `Err` (nothing reserved) when
    /// that is more than the longest wait away.
    pub fn reserve(&self, key: [u8; 32], now: Instant) -> Result<Instant, Limited> {
        let mut tat = self.tat.lock().unwrap_or_else(|p| p.into_inner());
        if tat.len() > MAX_KEYS {
            tat.retain(|_, t| *t > now);
        }
        let next = tat.get(&key).copied().unwrap_or(now).max(now);
        let at = if next > now + self.tolerance {
            next - self.tolerance
        } else {
            now
        };
        if at > now + self.max_wait {
            return Err(Limited {
                retry_after: at - now,
            });
        }
        tat.insert(key, next + self.interval);
        Ok(at)
    }

    /// Waits for `key`'s next slot.
    pub async fn acquire(&self, key: [u8; 32]) -> Result<(), Limited> {
        let at = self.reserve(key, Instant::now())?;
        tokio::time::sleep_until(at).await;
        Ok(())
    }
}

/// Token lookups (by the token's SHA-256), each reused for [`TOKEN_CACHE_TTL`].
#[derive(Debug, Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<[u8; 32], CachedLookup>>,
}

/// A lookup's result and when it was made.
type CachedLookup = (Option<Caller>, Instant);

impl TokenCache {
    /// The cached lookup of `hash`, if still fresh.
    pub fn get(&self, hash: &[u8; 32], now: Instant) -> Option<Option<Caller>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(hash)
            .filter(|(_, at)| now.saturating_duration_since(*at) < TOKEN_CACHE_TTL)
            .map(|(c, _)| c.clone())
    }

    /// Keeps a lookup.
    pub fn put(&self, hash: [u8; 32], caller: Option<Caller>, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() > MAX_KEYS {
            entries.retain(|_, (_, at)| now.saturating_duration_since(*at) < TOKEN_CACHE_TTL);
        }
        entries.insert(hash, (caller, now));
    }

    /// Forgets every lookup (after a revocation in this process).
    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst passes at once, then requests are spaced by the interval, and a request that
    /// would wait longer than the limit is refused without taking a slot.
    #[test]
    fn the_bucket_spaces_requests_after_a_burst() {
        let limiter = RateLimiter::new(10.0, 3, Duration::from_secs(1));
        let now = Instant::now();
        let key = [1; 32];
        for _ in 0..=3 {
            assert_eq!(limiter.reserve(key, now), Ok(now));
        }
        // The burst is spent: 100 ms apart from here.
        let next = limiter.reserve(key, now).unwrap();
        assert_eq!(next - now, Duration::from_millis(100));
        for _ in 0..9 {
            limiter.reserve(key, now).unwrap();
        }
        // 1 s of waiting queued: the next is refused, and refusing takes no slot.
        let refused = limiter.reserve(key, now).unwrap_err();
        assert!(refused.retry_after > Duration::from_secs(1));
        assert_eq!(limiter.reserve(key, now).unwrap_err(), refused);
        // Another key has its own budget.
        assert_eq!(limiter.reserve([2; 32], now), Ok(now));
        // After a quiet second the burst is back.
        let later = now + Duration::from_secs(3);
        assert_eq!(limiter.reserve(key, later), Ok(later));
    }
}

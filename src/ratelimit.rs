//! Login throttling: failed logins are counted per username and per client
//! address in fixed windows, in memory, per instance.
//!
//! Only failures count, so a burst of correct logins is never throttled; a
//! success clears its username's counter but not its address's, so an
//! attacker cannot reset the address limit by logging into their own account.
//! Memory is bounded: expired windows are pruned as the map is used, and no
//! more than [`MAX_KEYS`] keys are tracked per kind.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most usernames (and, separately, addresses) tracked at once.
pub const MAX_KEYS: usize = 100_000;

/// How many failures within a window are allowed, per key kind.
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    /// Failures per username per window.
    pub per_username: u32,
    /// Failures per client address per window.
    pub per_address: u32,
    /// Window length.
    pub window: Duration,
}

impl Default for LoginLimits {
    /// 5 failures per username and 20 per address, per 5 minutes.
    fn default() -> Self {
        Self {
            per_username: 5,
            per_address: 20,
            window: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

/// Failure counters for one kind of key.
struct Counters<K> {
    map: HashMap<K, Window>,
    last_prune: Instant,
}

impl<K: std::hash::Hash + Eq + Clone> Counters<K> {
    fn new(now: Instant) -> Self {
        Self {
            map: HashMap::new(),
            last_prune: now,
        }
    }

    /// Seconds until `key` may try again, when it is at `limit`.
    fn blocked_for(&self, key: &K, limit: u32, window: Duration, now: Instant) -> Option<u64> {
        let w = self.map.get(key)?;
        let elapsed = now.saturating_duration_since(w.started);
        if elapsed >= window || w.failures < limit {
            return None;
        }
        // Round up so a client that waits exactly Retry-After gets in.
        let left = window - elapsed;
        Some(left.as_secs() + u64::from(left.subsec_nanos() > 0))
    }

    fn fail(&mut self, key: &K, window: Duration, now: Instant) {
        self.prune(window, now);
        let fresh = Window {
            started: now,
            failures: 1,
        };
        if let Some(w) = self.map.get_mut(key) {
            if now.saturating_duration_since(w.started) < window {
                w.failures += 1;
            } else {
                *w = fresh;
            }
        } else if self.map.len() < MAX_KEYS {
            // At the cap a new key goes untracked rather than growing memory;
            // the other kind of key still limits the attempt.
            self.map.insert(key.clone(), fresh);
        }
    }

    /// Drops expired windows, at most once per window length unless full.
    fn prune(&mut self, window: Duration, now: Instant) {
        let due = now.saturating_duration_since(self.last_prune) >= window;
        if due || self.map.len() >= MAX_KEYS {
            self.map
                .retain(|_, w| now.saturating_duration_since(w.started) < window);
            self.last_prune = now;
        }
    }
}

struct Inner {
    usernames: Counters<String>,
    addresses: Counters<IpAddr>,
}

/// Shared by every login request of this instance.
pub struct LoginLimiter {
    limits: LoginLimits,
    inner: Mutex<Inner>,
}

impl LoginLimiter {
    /// A limiter with `limits`.
    pub fn new(limits: LoginLimits) -> Self {
        let now = Instant::now();
        Self {
            limits,
            inner: Mutex::new(Inner {
                usernames: Counters::new(now),
                addresses: Counters::new(now),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The counters stay consistent even if a holder panicked.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checked before a login does any work; `username` as for [`Self::failed`].
    ///
    /// # Errors
    /// The seconds to wait (for `Retry-After`) when the username or the
    /// address has used up its failures.
    pub fn check(&self, username: Option<&str>, address: Option<IpAddr>) -> Result<(), u64> {
        self.check_at(username, address, Instant::now())
    }

    fn check_at(
        &self,
        username: Option<&str>,
        address: Option<IpAddr>,
        now: Instant,
    ) -> Result<(), u64> {
        let l = self.limits;
        let inner = self.lock();
        let by_name = username.and_then(|u| {
            inner
                .usernames
                .blocked_for(&u.to_owned(), l.per_username, l.window, now)
        });
        let by_addr = address.and_then(|a| {
            inner
                .addresses
                .blocked_for(&a, l.per_address, l.window, now)
        });
        match by_name.max(by_addr) {
            Some(secs) => Err(secs.max(1)),
            None => Ok(()),
        }
    }

    /// Counts a failed login against the username and the address. Pass
    /// `None` for a username that could never exist (it needs no limit of
    /// its own, and arbitrary strings must not become keys).
    pub fn failed(&self, username: Option<&str>, address: Option<IpAddr>) {
        self.failed_at(username, address, Instant::now());
    }

    fn failed_at(&self, username: Option<&str>, address: Option<IpAddr>, now: Instant) {
        let window = self.limits.window;
        let mut inner = self.lock();
        inner.addresses.prune(window, now);
        inner.usernames.prune(window, now);
        if let Some(u) = username {
            inner.usernames.fail(&u.to_owned(), window, now);
        }
        if let Some(a) = address {
            inner.addresses.fail(&a, window, now);
        }
    }

    /// A successful login clears its username's failures (not its address's).
    pub fn succeeded(&self, username: &str) {
        self.lock().usernames.map.remove(username);
    }

    /// Keys tracked right now (usernames, addresses), for tests.
    pub fn tracked(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.usernames.map.len(), inner.addresses.map.len())
    }
}

impl Default for LoginLimiter {
    fn default() -> Self {
        Self::new(LoginLimits::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter() -> LoginLimiter {
        LoginLimiter::new(LoginLimits {
            per_username: 3,
            per_address: 5,
            window: Duration::from_secs(60),
        })
    }

    const IP: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));

    #[test]
    fn username_is_blocked_after_its_failures_until_the_window_ends() {
        let l = limiter();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check_at(Some("alice"), None, t0).is_ok());
            l.failed_at(Some("alice"), None, t0);
        }
        assert_eq!(l.check_at(Some("alice"), None, t0), Err(60));
        assert_eq!(
            l.check_at(Some("alice"), None, t0 + Duration::from_millis(30_500)),
            Err(30)
        );
        assert!(l.check_at(Some("bob"), None, t0).is_ok());
        assert!(l
            .check_at(Some("alice"), None, t0 + Duration::from_secs(60))
            .is_ok());
    }

    #[test]
    fn address_is_blocked_across_usernames_and_success_does_not_reset_it() {
        let l = limiter();
        let t0 = Instant::now();
        for i in 0..5 {
            l.failed_at(Some(&format!("user{i}")), IP, t0);
            l.succeeded(&format!("user{i}"));
        }
        assert!(l.check_at(Some("someone-else"), IP, t0).is_err());
        assert!(l.check_at(Some("someone-else"), None, t0).is_ok());
    }

    #[test]
    fn success_resets_the_username() {
        let l = limiter();
        let t0 = Instant::now();
        for _ in 0..3 {
            l.failed_at(Some("carol"), None, t0);
        }
        l.succeeded("carol");
        assert!(l.check_at(Some("carol"), None, t0).is_ok());
    }

    #[test]
    fn expired_windows_are_pruned() {
        let l = limiter();
        let t0 = Instant::now();
        for i in 0..100 {
            l.failed_at(Some(&format!("u{i}")), IP, t0);
        }
        assert_eq!(l.tracked(), (100, 1));
        l.failed_at(Some("late"), None, t0 + Duration::from_secs(61));
        assert_eq!(l.tracked(), (1, 0));
    }
}

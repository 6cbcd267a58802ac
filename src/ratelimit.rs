//! Login throttling: failed logins are counted per username and per client
//! address in fixed windows, in memory, per instance.
//!
//! Counting is atomic (SPEC §6): [`LoginLimiter::begin`] reserves a place
//! for the attempt under both limits before the password is verified, and an
//! attempt that finds every place taken by attempts still in flight waits for
//! one of them to settle. So a burst of parallel guesses is limited exactly
//! like the same guesses in sequence, and a burst of parallel correct logins
//! goes through like the same logins in sequence (never throttled: a correct
//! login gives its place back). A success also clears its username's failures
//! but not its address's, so an attacker cannot reset the address limit by
//! logging into their own account. An attempt that ends in neither (the
//! database failed) gives its place back too.
//!
//! Memory is bounded: expired windows are pruned as the map is used, and no
//! more than [`MAX_KEYS`] keys are tracked per kind.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Most usernames (and, separately, addresses) tracked at once.
pub const MAX_KEYS: usize = 100_000;

/// Longest an attempt waits for a place held by attempts in flight; past it
/// the answer is 429 with a one-second `Retry-After`.
const MAX_QUEUE_WAIT: Duration = Duration::from_secs(30);

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
    /// Settled failures in this window.
    failures: u32,
    /// Attempts in flight, whatever window they started in.
    pending: u32,
}

/// What one key's counters say about a new attempt.
enum Verdict {
    /// A place is free.
    Go,
    /// The failures are used up: wait this many seconds.
    Blocked(u64),
    /// Every place is held by attempts in flight.
    Wait,
}

/// Counters for one kind of key.
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

    fn verdict(&self, key: &K, limit: u32, window: Duration, now: Instant) -> Verdict {
        let Some(w) = self.map.get(key) else {
            return Verdict::Go;
        };
        let elapsed = now.saturating_duration_since(w.started);
        let failures = if elapsed >= window { 0 } else { w.failures };
        if failures >= limit {
            // Round up so a client that waits exactly Retry-After gets in.
            let left = window - elapsed;
            Verdict::Blocked(left.as_secs() + u64::from(left.subsec_nanos() > 0))
        } else if failures + w.pending >= limit {
            Verdict::Wait
        } else {
            Verdict::Go
        }
    }

    /// Reserves a place; `false` if the key went untracked (at the cap).
    fn reserve(&mut self, key: &K, now: Instant) -> bool {
        if let Some(w) = self.map.get_mut(key) {
            w.pending += 1;
            true
        } else if self.map.len() < MAX_KEYS {
            let fresh = Window {
                started: now,
                failures: 0,
                pending: 1,
            };
            self.map.insert(key.clone(), fresh);
            true
        } else {
            // At the cap a new key goes untracked rather than growing memory;
            // the other kind of key still limits the attempt.
            false
        }
    }

    /// Settles a reserved place: a failure counts in the current window.
    fn settle(&mut self, key: &K, failed: bool, window: Duration, now: Instant) {
        let Some(w) = self.map.get_mut(key) else {
            return;
        };
        w.pending = w.pending.saturating_sub(1);
        if failed {
            if now.saturating_duration_since(w.started) >= window {
                w.started = now;
                w.failures = 0;
            }
            w.failures += 1;
        }
    }

    /// Drops expired windows with nothing in flight, at most once per window
    /// length unless full.
    fn prune(&mut self, window: Duration, now: Instant) {
        let due = now.saturating_duration_since(self.last_prune) >= window;
        if due || self.map.len() >= MAX_KEYS {
            self.map
                .retain(|_, w| w.pending > 0 || now.saturating_duration_since(w.started) < window);
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
    /// Notified whenever an attempt settles, for attempts waiting for a place.
    settled: Notify,
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
            settled: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The counters stay consistent even if a holder panicked.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a login attempt: reserves a place under both limits, waiting
    /// while every place is held by attempts in flight. Pass `None` for a
    /// username that could never exist (it needs no limit of its own, and
    /// arbitrary strings must not become keys). Settle the attempt with
    /// [`Attempt::failed`] or [`Attempt::succeeded`]; dropped unsettled, it
    /// gives its place back.
    ///
    /// # Errors
    /// The seconds to wait (for `Retry-After`) when the username or the
    /// address has used up its failures.
    pub async fn begin(
        &self,
        username: Option<&str>,
        address: Option<IpAddr>,
    ) -> Result<Attempt<'_>, u64> {
        let deadline = tokio::time::Instant::now() + MAX_QUEUE_WAIT;
        loop {
            // Registered before the check, so a settle in between is not missed.
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if let Some(outcome) = self.try_begin(username, address, Instant::now()) {
                return outcome;
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                return Err(1);
            }
        }
    }

    /// One try of [`Self::begin`]; `None` when it has to wait.
    fn try_begin(
        &self,
        username: Option<&str>,
        address: Option<IpAddr>,
        now: Instant,
    ) -> Option<Result<Attempt<'_>, u64>> {
        let l = self.limits;
        let mut inner = self.lock();
        inner.addresses.prune(l.window, now);
        inner.usernames.prune(l.window, now);
        let name = username.map(str::to_owned);
        let verdicts = [
            name.as_ref()
                .map(|u| inner.usernames.verdict(u, l.per_username, l.window, now)),
            address.map(|a| inner.addresses.verdict(&a, l.per_address, l.window, now)),
        ];
        let blocked = verdicts
            .iter()
            .filter_map(|v| match v {
                Some(Verdict::Blocked(secs)) => Some(*secs),
                _ => None,
            })
            .max();
        if let Some(secs) = blocked {
            return Some(Err(secs.max(1)));
        }
        if verdicts.iter().any(|v| matches!(v, Some(Verdict::Wait))) {
            return None;
        }
        let name = name.filter(|u| inner.usernames.reserve(u, now));
        let addr = address.filter(|a| inner.addresses.reserve(a, now));
        Some(Ok(Attempt {
            limiter: self,
            name,
            addr,
            settled: false,
        }))
    }

    /// Settles `attempt`'s places and wakes the attempts waiting for one.
    fn settle(&self, attempt: &Attempt<'_>, outcome: Outcome) {
        let window = self.limits.window;
        let now = Instant::now();
        {
            let mut inner = self.lock();
            if let Some(a) = &attempt.addr {
                inner
                    .addresses
                    .settle(a, outcome == Outcome::Failed, window, now);
            }
            if let Some(u) = &attempt.name {
                inner
                    .usernames
                    .settle(u, outcome == Outcome::Failed, window, now);
                if outcome == Outcome::Succeeded {
                    if let Some(w) = inner.usernames.map.get_mut(u) {
                        w.failures = 0;
                    }
                }
            }
        }
        self.settled.notify_waiters();
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Failed,
    Succeeded,
    /// Neither: the attempt could not be decided.
    Abandoned,
}

/// A login attempt holding a place under the limits until it settles.
#[must_use = "an attempt dropped unsettled gives its place back"]
pub struct Attempt<'a> {
    limiter: &'a LoginLimiter,
    /// The username, if tracked.
    name: Option<String>,
    /// The address, if tracked.
    addr: Option<IpAddr>,
    settled: bool,
}

impl Attempt<'_> {
    /// The credentials were wrong: a failure against both keys.
    pub fn failed(mut self) {
        self.settled = true;
        self.limiter.settle(&self, Outcome::Failed);
    }

    /// The credentials were right: the places are given back and the
    /// username's failures cleared.
    pub fn succeeded(mut self) {
        self.settled = true;
        self.limiter.settle(&self, Outcome::Succeeded);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.limiter.settle(self, Outcome::Abandoned);
        }
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

    fn fail(l: &LoginLimiter, user: &str, addr: Option<IpAddr>, at: Instant) {
        match l.try_begin(Some(user), addr, at) {
            Some(Ok(attempt)) => attempt.failed(),
            _ => panic!("attempt for {user} refused"),
        }
    }

    fn refused(l: &LoginLimiter, user: &str, addr: Option<IpAddr>, at: Instant) -> Option<u64> {
        match l.try_begin(Some(user), addr, at) {
            Some(Err(secs)) => Some(secs),
            _ => None,
        }
    }

    #[test]
    fn username_is_blocked_after_its_failures_until_the_window_ends() {
        let l = limiter();
        let t0 = Instant::now();
        for _ in 0..3 {
            fail(&l, "alice", None, t0);
        }
        assert_eq!(refused(&l, "alice", None, t0), Some(60));
        assert_eq!(
            refused(&l, "alice", None, t0 + Duration::from_millis(30_500)),
            Some(30)
        );
        assert_eq!(refused(&l, "bob", None, t0), None);
        assert_eq!(
            refused(&l, "alice", None, t0 + Duration::from_secs(60)),
            None
        );
    }

    #[test]
    fn attempts_in_flight_hold_their_places_until_they_settle() {
        let l = limiter();
        let t0 = Instant::now();
        let held: Vec<_> = (0..3)
            .map(|_| match l.try_begin(Some("alice"), None, t0) {
                Some(Ok(a)) => a,
                _ => panic!("first three go"),
            })
            .collect();
        // A fourth must wait: neither refused nor let through.
        assert!(l.try_begin(Some("alice"), None, t0).is_none());
        held.into_iter().for_each(Attempt::failed);
        assert!(refused(&l, "alice", None, t0).is_some());
    }

    #[test]
    fn an_unsettled_attempt_gives_its_place_back() {
        let l = limiter();
        let t0 = Instant::now();
        for _ in 0..10 {
            drop(l.try_begin(Some("dave"), IP, t0));
        }
        assert!(matches!(l.try_begin(Some("dave"), IP, t0), Some(Ok(_))));
    }

    #[test]
    fn address_is_blocked_across_usernames_and_success_does_not_reset_it() {
        let l = limiter();
        let t0 = Instant::now();
        for i in 0..4 {
            fail(&l, &format!("user{i}"), IP, t0);
        }
        // A correct login from the same address clears nothing of the address's.
        match l.try_begin(Some("owner"), IP, t0) {
            Some(Ok(a)) => a.succeeded(),
            _ => panic!("the fifth attempt goes"),
        }
        fail(&l, "user4", IP, t0);
        assert!(refused(&l, "someone-else", IP, t0).is_some());
        assert_eq!(refused(&l, "someone-else", None, t0), None);
    }

    #[test]
    fn success_resets_the_username() {
        let l = limiter();
        let t0 = Instant::now();
        for _ in 0..2 {
            fail(&l, "carol", None, t0);
        }
        match l.try_begin(Some("carol"), None, t0) {
            Some(Ok(a)) => a.succeeded(),
            _ => panic!("third attempt goes"),
        }
        for _ in 0..3 {
            fail(&l, "carol", None, t0);
        }
    }

    #[tokio::test]
    async fn parallel_guesses_wait_then_are_refused_and_parallel_successes_all_pass() {
        let l = std::sync::Arc::new(limiter());
        let guesses = (0..20).map(|_| {
            let l = l.clone();
            tokio::spawn(async move {
                let attempt = l.begin(Some("erin"), IP).await.map_err(|_| ())?;
                tokio::task::yield_now().await;
                attempt.failed();
                Ok::<_, ()>(())
            })
        });
        let results = futures_util::future::join_all(guesses).await;
        let passed = results.iter().filter(|r| matches!(r, Ok(Ok(())))).count();
        assert_eq!(passed, 3, "only the username's failures get through");

        let l = std::sync::Arc::new(limiter());
        let logins = (0..50).map(|i| {
            let l = l.clone();
            tokio::spawn(async move {
                let attempt = l
                    .begin(Some(&format!("u{}", i % 5)), IP)
                    .await
                    .map_err(|_| ())?;
                tokio::task::yield_now().await;
                attempt.succeeded();
                Ok::<_, ()>(())
            })
        });
        let results = futures_util::future::join_all(logins).await;
        assert!(results.iter().all(|r| matches!(r, Ok(Ok(())))));
    }

    #[test]
    fn expired_windows_are_pruned() {
        let l = limiter();
        let t0 = Instant::now();
        for i in 0..100 {
            fail(&l, &format!("u{i}"), None, t0);
        }
        fail(&l, "x", IP, t0);
        assert_eq!(l.tracked(), (101, 1));
        fail(&l, "late", None, t0 + Duration::from_secs(61));
        assert_eq!(l.tracked(), (1, 0));
    }
}

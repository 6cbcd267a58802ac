//! Abuse limits (SPEC §6): how fast one user may send, one address may
//! register, one member may create rooms; how many sockets one user may hold
//! and how many rooms one socket may join.
//!
//! Rates are GCRA token buckets (the `governor` crate), in memory, per
//! instance: a user spread over several instances may send at each
//! instance's rate. Past a limit the answer is HTTP 429 `rate_limited` with
//! `Retry-After`, or over WebSocket an `error` `rate_limited` (the socket
//! stays open). `0` turns a limit off (benchmarks, trusted clients). Keys
//! whose bucket is full again are dropped every minute, so memory follows
//! the clients active in the last minute, not every client ever seen.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::ids::UserId;

/// Rooms one WebSocket may have joined at once (fixed by the SPEC).
pub const MAX_ROOMS_PER_SOCKET: usize = 1000;

/// How often buckets that refilled are forgotten ([`Limits::prune`]).
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The limits as configured (SPEC §6 "Abuse limits"); `0` is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbuseSettings {
    /// Messages per second per user, HTTP and WebSocket together
    /// (`CHATPOOL_SEND_RATE`, default 10).
    pub send_rate: u32,
    /// Messages a user may send at once above the rate (`CHATPOOL_SEND_BURST`, default 30).
    pub send_burst: u32,
    /// Registrations per client address per minute, and room creations per
    /// member per minute (`CHATPOOL_REGISTER_RATE`, default 30).
    pub register_rate: u32,
    /// WebSocket sessions per user on one instance
    /// (`CHATPOOL_MAX_SOCKETS_PER_USER`, default 20).
    pub max_sockets_per_user: u32,
}

impl Default for AbuseSettings {
    fn default() -> Self {
        Self {
            send_rate: 10,
            send_burst: 30,
            register_rate: 30,
            max_sockets_per_user: 20,
        }
    }
}

/// One rate per key, or none (the limit is off).
pub struct Rate<K: Hash + Eq + Clone>(Option<DefaultKeyedRateLimiter<K>>);

impl<K: Hash + Eq + Clone> Rate<K> {
    fn new(quota: Option<Quota>) -> Self {
        Self(quota.map(DefaultKeyedRateLimiter::keyed))
    }

    /// Takes one unit for `key`.
    ///
    /// # Errors
    /// The whole seconds (at least 1) until one is available again.
    pub fn check(&self, key: &K) -> Result<(), u64> {
        let Some(limiter) = &self.0 else {
            return Ok(());
        };
        limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
        })
    }

    fn prune(&self) {
        if let Some(limiter) = &self.0 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Keys tracked right now.
    pub fn tracked(&self) -> usize {
        self.0.as_ref().map_or(0, |l| l.len())
    }
}

/// Every rate limit of one instance.
pub struct Limits {
    /// Messages per user.
    pub send: Rate<UserId>,
    /// Registrations per client address.
    pub register: Rate<IpAddr>,
    /// Room creations per member.
    pub rooms: Rate<UserId>,
    /// WebSocket sessions per user (`None`: no limit).
    pub sockets_per_user: Option<usize>,
}

impl Limits {
    /// The limits `settings` describe.
    pub fn new(settings: &AbuseSettings) -> Self {
        let send = NonZeroU32::new(settings.send_rate).map(|rate| {
            let burst =
                NonZeroU32::new(settings.send_burst.max(settings.send_rate)).unwrap_or(rate);
            Quota::per_second(rate).allow_burst(burst)
        });
        let per_minute = NonZeroU32::new(settings.register_rate).map(Quota::per_minute);
        Self {
            send: Rate::new(send),
            register: Rate::new(per_minute),
            rooms: Rate::new(per_minute),
            sockets_per_user: (settings.max_sockets_per_user > 0)
                .then_some(settings.max_sockets_per_user as usize),
        }
    }

    /// Forgets the keys whose buckets are full again (run every [`PRUNE_EVERY`]).
    pub fn prune(&self) {
        self.send.prune();
        self.register.prune();
        self.rooms.prune();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_send_rate_allows_its_burst_then_refuses_with_a_wait() {
        let limits = Limits::new(&AbuseSettings {
            send_rate: 10,
            send_burst: 30,
            ..AbuseSettings::default()
        });
        let alice = UserId(1);
        for _ in 0..30 {
            assert!(limits.send.check(&alice).is_ok());
        }
        assert_eq!(limits.send.check(&alice), Err(1));
        assert!(limits.send.check(&UserId(2)).is_ok(), "per user");
    }

    #[test]
    fn zero_turns_a_limit_off() {
        let limits = Limits::new(&AbuseSettings {
            send_rate: 0,
            send_burst: 0,
            register_rate: 0,
            max_sockets_per_user: 0,
        });
        for _ in 0..10_000 {
            assert!(limits.send.check(&UserId(1)).is_ok());
            assert!(limits.register.check(&IpAddr::from([127, 0, 0, 1])).is_ok());
        }
        assert_eq!(limits.sockets_per_user, None);
        assert_eq!(limits.send.tracked(), 0);
    }

    #[test]
    fn registrations_are_counted_per_address_per_minute() {
        let limits = Limits::new(&AbuseSettings {
            register_rate: 3,
            ..AbuseSettings::default()
        });
        let a = IpAddr::from([10, 0, 0, 1]);
        for _ in 0..3 {
            assert!(limits.register.check(&a).is_ok());
        }
        let wait = limits.register.check(&a).unwrap_err();
        assert!((1..=20).contains(&wait), "{wait}");
        assert!(limits.register.check(&IpAddr::from([10, 0, 0, 2])).is_ok());
    }
}

//! The bearer-token cache: who a token belongs to, without a query per
//! request.
//!
//! An entry is only as good as the events that would invalidate it, so the
//! cache answers only while this process hears every revocation and role
//! change: the listener turns it on once it is connected and caught up, and
//! off (emptying it) the moment its connection drops. Every revocation and
//! access change, local or from another instance, reaches it through the
//! hub. A lookup that read the database while an invalidation happened does
//! not store its answer (a generation counter), so a stale user cannot be
//! put back after its logout. Entries also expire after [`TTL`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::UserView;
use crate::ids::{TokenId, UserId};

/// Longest an entry is used, whatever the events say.
pub const TTL: Duration = Duration::from_secs(60);
/// Entries at most; a full cache starts over.
const MAX_ENTRIES: usize = 65_536;

/// SHA-256 of a presented token.
pub type TokenHash = [u8; 32];

#[derive(Debug)]
struct Entry {
    token_id: TokenId,
    user: UserView,
    /// [`TTL`] after it was stored, or the token's expiry if sooner.
    until: Instant,
}

/// The cache; shared through the hub.
#[derive(Debug, Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<TokenHash, Entry>>,
    generation: AtomicU64,
    enabled: AtomicBool,
}

impl TokenCache {
    /// The token's id and user, when cached, fresh and the cache is on.
    pub fn get(&self, hash: &TokenHash) -> Option<(TokenId, UserView)> {
        if !self.enabled.load(Ordering::Acquire) {
            return None;
        }
        let entries = self.entries.lock().expect("token cache lock");
        let entry = entries.get(hash)?;
        (Instant::now() < entry.until).then(|| (entry.token_id, entry.user.clone()))
    }

    /// Where invalidations stand; read before a database lookup and hand it
    /// to [`TokenCache::insert`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Stores a lookup's answer for at most [`TTL`], and no longer than
    /// `expires_in` (the token's remaining life), unless the cache is off or
    /// anything was invalidated since `seen` (then the answer may predate it).
    pub fn insert(
        &self,
        hash: TokenHash,
        token_id: TokenId,
        user: UserView,
        expires_in: Duration,
        seen: u64,
    ) {
        if !self.enabled.load(Ordering::Acquire) {
            return;
        }
        let mut entries = self.entries.lock().expect("token cache lock");
        // Checked under the lock: invalidations bump the generation under it too.
        if self.generation.load(Ordering::Acquire) != seen {
            return;
        }
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        let until = Instant::now() + TTL.min(expires_in);
        entries.insert(
            hash,
            Entry {
                token_id,
                user,
                until,
            },
        );
    }

    /// A token was revoked.
    pub fn revoke(&self, token_id: TokenId) {
        self.forget(|e| e.token_id == token_id);
    }

    /// A user's role or access changed.
    pub fn user_changed(&self, user_id: UserId) {
        self.forget(|e| e.user.id == user_id);
    }

    /// Turns the cache on (the listener hears every invalidation) or off
    /// (it may miss some: everything cached is dropped).
    pub fn set_enabled(&self, on: bool) {
        let mut entries = self.entries.lock().expect("token cache lock");
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.clear();
        self.enabled.store(on, Ordering::Release);
    }

    /// Whether the cache is on: exactly while the listener is connected and
    /// hears every invalidation.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Entries held (tests and stats).
    pub fn len(&self) -> usize {
        self.entries.lock().expect("token cache lock").len()
    }

    fn forget(&self, gone: impl Fn(&Entry) -> bool) {
        let mut entries = self.entries.lock().expect("token cache lock");
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.retain(|_, e| !gone(e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Role;

    fn user(id: i64) -> UserView {
        UserView {
            id: UserId(id),
            username: format!("u{id}"),
            display_name: format!("U {id}"),
            role: Role::Member,
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn answers_only_while_on_and_forgets_on_revocation_and_user_change() {
        let cache = TokenCache::default();
        let seen = cache.generation();
        cache.insert([1; 32], TokenId(1), user(10), TTL, seen);
        assert!(cache.get(&[1; 32]).is_none(), "off: nothing stored");
        cache.set_enabled(true);
        let seen = cache.generation();
        cache.insert([1; 32], TokenId(1), user(10), TTL, seen);
        cache.insert([2; 32], TokenId(2), user(10), TTL, seen);
        cache.insert([3; 32], TokenId(3), user(11), TTL, seen);
        assert_eq!(cache.get(&[1; 32]).map(|(t, _)| t), Some(TokenId(1)));
        cache.revoke(TokenId(1));
        assert!(cache.get(&[1; 32]).is_none());
        assert!(cache.get(&[2; 32]).is_some());
        cache.user_changed(UserId(10));
        assert!(cache.get(&[2; 32]).is_none());
        assert!(cache.get(&[3; 32]).is_some());
        cache.set_enabled(false);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn an_entry_never_outlives_its_token() {
        let cache = TokenCache::default();
        cache.set_enabled(true);
        let seen = cache.generation();
        cache.insert([1; 32], TokenId(1), user(10), Duration::ZERO, seen);
        assert!(
            cache.get(&[1; 32]).is_none(),
            "expired token answered from the cache"
        );
    }

    #[test]
    fn a_lookup_that_raced_an_invalidation_is_not_stored() {
        let cache = TokenCache::default();
        cache.set_enabled(true);
        let seen = cache.generation();
        cache.revoke(TokenId(1)); // lands while the lookup reads the database
        cache.insert([1; 32], TokenId(1), user(10), TTL, seen);
        assert!(cache.get(&[1; 32]).is_none());
    }
}

//! Events the hub has fanned out recently, so the copy of an event that
//! comes back through this process's own listener (after the local publish
//! that follows the commit) is not delivered twice. Messages need none of
//! this (sessions drop seqs they have delivered); edits, read receipts and
//! presence changes do.

use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};

/// How many recent keys are remembered: more than one batch announces (a
/// shutdown's presence batch of every user of a busy instance) in the time
/// a notification takes to come back. 16 bytes and a slot of each: about
/// 2 MiB when full.
const CAPACITY: usize = 65_536;

/// A bounded set of recently seen event keys, oldest forgotten first.
#[derive(Debug, Default)]
pub struct Recent {
    order: VecDeque<u64>,
    seen: HashSet<u64>,
}

impl Recent {
    /// Records `key`; false when it was already seen recently.
    pub fn first_time(&mut self, key: impl Hash) -> bool {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let key = h.finish();
        if !self.seen.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_counts_once_until_it_is_forgotten() {
        let mut r = Recent::default();
        assert!(r.first_time(("read", 1, 2, 3)));
        assert!(!r.first_time(("read", 1, 2, 3)));
        assert!(r.first_time(("read", 1, 2, 4)));
        for i in 0..CAPACITY {
            r.first_time(i);
        }
        assert!(
            r.first_time(("read", 1, 2, 3)),
            "forgotten after CAPACITY others"
        );
        assert!(r.seen.len() <= CAPACITY && r.order.len() <= CAPACITY);
    }
}

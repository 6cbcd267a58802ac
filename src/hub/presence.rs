//! This process's share of presence (SPEC §5): per room, which users have at
//! least one socket joined here. Pure bookkeeping under the hub's lock; the
//! presence task ([`crate::presence`]) stores it, batched, and announces
//! what changed.

use std::collections::HashMap;

use crate::ids::{RoomId, UserId};

/// A user in a room.
pub type Pair = (RoomId, UserId);

/// Joined sockets per user and room.
#[derive(Debug, Default)]
pub struct Ledger {
    sockets: HashMap<Pair, usize>,
}

impl Ledger {
    /// A socket of `pair.1` joined `pair.0`; true when it is the first.
    pub fn joined(&mut self, pair: Pair) -> bool {
        let n = self.sockets.entry(pair).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// A socket of `pair.1` left `pair.0` (or closed); true when it was the last.
    pub fn left(&mut self, pair: Pair) -> bool {
        let Some(n) = self.sockets.get_mut(&pair) else {
            return false;
        };
        *n -= 1;
        if *n > 0 {
            return false;
        }
        self.sockets.remove(&pair);
        true
    }

    /// Every pair present now.
    pub fn present(&self) -> Vec<Pair> {
        self.sockets.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Pair = (RoomId(1), UserId(2));

    #[test]
    fn only_the_first_join_and_the_last_leave_change_presence() {
        let mut l = Ledger::default();
        assert!(l.joined(P));
        assert!(!l.joined(P));
        assert_eq!(l.present(), vec![P]);
        assert!(!l.left(P), "one socket is still there");
        assert!(l.left(P));
        assert!(l.present().is_empty());
        assert!(!l.left(P), "leaving a room never joined is nothing");
    }
}

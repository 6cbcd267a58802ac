//! The hub's fan-out of SPEC §5's events (edits, read receipts, presence)
//! and this process's share of presence; the same rules as messages (never
//! blocks, a full queue closes the session), plus the recent-event filter
//! that drops the copy coming back through this process's own listener.

use std::collections::HashMap;

use super::{Delivery, Hub, Pair, Shared};
use crate::domain::MessageView;
use crate::events::{PresenceChange, ReadReceipt};
use crate::ids::{RoomId, UserId};

impl Hub {
    /// Queues `delivery` for every socket joined to `room_id` and, when
    /// `user_id` is given, every socket of that user: once per socket.
    fn fan_out(&self, room_id: RoomId, user_id: Option<UserId>, delivery: Delivery) {
        let rooms = self.inner.rooms.read().expect("hub lock");
        let subscribers = rooms.get(&room_id);
        if let Some(subscribers) = subscribers {
            for link in subscribers.values() {
                self.must_deliver(link, delivery.clone());
            }
        }
        let Some(user_id) = user_id else {
            return;
        };
        let users = self.inner.users.lock().expect("hub lock");
        for link in users.get(&user_id).into_iter().flat_map(HashMap::values) {
            if !subscribers.is_some_and(|s| s.contains_key(&link.id)) {
                self.must_deliver(link, delivery.clone());
            }
        }
    }

    /// Whether an event with `key` is new here (not the listener's copy of
    /// one published already).
    fn first_time(&self, key: impl std::hash::Hash) -> bool {
        self.inner.recent.lock().expect("hub lock").first_time(key)
    }

    /// Delivers an edited or deleted message's new state to every socket
    /// joined to its room.
    pub fn publish_update(&self, message: &MessageView) {
        // Times at the wire's precision (milliseconds: the listener's copy
        // of an inline update has only that), and the body, so two edits in
        // one millisecond are two updates.
        let millis = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.timestamp_millis());
        let key = (
            "updated",
            message.id,
            millis(message.edited_at),
            millis(message.deleted_at),
            &message.body,
        );
        if self.first_time(key) {
            let shared = Shared::new(message.clone());
            self.fan_out(message.room_id, None, Delivery::Updated(shared));
        }
    }

    /// Delivers a read receipt to the room's sockets and the reader's own.
    pub fn publish_read(&self, read: &ReadReceipt) {
        let key = ("read", read.room_id, read.user_id, read.last_read_seq);
        if self.first_time(key) {
            let shared = Shared::new(read.clone());
            self.fan_out(read.room_id, Some(read.user_id), Delivery::Read(shared));
        }
    }

    /// Delivers a presence change to the room's sockets and the user's own.
    pub fn publish_presence(&self, change: &PresenceChange) {
        if self.first_time(("presence", change.nonce)) {
            let shared = Shared::new(change.clone());
            let delivery = Delivery::Presence(shared);
            self.fan_out(change.room_id, Some(change.user_id), delivery);
        }
    }

    /// Every user and room with a socket joined here.
    pub fn present_here(&self) -> Vec<Pair> {
        self.inner.ledger.lock().expect("hub lock").present()
    }

    /// Resolves once a user's first socket joined a room here or their last
    /// one left (a permit is kept while nobody waits).
    pub async fn presence_changed(&self) {
        self.inner.presence_changed.notified().await;
    }

    pub(super) fn ledger(&self, room_id: RoomId, user_id: UserId, joined: bool) {
        let mut ledger = self.inner.ledger.lock().expect("hub lock");
        let changed = if joined {
            ledger.joined((room_id, user_id))
        } else {
            ledger.left((room_id, user_id))
        };
        if changed {
            self.inner.presence_changed.notify_one();
        }
    }
}

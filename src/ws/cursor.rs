//! Per-room delivery order of one socket: the join boundary and de-duplication.
//!
//! A socket subscribes to a room *before* it reads the backlog, so every
//! message committed after that read reaches it live; while the join's read
//! is in flight those live events wait here. When the read returns, the
//! backlog goes out first, then the waiting events above it, then the rest
//! in seq order. A seq at or below the last one delivered is dropped (a
//! duplicate from the backlog, a second publish, another instance). Publishes
//! can arrive out of order (two senders finish their commits in a race): a
//! seq above `last + 1` waits for the missing ones, and if they have not come
//! within [`GAP_WAIT`] the session reads them from the database (seqs are
//! gapless, so a higher seq proves the lower ones are committed).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::ids::Seq;

/// How long a hole in the seqs may stay open before it is filled from the database.
pub const GAP_WAIT: Duration = Duration::from_millis(250);
/// Events held per room while a join or a hole is pending; beyond it they are
/// dropped here and read back from the database with the hole.
const MAX_PENDING: usize = 1024;

/// Delivery state of one joined room on one socket.
#[derive(Debug)]
pub struct RoomCursor {
    /// Changes on every join, so a late database answer for an earlier join
    /// or hole is recognised and ignored.
    pub epoch: u64,
    live: bool,
    last: Seq,
    max_seen: Seq,
    pending: BTreeMap<Seq, Utf8Bytes>,
    gap_since: Option<Instant>,
}

impl RoomCursor {
    /// A room whose join is being read: live events are held.
    pub fn joining(epoch: u64) -> Self {
        Self {
            epoch,
            live: false,
            last: Seq(0),
            max_seen: Seq(0),
            pending: BTreeMap::new(),
            gap_since: None,
        }
    }

    /// Whether the join has completed (typing events are delivered only then).
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// The last seq delivered.
    #[cfg(test)]
    pub fn last(&self) -> Seq {
        self.last
    }

    /// Whether `seq` was already delivered, so an offer of it would be dropped.
    pub fn delivered(&self, seq: Seq) -> bool {
        self.live && seq <= self.last
    }

    /// The join's backlog is in: `replay` (ascending) goes out, then whatever
    /// waited above it. `last_seq` is the room's seq as the join read it.
    pub fn go_live(
        &mut self,
        last_seq: Seq,
        replay: Vec<(Seq, Utf8Bytes)>,
        now: Instant,
        out: &mut Vec<Utf8Bytes>,
    ) {
        self.live = true;
        self.last = last_seq;
        for (seq, frame) in replay {
            out.push(frame);
            self.last = self.last.max(seq);
        }
        self.max_seen = self.max_seen.max(self.last);
        self.drain(out);
        self.update_gap(now);
    }

    /// A message event (live, or read back to fill a hole).
    pub fn offer(&mut self, seq: Seq, frame: Utf8Bytes, now: Instant, out: &mut Vec<Utf8Bytes>) {
        if self.delivered(seq) {
            return;
        }
        self.max_seen = self.max_seen.max(seq);
        if self.live && seq == self.last + 1 {
            out.push(frame);
            self.last = seq;
            self.drain(out);
        } else if self.pending.len() < MAX_PENDING {
            self.pending.insert(seq, frame);
        }
        if self.live {
            self.update_gap(now);
        }
    }

    /// The hole to read from the database once it has been open for
    /// [`GAP_WAIT`]: `(after_seq, up_to_seq, open_since)`.
    pub fn gap(&self) -> Option<(Seq, Seq, Instant)> {
        let since = self.gap_since?;
        Some((self.last, self.max_seen, since))
    }

    /// A hole could not be (fully) filled: try again after [`GAP_WAIT`].
    pub fn retry_gap(&mut self, now: Instant) {
        if self.gap_since.is_some() {
            self.gap_since = Some(now);
        }
    }

    fn drain(&mut self, out: &mut Vec<Utf8Bytes>) {
        while let Some(entry) = self.pending.first_entry() {
            let seq = *entry.key();
            if seq <= self.last {
                entry.remove();
            } else if seq == self.last + 1 {
                out.push(entry.remove());
                self.last = seq;
            } else {
                break;
            }
        }
    }

    fn update_gap(&mut self, now: Instant) {
        if self.last < self.max_seen {
            self.gap_since.get_or_insert(now);
        } else {
            self.gap_since = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(seq: i64) -> Utf8Bytes {
        seq.to_string().into()
    }

    fn s(seq: i64) -> Seq {
        Seq(seq)
    }

    fn seqs(out: &[Utf8Bytes]) -> Vec<i64> {
        out.iter().map(|b| b.as_str().parse().unwrap()).collect()
    }

    #[test]
    fn join_boundary_has_no_gap_and_no_duplicate() {
        let now = Instant::now();
        let mut c = RoomCursor::joining(1);
        let mut out = Vec::new();
        // Live events that raced the backlog read: 5 and 6 were also read, 7 was not.
        for n in [5, 6, 7] {
            c.offer(s(n), f(n), now, &mut out);
        }
        assert!(out.is_empty(), "held until the backlog is out");
        c.go_live(
            s(6),
            vec![(s(4), f(4)), (s(5), f(5)), (s(6), f(6))],
            now,
            &mut out,
        );
        c.offer(s(6), f(6), now, &mut out);
        c.offer(s(8), f(8), now, &mut out);
        assert_eq!(seqs(&out), vec![4, 5, 6, 7, 8]);
        assert!(c.gap().is_none());
    }

    #[test]
    fn out_of_order_publishes_are_reordered_and_holes_reported() {
        let now = Instant::now();
        let mut c = RoomCursor::joining(1);
        let mut out = Vec::new();
        c.go_live(s(10), vec![], now, &mut out);
        c.offer(s(12), f(12), now, &mut out);
        assert_eq!(c.gap().map(|(a, b, _)| (a, b)), Some((s(10), s(12))));
        c.offer(s(11), f(11), now, &mut out);
        assert_eq!(seqs(&out), vec![11, 12]);
        assert!(c.gap().is_none());
        assert!(c.delivered(s(11)) && !c.delivered(s(13)));
        c.offer(s(11), f(11), now, &mut out);
        assert_eq!(seqs(&out), vec![11, 12], "duplicates are dropped");
    }

    #[test]
    fn a_backlog_newer_than_last_seq_moves_the_cursor() {
        let now = Instant::now();
        let mut c = RoomCursor::joining(1);
        let mut out = Vec::new();
        c.go_live(s(3), vec![(s(3), f(3)), (s(4), f(4))], now, &mut out);
        assert_eq!(c.last(), s(4));
        c.offer(s(4), f(4), now, &mut out);
        assert_eq!(seqs(&out), vec![3, 4]);
    }
}

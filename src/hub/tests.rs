//! The hub's fan-out rules: shared entries, queue pressure, revocation,
//! access signals and admission.

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::*;
use crate::events::{PresenceChange, ReadReceipt};

fn message(room_id: i64, seq: i64) -> MessageView {
    MessageView::sample(room_id, seq, "hi")
}

#[test]
fn one_encoding_is_shared_by_every_subscriber() {
    let hub = Hub::new();
    let mut a = hub.register(TokenId(1), UserId(1)).unwrap();
    let mut b = hub.register(TokenId(2), UserId(2)).unwrap();
    a.subscribe(RoomId(7));
    b.subscribe(RoomId(7));
    hub.publish_message(&message(7, 1));
    hub.publish_message(&message(8, 1));
    let (Ok(Delivery::Message(ma)), Ok(Delivery::Message(mb))) =
        (a.queue.try_recv(), b.queue.try_recv())
    else {
        panic!("both got the message")
    };
    assert!(Arc::ptr_eq(&ma, &mb), "one entry for every recipient");
    let encodings = AtomicUsize::new(0);
    let encode = |m: &MessageView| {
        encodings.fetch_add(1, Ordering::Relaxed);
        Utf8Bytes::from(format!("seq {}", m.seq))
    };
    let (fa, fb) = (ma.encoded(encode), mb.encoded(encode));
    assert_eq!(encodings.load(Ordering::Relaxed), 1, "encoded once");
    assert_eq!(fa.as_str(), "seq 1");
    assert_eq!(fa.as_str().as_ptr(), fb.as_str().as_ptr(), "same bytes");
    assert!(a.queue.try_recv().is_err(), "room 8 is not subscribed");
}

#[test]
fn typing_carries_the_room_and_user_and_skips_its_sender() {
    let hub = Hub::new();
    let mut typist = hub.register(TokenId(1), UserId(1)).unwrap();
    let mut other = hub.register(TokenId(2), UserId(2)).unwrap();
    typist.subscribe(RoomId(3));
    other.subscribe(RoomId(3));
    typist.publish_typing(RoomId(3), UserId(1), "ann");
    let Ok(Delivery::Typing(typing)) = other.queue.try_recv() else {
        panic!("the other subscriber got it")
    };
    let t = typing.value();
    assert_eq!(
        (t.room_id, t.user_id, t.username.as_str()),
        (RoomId(3), UserId(1), "ann")
    );
    assert!(typist.queue.try_recv().is_err(), "not echoed to its sender");
}

#[test]
fn a_full_queue_closes_as_slow_consumer_and_typing_is_dropped_first() {
    let hub = Hub::new();
    let mut slow = hub.register(TokenId(1), UserId(1)).unwrap();
    let mut typist = hub.register(TokenId(2), UserId(2)).unwrap();
    slow.subscribe(RoomId(1));
    typist.subscribe(RoomId(1));
    for seq in 1..=(QUEUE_CAPACITY as i64 - TYPING_HEADROOM as i64 + 1) {
        hub.publish_message(&message(1, seq));
    }
    hub.publish_typing(RoomId(1), typist.id(), UserId(2), "bob");
    let typing = std::iter::from_fn(|| slow.queue.try_recv().ok())
        .filter(|d| matches!(d, Delivery::Typing(_)))
        .count();
    assert_eq!(typing, 0, "typing dropped under pressure");
    for seq in 1..=(QUEUE_CAPACITY as i64 + 1) {
        hub.publish_message(&message(1, seq));
    }
    assert_eq!(slow.close_reason(), Some(CloseReason::SlowConsumer));
    assert!(hub.stats().queue_high_water <= QUEUE_CAPACITY);
}

#[test]
fn revocation_closes_current_and_refuses_late_sessions() {
    let hub = Hub::new();
    let a = hub.register(TokenId(5), UserId(5)).unwrap();
    let other = hub.register(TokenId(6), UserId(6)).unwrap();
    hub.revoke_token(TokenId(5));
    assert_eq!(a.close_reason(), Some(CloseReason::Revoked));
    assert_eq!(other.close_reason(), None);
    assert!(hub.register(TokenId(5), UserId(5)).is_none());
    drop((a, other));
    assert_eq!(hub.session_count(), 0);
}

#[test]
fn access_changes_wake_every_session_of_the_user_and_no_other() {
    let hub = Hub::new();
    let a = hub.register(TokenId(1), UserId(10)).unwrap();
    let b = hub.register(TokenId(2), UserId(10)).unwrap();
    let other = hub.register(TokenId(3), UserId(11)).unwrap();
    hub.access_changed(UserId(10));
    hub.access_changed(UserId(10)); // coalesces
    hub.access_changed(UserId(99)); // nobody: a no-op
    let woken = |r: &Registration| {
        use futures_util::FutureExt;
        r.access_signal().notified().now_or_never().is_some()
    };
    assert!(woken(&a) && woken(&b));
    assert!(!woken(&a), "one permit for repeated signals");
    assert!(!woken(&other));
    hub.access_changed_for_all();
    assert!(woken(&a) && woken(&b) && woken(&other));
    drop((a, b, other));
    assert!(hub.inner.users.lock().unwrap().is_empty());
}

#[test]
fn admission_is_bounded() {
    let hub = Hub::new();
    let first = hub.admit(1).unwrap();
    assert!(hub.admit(1).is_none());
    drop(first);
    assert!(hub.admit(1).is_some());
}

fn receipt(room_id: i64, user_id: i64, seq: i64) -> ReadReceipt {
    ReadReceipt {
        room_id: RoomId(room_id),
        user_id: UserId(user_id),
        username: format!("user{user_id}"),
        last_read_seq: Seq(seq),
    }
}

fn reads(r: &mut Registration) -> usize {
    std::iter::from_fn(|| r.queue.try_recv().ok())
        .filter(|d| matches!(d, Delivery::Read(_)))
        .count()
}

#[test]
fn a_receipt_reaches_the_room_and_the_readers_sockets_once_each() {
    let hub = Hub::new();
    let mut joined_reader = hub.register(TokenId(1), UserId(1)).unwrap();
    let mut other_device = hub.register(TokenId(2), UserId(1)).unwrap();
    let mut room_mate = hub.register(TokenId(3), UserId(2)).unwrap();
    let mut stranger = hub.register(TokenId(4), UserId(3)).unwrap();
    joined_reader.subscribe(RoomId(7));
    room_mate.subscribe(RoomId(7));
    hub.publish_read(&receipt(7, 1, 5));
    assert_eq!(
        reads(&mut joined_reader),
        1,
        "joined and the reader's: once"
    );
    assert_eq!(reads(&mut other_device), 1);
    assert_eq!(reads(&mut room_mate), 1);
    assert_eq!(reads(&mut stranger), 0);
    // The copy that comes back through the listener is dropped; a marker
    // that moved again is news.
    hub.publish_read(&receipt(7, 1, 5));
    assert_eq!(reads(&mut room_mate), 0);
    hub.publish_read(&receipt(7, 1, 6));
    assert_eq!(reads(&mut room_mate), 1);
}

#[test]
fn updates_and_presence_changes_are_fanned_out_once_per_event() {
    let hub = Hub::new();
    let mut a = hub.register(TokenId(1), UserId(1)).unwrap();
    a.subscribe(RoomId(2));
    let mut edited = message(2, 1);
    edited.edited_at = Some(chrono::Utc::now());
    hub.publish_update(&edited);
    hub.publish_update(&edited);
    let change = |nonce| PresenceChange {
        room_id: RoomId(2),
        user_id: UserId(9),
        username: "zed".into(),
        online: true,
        nonce,
    };
    hub.publish_presence(&change(1));
    hub.publish_presence(&change(1));
    hub.publish_presence(&change(2));
    let got: Vec<&str> = std::iter::from_fn(|| a.queue.try_recv().ok())
        .map(|d| match d {
            Delivery::Updated(_) => "updated",
            Delivery::Presence(_) => "presence",
            _ => "other",
        })
        .collect();
    assert_eq!(got, ["updated", "presence", "presence"]);
}

#[test]
fn the_first_join_and_the_last_leave_wake_the_presence_task() {
    use futures_util::FutureExt;
    let hub = Hub::new();
    let mut a = hub.register(TokenId(1), UserId(1)).unwrap();
    let mut b = hub.register(TokenId(2), UserId(1)).unwrap();
    a.subscribe(RoomId(3));
    assert!(hub.presence_changed().now_or_never().is_some());
    b.subscribe(RoomId(3));
    assert!(
        hub.presence_changed().now_or_never().is_none(),
        "a second socket is no news"
    );
    assert_eq!(hub.present_here(), vec![(RoomId(3), UserId(1))]);
    a.unsubscribe(RoomId(3));
    assert!(hub.presence_changed().now_or_never().is_none());
    drop(b);
    assert!(hub.presence_changed().now_or_never().is_some());
    assert!(hub.present_here().is_empty());
}

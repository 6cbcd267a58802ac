//! The conversation's rules, driven without a socket or a database: frames
//! go in as text, job answers are made up, the hub is a real one.

use serde_json::{json, Value};

use super::*;
use crate::domain::{MessageView, Role};
use crate::hub::Hub;
use crate::ids::{RoomId, Seq, TokenId, UserId};

fn user(id: i64) -> Arc<AuthUser> {
    Arc::new(AuthUser {
        id: UserId(id),
        username: format!("user{id}"),
        display_name: format!("User {id}"),
        role: Role::Member,
        token_id: TokenId(id),
    })
}

fn conversation(hub: &Hub, user_id: i64, now: Instant) -> Conversation {
    let reg = hub
        .register(TokenId(user_id), UserId(user_id))
        .expect("not revoked");
    Conversation::new(reg, user(user_id), now)
}

fn frames(c: &mut Conversation) -> Vec<Value> {
    c.take_frames()
        .iter()
        .map(|f| serde_json::from_str(f.as_str()).expect("frames are JSON"))
        .collect()
}

fn text(c: &mut Conversation, frame: Value, now: Instant) -> Option<Job> {
    c.on_text(&frame.to_string(), now)
}

fn message(room_id: i64, seq: i64) -> MessageView {
    MessageView::sample(room_id, seq, &format!("m{seq}"))
}

fn seqs(frames: &[Value]) -> Vec<i64> {
    frames
        .iter()
        .map(|f| f["message"]["seq"].as_i64().expect("a message frame"))
        .collect()
}

/// Joins `room_id` and answers the join's read with `last_seq` and no replay.
fn join_live(c: &mut Conversation, room_id: i64, last_seq: i64, now: Instant) -> u64 {
    let job = text(c, json!({"type": "join", "room_id": room_id}), now);
    let Some(Job::Join { epoch, .. }) = job else {
        panic!("a join job: {job:?}")
    };
    let joined = Finished::Joined {
        reference: None,
        room_id: RoomId(room_id),
        epoch,
        result: Ok(JoinRead {
            last_seq: Seq(last_seq),
            replay: Vec::new(),
            truncated: false,
        }),
    };
    c.on_finished(joined, now).expect("no internal error");
    assert_eq!(frames(c)[0]["type"], "joined");
    epoch
}

/// Hands the conversation everything the hub queued for it.
fn deliver(c: &mut Conversation, now: Instant) {
    while let Ok(delivery) = c.queue().try_recv() {
        c.on_delivery(delivery, now);
    }
}

#[test]
fn ping_is_answered_with_pong_echoing_its_ref() {
    let now = Instant::now();
    let mut c = conversation(&Hub::new(), 1, now);
    assert!(text(&mut c, json!({"type": "ping", "ref": "p1"}), now).is_none());
    assert_eq!(frames(&mut c), vec![json!({"type": "pong", "ref": "p1"})]);
}

#[test]
fn a_malformed_frame_is_a_bad_request_naming_the_sends_client_id() {
    let now = Instant::now();
    let mut c = conversation(&Hub::new(), 1, now);
    let frame = json!({"type": "send", "room_id": 1, "body": " ", "client_id": "c1", "ref": "r"});
    assert!(text(&mut c, frame, now).is_none());
    let error = &frames(&mut c)[0];
    assert_eq!(
        (&error["code"], &error["ref"], &error["client_id"]),
        (&json!("bad_request"), &json!("r"), &json!("c1"))
    );
}

#[test]
fn join_subscribes_and_asks_for_a_read_with_a_new_epoch() {
    let now = Instant::now();
    let hub = Hub::new();
    let mut c = conversation(&hub, 1, now);
    let job = text(
        &mut c,
        json!({"type": "join", "room_id": 3, "after_seq": 1, "ref": "j"}),
        now,
    );
    let Some(Job::Join {
        reference,
        room_id: RoomId(3),
        epoch: 1,
        after_seq: Some(Seq(1)),
    }) = job
    else {
        panic!("a join job: {job:?}")
    };
    assert_eq!(reference.as_deref(), Some("j"));
    assert!(frames(&mut c).is_empty(), "the reply waits for the read");
    // Subscribed before the read: a message committed meanwhile is held.
    hub.publish_message(&message(3, 3));
    deliver(&mut c, now);
    assert!(frames(&mut c).is_empty(), "held until the backlog is out");
    let read = JoinRead {
        last_seq: Seq(3),
        replay: vec![message(3, 2), message(3, 3)],
        truncated: false,
    };
    let joined = Finished::Joined {
        reference,
        room_id: RoomId(3),
        epoch: 1,
        result: Ok(read),
    };
    c.on_finished(joined, now).unwrap();
    let out = frames(&mut c);
    assert_eq!(
        out[0],
        json!({"type": "joined", "room_id": 3, "last_seq": 3, "ref": "j"})
    );
    assert_eq!(seqs(&out[1..]), vec![2, 3], "the live copy of 3 is dropped");
    let next = text(&mut c, json!({"type": "join", "room_id": 4}), now);
    assert!(matches!(next, Some(Job::Join { epoch: 2, .. })));
}

#[test]
fn an_answer_for_an_earlier_join_is_ignored() {
    let now = Instant::now();
    let mut c = conversation(&Hub::new(), 1, now);
    text(&mut c, json!({"type": "join", "room_id": 5}), now);
    text(&mut c, json!({"type": "join", "room_id": 5}), now);
    let answer = |epoch| Finished::Joined {
        reference: None,
        room_id: RoomId(5),
        epoch,
        result: Ok(JoinRead {
            last_seq: Seq(0),
            replay: Vec::new(),
            truncated: false,
        }),
    };
    c.on_finished(answer(1), now).unwrap();
    assert!(frames(&mut c).is_empty(), "stale epoch");
    c.on_finished(answer(2), now).unwrap();
    assert_eq!(frames(&mut c)[0]["type"], "joined");
}

#[test]
fn a_refused_join_is_reported_and_unsubscribed() {
    let now = Instant::now();
    let hub = Hub::new();
    let mut c = conversation(&hub, 1, now);
    text(
        &mut c,
        json!({"type": "join", "room_id": 6, "ref": "j"}),
        now,
    );
    let refused = Finished::Joined {
        reference: Some("j".into()),
        room_id: RoomId(6),
        epoch: 1,
        result: Err(ApiError::NotFound("no such room".into())),
    };
    c.on_finished(refused, now).unwrap();
    let error = &frames(&mut c)[0];
    assert_eq!(
        (&error["code"], &error["ref"]),
        (&json!("not_found"), &json!("j"))
    );
    hub.publish_message(&message(6, 1));
    assert!(c.queue().try_recv().is_err(), "no longer subscribed");
}

#[test]
fn leave_answers_left_and_stops_delivery() {
    let now = Instant::now();
    let hub = Hub::new();
    let mut c = conversation(&hub, 1, now);
    join_live(&mut c, 2, 0, now);
    assert!(text(
        &mut c,
        json!({"type": "leave", "room_id": 2, "ref": "l"}),
        now
    )
    .is_none());
    assert_eq!(
        frames(&mut c),
        vec![json!({"type": "left", "room_id": 2, "ref": "l"})]
    );
    hub.publish_message(&message(2, 1));
    assert!(c.queue().try_recv().is_err());
}

#[test]
fn send_asks_for_a_send_job_and_its_answer_is_the_ack() {
    let now = Instant::now();
    let mut c = conversation(&Hub::new(), 1, now);
    let frame = json!({"type": "send", "room_id": 4, "body": "hi", "client_id": "c1", "ref": "s"});
    let job = text(&mut c, frame, now);
    let Some(Job::Send {
        reference,
        room_id: RoomId(4),
        body,
        client_id,
    }) = job
    else {
        panic!("a send job: {job:?}")
    };
    assert_eq!((body.as_str(), client_id.as_str()), ("hi", "c1"));
    assert!(frames(&mut c).is_empty(), "no join needed, no reply yet");
    let sent = Finished::Sent {
        reference,
        room_id: RoomId(4),
        client_id: "c1".into(),
        result: Ok(Sent {
            message: message(4, 1),
            created: true,
        }),
    };
    c.on_finished(sent, now).unwrap();
    let ack = &frames(&mut c)[0];
    assert_eq!((&ack["type"], &ack["ref"]), (&json!("ack"), &json!("s")));
    assert_eq!(ack["client_id"], "c1");
    assert_eq!(ack["message"]["seq"], 1);
}

#[test]
fn a_failed_send_names_its_client_id_and_an_internal_one_closes_1011() {
    let now = Instant::now();
    let mut c = conversation(&Hub::new(), 1, now);
    let failed = |result| Finished::Sent {
        reference: None,
        room_id: RoomId(4),
        client_id: "c2".into(),
        result,
    };
    c.on_finished(failed(Err(ApiError::Db(DbError::Busy))), now)
        .unwrap();
    let error = &frames(&mut c)[0];
    assert_eq!(
        (&error["code"], &error["client_id"]),
        (&json!("db_busy"), &json!("c2"))
    );
    let internal = ApiError::Internal(anyhow::anyhow!("bug"));
    assert_eq!(
        c.on_finished(failed(Err(internal)), now),
        Err(Close::Internal)
    );
    let other = ApiError::Db(DbError::Other(diesel::result::Error::NotFound));
    assert_eq!(c.on_finished(failed(Err(other)), now), Err(Close::Internal));
    assert!(frames(&mut c).is_empty(), "internal causes are not sent");
}

#[test]
fn typing_needs_a_completed_join_and_is_rate_limited() {
    let now = Instant::now();
    let hub = Hub::new();
    let mut c = conversation(&hub, 1, now);
    let mut watcher = conversation(&hub, 2, now);
    let typing = json!({"type": "typing", "room_id": 8, "ref": "t"});
    text(&mut c, typing.clone(), now);
    let error = &frames(&mut c)[0];
    assert_eq!(
        (&error["code"], &error["ref"]),
        (&json!("bad_request"), &json!("t"))
    );
    join_live(&mut c, 8, 0, now);
    join_live(&mut watcher, 8, 0, now);
    for _ in 0..5 {
        assert!(text(&mut c, typing.clone(), now).is_none());
    }
    assert!(frames(&mut c).is_empty(), "a burst of five is allowed");
    text(&mut c, typing.clone(), now);
    assert_eq!(frames(&mut c)[0]["code"], "rate_limited");
    text(&mut c, typing, now + Duration::from_secs(1));
    assert!(frames(&mut c).is_empty(), "one more a second later");
    deliver(&mut watcher, now);
    let seen = frames(&mut watcher);
    assert_eq!(seen.len(), 6);
    assert_eq!(
        seen[0],
        json!({"type": "typing", "room_id": 8, "user": {"id": 1, "username": "user1"}})
    );
    deliver(&mut c, now);
    assert!(frames(&mut c).is_empty(), "not echoed to the typist");
}

#[test]
fn typing_is_delivered_only_once_the_join_is_complete() {
    let now = Instant::now();
    let hub = Hub::new();
    let mut typist = conversation(&hub, 1, now);
    let mut c = conversation(&hub, 2, now);
    join_live(&mut typist, 3, 0, now);
    text(&mut c, json!({"type": "join", "room_id": 3}), now);
    text(&mut typist, json!({"type": "typing", "room_id": 3}), now);
    deliver(&mut c, now);
    assert!(frames(&mut c).is_empty(), "dropped while joining");
}

#[test]
fn a_hole_is_filled_after_the_gap_wait_and_stale_fills_are_ignored() {
    let now = Instant::now();
    let hub = Hub::new();
    let mut c = conversation(&hub, 1, now);
    let epoch = join_live(&mut c, 2, 10, now);
    hub.publish_message(&message(2, 12));
    deliver(&mut c, now);
    assert!(frames(&mut c).is_empty(), "12 waits for 11");
    assert_eq!(c.gap_deadline(), Some(now + GAP_WAIT));
    assert!(c.fill(now).is_none(), "not due yet");
    let later = now + GAP_WAIT;
    let Some(Job::Fill(holes)) = c.fill(later) else {
        panic!("a fill is due")
    };
    let hole = Hole {
        room_id: RoomId(2),
        epoch,
        after: Seq(10),
        upto: Seq(12),
    };
    assert_eq!(holes, vec![hole]);
    let stale = Finished::Filled {
        asked: vec![RoomId(2)],
        filled: Some(vec![(RoomId(2), epoch + 1, vec![message(2, 11)])]),
    };
    c.on_finished(stale, later).unwrap();
    assert!(frames(&mut c).is_empty(), "an answer for another join");
    assert_eq!(c.gap_deadline(), Some(later + GAP_WAIT), "retried");
    let filled = Finished::Filled {
        asked: vec![RoomId(2)],
        filled: Some(vec![(
            RoomId(2),
            epoch,
            vec![message(2, 11), message(2, 12)],
        )]),
    };
    c.on_finished(filled, later).unwrap();
    assert_eq!(seqs(&frames(&mut c)), vec![11, 12]);
    assert_eq!(c.gap_deadline(), None);
}

#[test]
fn an_access_recheck_leaves_the_rooms_lost_since_their_join() {
    let now = Instant::now();
    let mut c = conversation(&Hub::new(), 1, now);
    let kept = join_live(&mut c, 1, 0, now);
    let lost = join_live(&mut c, 2, 0, now);
    c.access_changed(now);
    text(&mut c, json!({"type": "join", "room_id": 3}), now);
    assert_eq!(c.recheck_deadline(), None, "waits for the join's read");
    c.on_finished(
        Finished::Joined {
            reference: None,
            room_id: RoomId(3),
            epoch: 3,
            result: Err(ApiError::NotFound("no such room".into())),
        },
        now,
    )
    .unwrap();
    frames(&mut c);
    assert_eq!(c.recheck_deadline(), Some(now));
    let Some(Job::Recheck(mut asked)) = c.recheck() else {
        panic!("a re-check")
    };
    asked.sort_unstable();
    assert_eq!(asked, vec![(RoomId(1), kept), (RoomId(2), lost)]);
    assert_eq!(c.recheck_deadline(), None);
    c.on_finished(Finished::Rechecked(None), now).unwrap();
    assert_eq!(
        c.recheck_deadline(),
        Some(now + RECHECK_RETRY),
        "a failed re-check is retried"
    );
    c.recheck();
    let answer = Finished::Rechecked(Some(vec![(RoomId(1), kept + 10), (RoomId(2), lost)]));
    c.on_finished(answer, now).unwrap();
    assert_eq!(
        frames(&mut c),
        vec![json!({"type": "left", "room_id": 2})],
        "room 1 was joined again since"
    );
}

#[test]
fn nothing_to_recheck_without_rooms() {
    let now = Instant::now();
    let mut c = conversation(&Hub::new(), 1, now);
    c.access_changed(now);
    assert!(c.recheck().is_none());
    assert_eq!(c.recheck_deadline(), None);
}

#[test]
fn a_message_published_twice_is_delivered_once() {
    let now = Instant::now();
    let hub = Hub::new();
    let mut c = conversation(&hub, 1, now);
    join_live(&mut c, 2, 0, now);
    hub.publish_message(&message(2, 1));
    hub.publish_message(&message(2, 1));
    hub.publish_message(&message(2, 2));
    deliver(&mut c, now);
    assert_eq!(seqs(&frames(&mut c)), vec![1, 2]);
}

#[test]
fn a_read_is_answered_once_as_its_reply_and_later_receipts_follow_it() {
    let now = Instant::now();
    let hub = Hub::new();
    let mut c = conversation(&hub, 1, now);
    join_live(&mut c, 7, 10, now);
    let job = text(
        &mut c,
        json!({"type": "read", "room_id": 7, "seq": 5, "ref": "r"}),
        now,
    );
    assert!(
        matches!(job, Some(Job::Read { seq: Seq(5), .. })),
        "{job:?}"
    );
    // This read's own receipt, published after its commit, and a later one
    // from another device arrive before the job's answer.
    let receipt = |seq| crate::events::ReadReceipt {
        room_id: RoomId(7),
        user_id: UserId(1),
        username: "user1".into(),
        last_read_seq: Seq(seq),
    };
    hub.publish_read(&receipt(5));
    hub.publish_read(&receipt(9));
    deliver(&mut c, now);
    assert!(frames(&mut c).is_empty(), "held until the reply");
    let done = Finished::Read {
        reference: Some("r".into()),
        room_id: RoomId(7),
        result: Ok(Seq(5)),
    };
    c.on_finished(done, now).unwrap();
    let out = frames(&mut c);
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(
        (out[0]["ref"].as_str(), out[0]["last_read_seq"].as_i64()),
        (Some("r"), Some(5))
    );
    assert_eq!(out[1]["last_read_seq"], 9);
    assert!(out[1].get("ref").is_none());
    // Receipts of others are not held.
    hub.publish_read(&crate::events::ReadReceipt {
        user_id: UserId(2),
        ..receipt(3)
    });
    deliver(&mut c, now);
    assert_eq!(frames(&mut c)[0]["user"]["id"], 2);
}

#[test]
fn an_edit_that_arrives_while_joining_follows_the_joined_frame() {
    let now = Instant::now();
    let hub = Hub::new();
    let mut c = conversation(&hub, 1, now);
    let job = text(&mut c, json!({"type": "join", "room_id": 4}), now);
    let Some(Job::Join { epoch, .. }) = job else {
        panic!("a join job: {job:?}")
    };
    let mut edited = message(4, 2);
    edited.body = "edited".into();
    edited.edited_at = Some(chrono::Utc::now());
    hub.publish_update(&edited);
    deliver(&mut c, now);
    assert!(frames(&mut c).is_empty(), "held while the join's read runs");
    let joined = Finished::Joined {
        reference: None,
        room_id: RoomId(4),
        epoch,
        result: Ok(JoinRead {
            last_seq: Seq(2),
            replay: Vec::new(),
            truncated: false,
        }),
    };
    c.on_finished(joined, now).unwrap();
    let out = frames(&mut c);
    let kinds: Vec<&str> = out.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["joined", "message_updated"]);
    assert_eq!(out[1]["message"]["body"], "edited");
}

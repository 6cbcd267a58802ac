//! The wire form of [`Event`]s between instances: PostgreSQL `NOTIFY` on one
//! channel.
//!
//! Sent inside the transaction that causes them (only through
//! [`crate::announce::commit_and_announce`]), so PostgreSQL delivers them
//! only if it commits, and in commit order. Every instance's listener
//! receives them, its own included.

use diesel::sql_types::{Array, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};

use super::CacheStatement;
use crate::db::channel::{ChannelKey, TAG_CHARS};
use crate::domain::MessageView;
use crate::events::{Event, PresenceChange, ReadReceipt};
use crate::ids::{RoomId, Seq, TokenId, UserId};

/// The one channel chatpool uses.
pub const CHANNEL: &str = "chatpool_events";

/// Largest payload sent inline; PostgreSQL's limit is 8000 bytes. A message
/// whose JSON is larger is announced by `(room_id, seq)` and fetched.
pub const INLINE_LIMIT: usize = 7000;

/// A notification payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t")]
pub enum Payload {
    /// A committed message; `message` is absent when it was too large to inline.
    #[serde(rename = "m")]
    Message {
        /// Room id.
        room_id: RoomId,
        /// Seq in the room.
        seq: Seq,
        /// The message, when it fits.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<MessageView>,
    },
    /// A revoked token: its sockets close with 1008 everywhere.
    #[serde(rename = "r")]
    Revoked {
        /// The token's id.
        token_id: TokenId,
    },
    /// A user's access may have shrunk (role changed, removed from a room):
    /// their sockets re-check the rooms they joined everywhere.
    #[serde(rename = "u")]
    AccessChanged {
        /// The user's id.
        user_id: UserId,
    },
    /// An edited or deleted message; `message` is absent when too large to
    /// inline (then it is read back by `(room_id, seq)`).
    #[serde(rename = "e")]
    Updated {
        /// Room id.
        room_id: RoomId,
        /// Seq in the room.
        seq: Seq,
        /// Its new state, when it fits.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<MessageView>,
    },
    /// A read marker that moved forward.
    #[serde(rename = "rd")]
    Read {
        /// Room id.
        room_id: RoomId,
        /// Whose marker.
        user_id: UserId,
        /// Their login name.
        username: String,
        /// The marker now.
        seq: Seq,
    },
    /// A presence change in a room.
    #[serde(rename = "p")]
    Presence {
        /// Room id.
        room_id: RoomId,
        /// Who.
        user_id: UserId,
        /// Their login name.
        username: String,
        /// Online or offline.
        online: bool,
        /// The change's nonce ([`PresenceChange::nonce`]).
        nonce: u64,
    },
}

impl Payload {
    /// The payload for a committed message: inline when it fits.
    pub fn message(m: &MessageView) -> Payload {
        Self::inline_or_not(m, |message| Payload::Message {
            room_id: m.room_id,
            seq: m.seq,
            message,
        })
    }

    /// `make(Some(m))` when it fits in [`INLINE_LIMIT`], else `make(None)`.
    fn inline_or_not(m: &MessageView, make: impl Fn(Option<MessageView>) -> Payload) -> Payload {
        let inline = make(Some(m.clone()));
        let fits = serde_json::to_string(&inline).is_ok_and(|s| s.len() <= INLINE_LIMIT);
        if fits {
            inline
        } else {
            make(None)
        }
    }

    /// The payload announcing `event`.
    pub fn of(event: &Event) -> Payload {
        match event {
            Event::Message(m) => Payload::message(m),
            Event::Revoked { token_id } => Payload::Revoked {
                token_id: *token_id,
            },
            Event::AccessChanged { user_id } => Payload::AccessChanged { user_id: *user_id },
            Event::Updated(m) => Self::inline_or_not(m, |message| Payload::Updated {
                room_id: m.room_id,
                seq: m.seq,
                message,
            }),
            Event::Read(r) => Payload::Read {
                room_id: r.room_id,
                user_id: r.user_id,
                username: r.username.clone(),
                seq: r.last_read_seq,
            },
            Event::Presence(p) => Payload::Presence {
                room_id: p.room_id,
                user_id: p.user_id,
                username: p.username.clone(),
                online: p.online,
                nonce: p.nonce,
            },
        }
    }

    /// The event of a payload that carries all of it; `None` for a message
    /// or update too large to inline (it is read back by `(room_id, seq)`).
    pub fn into_event(self) -> Option<Event> {
        Some(match self {
            Payload::Message {
                message: Some(m), ..
            } => Event::Message(m),
            Payload::Updated {
                message: Some(m), ..
            } => Event::Updated(m),
            Payload::Revoked { token_id } => Event::Revoked { token_id },
            Payload::AccessChanged { user_id } => Event::AccessChanged { user_id },
            Payload::Read {
                room_id,
                user_id,
                username,
                seq,
            } => Event::Read(ReadReceipt {
                room_id,
                user_id,
                username,
                last_read_seq: seq,
            }),
            Payload::Presence {
                room_id,
                user_id,
                username,
                online,
                nonce,
            } => Event::Presence(PresenceChange {
                room_id,
                user_id,
                username,
                online,
                nonce,
            }),
            Payload::Message { message: None, .. } | Payload::Updated { message: None, .. } => {
                return None
            }
        })
    }

    /// Parses a payload; `None` for anything unknown (a newer instance's event).
    pub fn parse(payload: &str) -> Option<Payload> {
        serde_json::from_str(payload).ok()
    }
}

/// Largest payload of one `NOTIFY` this module builds (PostgreSQL refuses
/// 8000 bytes and more), its tag included.
pub const PAYLOAD_LIMIT: usize = 7900;

/// Largest JSON array [`pack`] builds: the payload less the tag and its dot.
const BODY_LIMIT: usize = PAYLOAD_LIMIT - TAG_CHARS - 1;

/// The bodies of the `NOTIFY` payloads announcing `events`: each a JSON
/// array of [`Payload`]s, packed in order so that signed
/// ([`ChannelKey::sign`]) each is at most [`PAYLOAD_LIMIT`] bytes.
///
/// # Errors
/// When an event cannot be serialised.
pub fn pack(events: &[Event]) -> Result<Vec<String>, serde_json::Error> {
    let mut payloads = Vec::new();
    let mut current = String::from("[");
    for event in events {
        let item = serde_json::to_string(&Payload::of(event))?;
        if current.len() > 1 && current.len() + item.len() + 2 > BODY_LIMIT {
            current.push(']');
            payloads.push(std::mem::replace(&mut current, String::from("[")));
        }
        if current.len() > 1 {
            current.push(',');
        }
        current.push_str(&item);
    }
    if current.len() > 1 {
        current.push(']');
        payloads.push(current);
    }
    Ok(payloads)
}

/// Parses a notification: a JSON array of payloads (or, from older
/// instances, a single one). Unknown items are skipped (a newer instance's
/// events); `None` when the whole payload is not understood.
pub fn unpack(payload: &str) -> Option<Vec<Payload>> {
    if let Some(single) = Payload::parse(payload) {
        return Some(vec![single]);
    }
    let items: Vec<serde_json::Value> = serde_json::from_str(payload).ok()?;
    Some(
        items
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect(),
    )
}

/// Queues `events` for delivery to every listener when the current
/// transaction commits, signed with `key`: one statement, however many events.
pub async fn notify(
    conn: &mut AsyncPgConnection,
    key: &ChannelKey,
    events: &[Event],
) -> Result<(), diesel::result::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let payloads: Vec<String> = pack(events)
        .map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))?
        .iter()
        .map(|body| key.sign(body))
        .collect();
    diesel::sql_query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
        .bind::<Text, _>(CHANNEL)
        .bind::<Array<Text>, _>(payloads)
        .cached()
        .execute(conn)
        .await
        .map(drop)
}

#[derive(diesel::QueryableByName)]
struct KeyRow {
    #[diesel(sql_type = diesel::sql_types::Bytea)]
    key: Vec<u8>,
}

/// The database's notification key, created with `candidate` if there is
/// none yet. Two statements, so an instance that loses the race to create it
/// reads the winner's.
///
/// # Errors
/// The database's, or a stored key that is not 32 bytes.
pub async fn load_key(
    conn: &mut AsyncPgConnection,
    candidate: &ChannelKey,
) -> Result<ChannelKey, diesel::result::Error> {
    diesel::sql_query("INSERT INTO notify_key (key) VALUES ($1) ON CONFLICT (id) DO NOTHING")
        .bind::<diesel::sql_types::Bytea, _>(&candidate.bytes()[..])
        .execute(conn)
        .await?;
    let row: KeyRow = diesel::sql_query("SELECT key FROM notify_key")
        .get_result(conn)
        .await?;
    ChannelKey::from_bytes(&row.key).ok_or_else(|| {
        diesel::result::Error::DeserializationError("notify_key.key is not 32 bytes".into())
    })
}

#[derive(diesel::QueryableByName)]
struct SenderRow {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    can_write: bool,
}

/// Whether the backend `pid` belongs to a role that may write chatpool's
/// messages; `None` when no such backend is connected any more. Run on the
/// listener's connection only; its `/* chatpool listener */` mark tells
/// operators which backend is the listener in `pg_stat_activity.query`
/// (that or `LISTEN chatpool_events`).
pub async fn sender_can_write(
    conn: &mut AsyncPgConnection,
    pid: i32,
) -> Result<Option<bool>, diesel::result::Error> {
    use diesel::OptionalExtension;
    diesel::sql_query(
        "/* chatpool listener */ SELECT has_table_privilege(a.usesysid, 'messages'::regclass, \
         'INSERT') AS can_write FROM pg_stat_activity a WHERE a.pid = $1 AND a.usesysid IS NOT NULL",
    )
    .bind::<diesel::sql_types::Integer, _>(pid)
    .get_result::<SenderRow>(conn)
    .await
    .optional()
    .map(|row| row.map(|r| r.can_write))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::AuthorView;
    use crate::ids::MessageId;

    fn message(body: &str) -> MessageView {
        MessageView {
            id: MessageId(7),
            room_id: RoomId(3),
            seq: Seq(42),
            author: AuthorView {
                id: UserId(1),
                username: "alice".into(),
                display_name: "Alice".into(),
            },
            body: body.into(),
            client_id: Some("c-1".into()),
            created_at: chrono::DateTime::parse_from_rfc3339("2026-11-22T10:00:00.123Z")
                .unwrap()
                .with_timezone(&chrono::Utc),
            edited_at: None,
            deleted_at: None,
        }
    }

    #[test]
    fn small_messages_travel_inline_and_round_trip() {
        let m = message("hello");
        let event = Payload::message(&m);
        let payload = serde_json::to_string(&event).unwrap();
        assert_eq!(Payload::parse(&payload), Some(event));
        assert!(
            matches!(Payload::parse(&payload), Some(Payload::Message { message: Some(x), .. }) if x == m)
        );
    }

    #[test]
    fn large_messages_are_announced_by_room_and_seq() {
        let m = message(&"€".repeat(4000)); // 12000 bytes of UTF-8
        let event = Payload::message(&m);
        assert_eq!(
            event,
            Payload::Message {
                room_id: RoomId(3),
                seq: Seq(42),
                message: None
            }
        );
        assert!(serde_json::to_string(&event).unwrap().len() < 100);
    }

    #[test]
    fn revocations_and_unknown_payloads_parse() {
        assert_eq!(
            Payload::parse(r#"{"t":"r","token_id":9}"#),
            Some(Payload::Revoked {
                token_id: TokenId(9)
            })
        );
        assert_eq!(Payload::parse(r#"{"t":"x"}"#), None);
        assert_eq!(Payload::parse("not json"), None);
    }

    #[test]
    fn access_changes_travel_as_u_with_the_user_id() {
        let event = Payload::AccessChanged {
            user_id: UserId(12),
        };
        let payload = serde_json::to_string(&event).unwrap();
        assert_eq!(payload, r#"{"t":"u","user_id":12}"#);
        assert_eq!(Payload::parse(&payload), Some(event));
        assert_eq!(
            serde_json::to_string(&Payload::Revoked {
                token_id: TokenId(9)
            })
            .unwrap(),
            r#"{"t":"r","token_id":9}"#,
            "existing wire names unchanged"
        );
    }

    #[test]
    fn batches_pack_into_arrays_under_the_limit_in_order() {
        let events: Vec<Event> = (1..=40)
            .map(|seq| {
                let mut m = message(&"x".repeat(500));
                m.seq = Seq(seq);
                Event::Message(m)
            })
            .collect();
        let payloads = pack(&events).unwrap();
        assert!(payloads.len() > 1, "40 × ~700 bytes need several payloads");
        assert!(payloads
            .iter()
            .all(|p| p.len() <= BODY_LIMIT && ChannelKey::random().sign(p).len() <= PAYLOAD_LIMIT));
        let seqs: Vec<Seq> = payloads
            .iter()
            .flat_map(|p| unpack(p).unwrap())
            .map(|p| match p {
                Payload::Message { seq, message, .. } => {
                    assert!(message.is_some());
                    seq
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(seqs, (1..=40).map(Seq).collect::<Vec<_>>());
        assert!(pack(&[]).unwrap().is_empty());
        assert_eq!(
            unpack(r#"[{"t":"r","token_id":9},{"t":"x"}]"#),
            Some(vec![Payload::Revoked {
                token_id: TokenId(9)
            }])
        );
    }
}

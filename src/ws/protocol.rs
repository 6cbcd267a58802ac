//! The frames of SPEC §3: what clients send, parsed once at the edge into
//! [`Command`], and what the server sends, serialised from [`ServerFrame`].

use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::domain::{ClientId, MessageBody, MessageView, UserView};
use crate::error::ApiError;
use crate::events::{PresenceChange, ReadReceipt};
use crate::hub::Typing;
use crate::ids::{RoomId, Seq, UserId};

/// A client frame as it appears on the wire (`type` selects the variant).
/// Unknown fields are ignored; `ref` is read separately so that even a frame
/// whose other fields are wrong gets its `ref` back.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ClientFrame {
    Join {
        room_id: RoomId,
        #[serde(default)]
        after_seq: Option<Seq>,
    },
    Leave {
        room_id: RoomId,
    },
    Send {
        room_id: RoomId,
        body: String,
        client_id: String,
    },
    Typing {
        room_id: RoomId,
    },
    Read {
        room_id: RoomId,
        seq: Seq,
    },
    Ping,
}

/// A client frame after every rule of the SPEC has been checked.
#[derive(Debug)]
pub enum Command {
    /// Subscribe to a room, replaying what came after `after_seq`.
    Join {
        /// The room.
        room_id: RoomId,
        /// Replay messages with seq above this (at least 0).
        after_seq: Option<Seq>,
    },
    /// Stop receiving a room's events.
    Leave {
        /// The room.
        room_id: RoomId,
    },
    /// Store and broadcast a message (the shared send path).
    Send {
        /// The room.
        room_id: RoomId,
        /// The text.
        body: MessageBody,
        /// The idempotency key.
        client_id: ClientId,
    },
    /// Tell the room's other sockets this user is typing.
    Typing {
        /// The room.
        room_id: RoomId,
    },
    /// Move this user's read marker (SPEC §5).
    Read {
        /// The room.
        room_id: RoomId,
        /// The seq read up to (at least 0).
        seq: Seq,
    },
    /// Application-level keepalive.
    Ping,
}

/// One parsed client frame: its `ref` (echoed in replies) and the command, or
/// the `bad_request` to answer, with the `client_id` of a failed `send`.
#[derive(Debug)]
pub struct Incoming {
    /// The client's correlation string, if it sent one.
    pub reference: Option<String>,
    /// The command, or why the frame was refused.
    pub command: Result<Command, Rejected>,
}

/// A frame that cannot be executed; the socket stays open.
#[derive(Debug)]
pub struct Rejected {
    /// Always `bad_request`.
    pub error: ApiError,
    /// The `client_id` of a refused `send`, so the client can match it.
    pub client_id: Option<String>,
}

/// Parses a text frame. Never fails: malformed JSON, an unknown `type` or a
/// missing field become a [`Rejected`] `bad_request`.
pub fn parse(text: &str) -> Incoming {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return Incoming {
                reference: None,
                command: Err(rejected(format!("malformed JSON: {e}"), None)),
            }
        }
    };
    let Some(object) = value.as_object() else {
        return Incoming {
            reference: None,
            command: Err(rejected("a frame must be a JSON object", None)),
        };
    };
    let reference = object
        .get("ref")
        .and_then(|r| r.as_str())
        .map(str::to_owned);
    if object.get("ref").is_some_and(|r| !r.is_string()) {
        return Incoming {
            reference: None,
            command: Err(rejected("ref must be a string", None)),
        };
    }
    let client_id = (object.get("type").and_then(|t| t.as_str()) == Some("send"))
        .then(|| object.get("client_id").and_then(|c| c.as_str()))
        .flatten()
        .map(str::to_owned);
    let command = match serde_json::from_value::<ClientFrame>(value) {
        Ok(frame) => validate(frame).map_err(|e| Rejected {
            error: e,
            client_id: client_id.clone(),
        }),
        Err(e) => Err(rejected(e.to_string(), client_id)),
    };
    Incoming { reference, command }
}

fn rejected(message: impl Into<String>, client_id: Option<String>) -> Rejected {
    Rejected {
        error: ApiError::BadRequest(message.into()),
        client_id,
    }
}

fn validate(frame: ClientFrame) -> Result<Command, ApiError> {
    Ok(match frame {
        ClientFrame::Join { room_id, after_seq } => {
            if after_seq.is_some_and(|n| n.0 < 0) {
                return Err(ApiError::BadRequest(
                    "after_seq must not be negative".into(),
                ));
            }
            Command::Join { room_id, after_seq }
        }
        ClientFrame::Leave { room_id } => Command::Leave { room_id },
        ClientFrame::Send {
            room_id,
            body,
            client_id,
        } => Command::Send {
            room_id,
            body: MessageBody::parse(&body)?,
            client_id: ClientId::parse(&client_id)?,
        },
        ClientFrame::Typing { room_id } => Command::Typing { room_id },
        ClientFrame::Read { room_id, seq } => {
            if seq.0 < 0 {
                return Err(ApiError::BadRequest("seq must not be negative".into()));
            }
            Command::Read { room_id, seq }
        }
        ClientFrame::Ping => Command::Ping,
    })
}

/// The user inside a `typing` event: no more than a client needs to show it.
#[derive(Debug, Serialize)]
pub struct TypingUser<'a> {
    /// User id.
    pub id: UserId,
    /// Login name.
    pub username: &'a str,
}

/// Every frame the server sends.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame<'a> {
    /// First frame of every session.
    Hello {
        /// The authenticated user.
        user: &'a UserView,
        /// Interval of the server's WebSocket pings.
        heartbeat_ms: u64,
    },
    /// Reply to `join`, before any replayed message.
    Joined {
        /// The room.
        room_id: RoomId,
        /// The room's latest seq when the join was read.
        last_seq: Seq,
        /// More than 1000 were missed; only the latest 1000 are replayed.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
        /// The join's `ref`.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
    /// Reply to `leave`.
    Left {
        /// The room.
        room_id: RoomId,
        /// The leave's `ref`.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
    /// A send committed (or was already committed under this `client_id`).
    Ack {
        /// The send's idempotency key.
        client_id: &'a str,
        /// The stored message.
        message: &'a MessageView,
        /// The send's `ref`.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
    /// A message of a joined room, live or replayed.
    Message {
        /// The message.
        message: &'a MessageView,
    },
    /// Someone else in a joined room is typing.
    Typing {
        /// The room.
        room_id: RoomId,
        /// Who.
        user: TypingUser<'a>,
    },
    /// A read marker moved (a receipt), or the reply to `read`.
    Read {
        /// The room.
        room_id: RoomId,
        /// Whose marker.
        user: TypingUser<'a>,
        /// The marker now.
        last_read_seq: Seq,
        /// The `read`'s `ref`, in the reply.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
    /// A message of a joined room was edited or deleted.
    #[serde(rename = "message_updated")]
    MessageUpdated {
        /// Its new state.
        message: &'a MessageView,
    },
    /// A user came online in a joined room or went offline.
    Presence {
        /// The room.
        room_id: RoomId,
        /// Who.
        user: TypingUser<'a>,
        /// `online` or `offline`.
        status: &'static str,
    },
    /// Reply to `ping`.
    Pong {
        /// The ping's `ref`.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
    /// A frame failed; the socket stays open.
    Error {
        /// One of the SPEC's codes.
        code: &'static str,
        /// Human text.
        message: String,
        /// The failed frame's `ref`.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        /// The failed send's `client_id`.
        #[serde(skip_serializing_if = "Option::is_none")]
        client_id: Option<&'a str>,
    },
}

impl<'a> ServerFrame<'a> {
    /// The frame as WebSocket text, ready to be shared between sockets.
    pub fn encode(&self) -> Utf8Bytes {
        // Serialising these plain structs cannot fail.
        serde_json::to_string(self)
            .expect("server frames serialise")
            .into()
    }

    /// An `error` frame for `error`.
    pub fn error(
        error: &ApiError,
        reference: Option<&'a str>,
        client_id: Option<&'a str>,
    ) -> ServerFrame<'a> {
        ServerFrame::Error {
            code: error.code(),
            message: error.public_message(),
            reference,
            client_id,
        }
    }
}

/// The `message` frame of a message: the encoder of the hub's shared
/// message entries, and of messages read from the database.
pub fn message_frame(message: &MessageView) -> Utf8Bytes {
    ServerFrame::Message { message }.encode()
}

/// The `typing` frame of the hub's shared typing entries.
pub fn typing_frame(typing: &Typing) -> Utf8Bytes {
    ServerFrame::Typing {
        room_id: typing.room_id,
        user: TypingUser {
            id: typing.user_id,
            username: &typing.username,
        },
    }
    .encode()
}

/// The `read` frame of a receipt (`reference`: the reply's `ref`).
pub fn read_frame(read: &ReadReceipt, reference: Option<&str>) -> Utf8Bytes {
    ServerFrame::Read {
        room_id: read.room_id,
        user: TypingUser {
            id: read.user_id,
            username: &read.username,
        },
        last_read_seq: read.last_read_seq,
        reference,
    }
    .encode()
}

/// The `message_updated` frame of an edited or deleted message.
pub fn updated_frame(message: &MessageView) -> Utf8Bytes {
    ServerFrame::MessageUpdated { message }.encode()
}

/// The `presence` frame of a change.
pub fn presence_frame(change: &PresenceChange) -> Utf8Bytes {
    ServerFrame::Presence {
        room_id: change.room_id,
        user: TypingUser {
            id: change.user_id,
            username: &change.username,
        },
        status: if change.online { "online" } else { "offline" },
    }
    .encode()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A JSON value of any shape, a few levels deep.
    fn any_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            any::<String>().prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A frame that looks like a client's: a known or unknown type, and the
    /// protocol's fields with values of any shape.
    fn any_frame() -> impl Strategy<Value = serde_json::Value> {
        (
            prop_oneof![
                Just("send".to_owned()),
                Just("join".to_owned()),
                Just("leave".to_owned()),
                Just("typing".to_owned()),
                Just("read".to_owned()),
                Just("ping".to_owned()),
                any::<String>(),
            ],
            prop::collection::btree_map(
                prop_oneof![
                    Just("room_id".to_owned()),
                    Just("body".to_owned()),
                    Just("client_id".to_owned()),
                    Just("after_seq".to_owned()),
                    Just("seq".to_owned()),
                    Just("ref".to_owned()),
                    "[a-z]{1,8}",
                ],
                any_json(),
                0..6,
            ),
        )
            .prop_map(|(kind, fields)| {
                let mut object: serde_json::Map<String, serde_json::Value> =
                    fields.into_iter().collect();
                object.insert("type".into(), kind.into());
                serde_json::Value::Object(object)
            })
    }

    proptest! {
        #[test]
        fn any_text_is_a_command_or_a_bad_request(text in any::<String>()) {
            if let Err(rejected) = parse(&text).command {
                prop_assert_eq!(rejected.error.code(), "bad_request");
            }
        }

        #[test]
        fn any_frame_shape_is_a_command_or_a_bad_request(frame in any_frame()) {
            let incoming = parse(&frame.to_string());
            match incoming.command {
                Err(rejected) => prop_assert_eq!(rejected.error.code(), "bad_request"),
                Ok(Command::Send { body, client_id, .. }) => {
                    // Accepted only what the SPEC allows, and stored as sent.
                    prop_assert_eq!(Some(body.as_str()), frame["body"].as_str());
                    prop_assert_eq!(Some(client_id.as_str()), frame["client_id"].as_str());
                    prop_assert!(!body.as_str().contains('\0'));
                }
                Ok(_) => {}
            }
            if let Some(r) = frame.get("ref").and_then(|r| r.as_str()) {
                prop_assert_eq!(incoming.reference.as_deref(), Some(r));
            }
        }

        #[test]
        fn a_valid_send_keeps_its_body_exactly(
            body in "[^\u{0}]{0,300}[^\\s\u{0}][^\u{0}]{0,300}",
            client_id in "[^\u{0}]{1,64}",
            room_id in any::<i64>(),
        ) {
            let frame = serde_json::json!({
                "type": "send", "room_id": room_id, "body": body, "client_id": client_id
            });
            match parse(&frame.to_string()).command {
                Ok(Command::Send { body: got, client_id: id, room_id: room }) => {
                    prop_assert_eq!(got.as_str(), body.as_str());
                    prop_assert_eq!(id.as_str(), client_id.as_str());
                    prop_assert_eq!(room.0, room_id);
                }
                other => prop_assert!(false, "refused: {:?}", other),
            }
        }
    }

    fn code(incoming: &Incoming) -> &'static str {
        incoming.command.as_ref().unwrap_err().error.code()
    }

    #[test]
    fn well_formed_frames_parse() {
        let i = parse(r#"{"type":"join","room_id":3,"after_seq":7,"ref":"a"}"#);
        assert_eq!(i.reference.as_deref(), Some("a"));
        assert!(matches!(
            i.command,
            Ok(Command::Join {
                room_id: RoomId(3),
                after_seq: Some(Seq(7))
            })
        ));
        let i = parse(r#"{"type":"send","room_id":1,"body":"hi","client_id":"c1"}"#);
        assert!(matches!(
            i.command,
            Ok(Command::Send {
                room_id: RoomId(1),
                ..
            })
        ));
        assert!(matches!(
            parse(r#"{"type":"ping"}"#).command,
            Ok(Command::Ping)
        ));
    }

    #[test]
    fn bad_frames_are_bad_requests_with_ref_and_client_id() {
        assert_eq!(code(&parse("{not json")), "bad_request");
        assert_eq!(code(&parse("[1,2]")), "bad_request");
        let i = parse(r#"{"type":"dance","ref":"r9"}"#);
        assert_eq!(code(&i), "bad_request");
        assert_eq!(i.reference.as_deref(), Some("r9"));
        let i = parse(r#"{"type":"send","room_id":1,"body":"  ","client_id":"c7"}"#);
        assert_eq!(code(&i), "bad_request");
        assert_eq!(
            i.command.unwrap_err().client_id.as_deref(),
            Some("c7"),
            "a refused send names its client_id"
        );
        assert_eq!(
            code(&parse(r#"{"type":"send","room_id":1,"body":"x"}"#)),
            "bad_request"
        );
        assert_eq!(
            code(&parse(r#"{"type":"join","room_id":1,"after_seq":-1}"#)),
            "bad_request"
        );
        assert_eq!(
            code(&parse(r#"{"type":"join","room_id":"1"}"#)),
            "bad_request"
        );
    }

    #[test]
    fn optional_fields_are_left_out() {
        let joined = ServerFrame::Joined {
            room_id: RoomId(1),
            last_seq: Seq(5),
            truncated: false,
            reference: None,
        }
        .encode();
        assert_eq!(
            joined.as_str(),
            r#"{"type":"joined","room_id":1,"last_seq":5}"#
        );
        let typing = typing_frame(&Typing {
            room_id: RoomId(3),
            user_id: UserId(1),
            username: "ann".into(),
        });
        assert_eq!(
            typing.as_str(),
            r#"{"type":"typing","room_id":3,"user":{"id":1,"username":"ann"}}"#
        );
        let pong = ServerFrame::Pong {
            reference: Some("x"),
        }
        .encode();
        assert_eq!(pong.as_str(), r#"{"type":"pong","ref":"x"}"#);
    }

    #[test]
    fn conversation_frames_have_the_spec_shapes() {
        let read = ReadReceipt {
            room_id: RoomId(3),
            user_id: UserId(1),
            username: "ann".into(),
            last_read_seq: Seq(7),
        };
        assert_eq!(
            read_frame(&read, Some("r1")).as_str(),
            r#"{"type":"read","room_id":3,"user":{"id":1,"username":"ann"},"last_read_seq":7,"ref":"r1"}"#
        );
        let change = PresenceChange {
            room_id: RoomId(3),
            user_id: UserId(1),
            username: "ann".into(),
            online: false,
            nonce: 5,
        };
        assert_eq!(
            presence_frame(&change).as_str(),
            r#"{"type":"presence","room_id":3,"user":{"id":1,"username":"ann"},"status":"offline"}"#
        );
        let m = MessageView::sample(3, 2, "hi");
        let updated: serde_json::Value = serde_json::from_str(updated_frame(&m).as_str()).unwrap();
        assert_eq!(updated["type"], "message_updated");
        assert_eq!(updated["message"]["edited_at"], serde_json::Value::Null);
        assert_eq!(updated["message"]["deleted_at"], serde_json::Value::Null);
        assert!(matches!(
            parse(r#"{"type":"read","room_id":3,"seq":4}"#).command,
            Ok(Command::Read {
                room_id: RoomId(3),
                seq: Seq(4)
            })
        ));
        assert_eq!(
            code(&parse(r#"{"type":"read","room_id":3,"seq":-1}"#)),
            "bad_request"
        );
        assert_eq!(
            code(&parse(r#"{"type":"read","room_id":3}"#)),
            "bad_request"
        );
    }
}

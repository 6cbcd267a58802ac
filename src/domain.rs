//! Typed values parsed at the edge ("parse, don't validate") and the JSON
//! objects of SPEC §2 (user, room, message).
//!
//! A handler that holds a [`Username`] or a [`MessageBody`] never checks it
//! again; every rule of the SPEC lives in one `parse`.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};

use crate::ids::{MessageId, RoomId, Seq, UserId};

/// A value that breaks one of the SPEC's rules; the message says which.
/// Clients see it as 400 `bad_request` (HTTP) or an `error` frame (WebSocket).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(String);

fn bad(message: impl Into<String>) -> Invalid {
    Invalid(message.into())
}

/// PostgreSQL cannot store U+0000 in text: a NUL is refused here, as a
/// 400, rather than by the database, as a 500.
///
/// # Errors
/// `bad_request` naming `field` when `raw` holds a NUL.
pub fn no_nul<'a>(field: &str, raw: &'a str) -> Result<&'a str, Invalid> {
    if raw.contains('\0') {
        Err(bad(format!("{field} must not contain NUL (U+0000)")))
    } else {
        Ok(raw)
    }
}

/// `^[a-z0-9_.-]{3,32}$`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    /// # Errors
    /// `bad_request` when it does not match the SPEC's pattern.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let ok = (3..=32).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(bad("username must be 3-32 characters of a-z, 0-9, _ . -"))
        }
    }

    /// The username.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// 8-256 characters. Never logged, never serialised.
pub struct Password(String);

impl Password {
    /// # Errors
    /// `bad_request` when shorter than 8 or longer than 256 characters.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        if (8..=256).contains(&raw.chars().count()) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(bad("password must be 8-256 characters"))
        }
    }

    /// The secret itself, for hashing only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}

/// A display name: 1-64 characters, trimmed; defaults to the username.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    /// # Errors
    /// `bad_request` when empty after trimming, over 64 characters or
    /// holding a NUL.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let trimmed = no_nul("display_name", raw)?.trim();
        if (1..=64).contains(&trimmed.chars().count()) {
            Ok(Self(trimmed.to_owned()))
        } else {
            Err(bad("display_name must be 1-64 characters"))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A room name: 1-100 characters, trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomName(String);

impl RoomName {
    /// # Errors
    /// `bad_request` when empty after trimming, over 100 characters or
    /// holding a NUL.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let trimmed = no_nul("name", raw)?.trim();
        if (1..=100).contains(&trimmed.chars().count()) {
            Ok(Self(trimmed.to_owned()))
        } else {
            Err(bad("name must be 1-100 characters"))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A message body: 1-4000 characters, not only whitespace. Stored as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageBody(String);

impl MessageBody {
    /// # Errors
    /// `bad_request` when empty, only whitespace, over 4000 characters or
    /// holding a NUL.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        if no_nul("body", raw)?.trim().is_empty() {
            return Err(bad("body must not be empty or only whitespace"));
        }
        if raw.chars().count() > 4000 {
            return Err(bad("body must be at most 4000 characters"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The sender's idempotency key: 1-64 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientId(String);

impl ClientId {
    /// # Errors
    /// `bad_request` when empty, over 64 characters or holding a NUL.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        if (1..=64).contains(&no_nul("client_id", raw)?.chars().count()) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(bad("client_id must be 1-64 characters"))
        }
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a user may do (SPEC §2): agents and admins see every room; admins own
/// the admin endpoints.
///
/// Stored as its name in `users.role` (a `TEXT` column with a `CHECK`
/// constraint); reading any other value is an error, never a silent default.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    diesel::expression::AsExpression,
    diesel::deserialize::FromSqlRow,
    utoipa::ToSchema,
)]
#[diesel(sql_type = diesel::sql_types::Text)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A chat user: sees the rooms they belong to.
    Member,
    /// Support staff: reads, joins and posts in every room.
    Agent,
    /// An agent who also manages users.
    Admin,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 3] = [Role::Member, Role::Agent, Role::Admin];

    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Agent => "agent",
            Role::Admin => "admin",
        }
    }

    /// # Errors
    /// `bad_request` for anything but `member`, `agent`, `admin`.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        match raw {
            "member" => Ok(Role::Member),
            "agent" => Ok(Role::Agent),
            "admin" => Ok(Role::Admin),
            _ => Err(bad("role must be member, agent or admin")),
        }
    }

    /// Agents and admins may see, join and post in every room. The one
    /// place that decides it: the SQL visibility check binds
    /// [`Role::seeing_every_room`].
    pub fn sees_every_room(self) -> bool {
        self >= Role::Agent
    }

    /// The roles that see every room.
    pub fn seeing_every_room() -> Vec<Role> {
        Role::ALL
            .into_iter()
            .filter(|r| r.sees_every_room())
            .collect()
    }
}

/// Serialises a time as RFC 3339 UTC with milliseconds: `2026-11-22T10:00:00.123Z`.
pub fn serialize_time<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(t))
}

/// [`serialize_time`] for a time that may be absent (`null`).
pub fn serialize_opt_time<S: Serializer>(
    t: &Option<DateTime<Utc>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => serialize_time(t, s),
        None => s.serialize_none(),
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The SPEC's user object. Never carries a password or hash.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UserView {
    /// User id.
    pub id: UserId,
    /// Login name.
    pub username: String,
    /// Shown name.
    pub display_name: String,
    /// `member`, `agent` or `admin`.
    pub role: Role,
    /// When the account was created.
    #[serde(serialize_with = "serialize_time")]
    #[schema(example = "2026-11-22T10:00:00.123Z")]
    pub created_at: DateTime<Utc>,
}

/// The SPEC's room object.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RoomView {
    /// Room id.
    pub id: RoomId,
    /// Room name.
    pub name: String,
    /// Creator's user id.
    pub created_by: UserId,
    /// When the room was created.
    #[serde(serialize_with = "serialize_time")]
    pub created_at: DateTime<Utc>,
    /// Members (agents and admins reading a room are not members unless added).
    pub member_count: i64,
    /// Seq of the room's latest message (0 when empty).
    pub last_seq: Seq,
    /// The caller's read marker: the highest seq they have read (0 when never set).
    pub last_read_seq: Seq,
    /// `last_seq - last_read_seq`.
    pub unread: i64,
}

/// The author inside a message object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AuthorView {
    /// User id.
    pub id: UserId,
    /// Login name.
    pub username: String,
    /// Shown name.
    pub display_name: String,
}

/// The SPEC's message object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct MessageView {
    /// Message id.
    pub id: MessageId,
    /// Room id.
    pub room_id: RoomId,
    /// Position in the room: 1, 2, 3, … without gaps, in commit order.
    pub seq: Seq,
    /// Who sent it.
    pub author: AuthorView,
    /// The text; `""` once deleted.
    pub body: String,
    /// The sender's idempotency key, if any.
    pub client_id: Option<String>,
    /// Commit time.
    #[serde(serialize_with = "serialize_time")]
    #[schema(example = "2026-11-22T10:00:00.123Z")]
    pub created_at: DateTime<Utc>,
    /// When the author last edited it (null: never).
    #[serde(default, serialize_with = "serialize_opt_time")]
    #[schema(example = json!(null))]
    pub edited_at: Option<DateTime<Utc>>,
    /// When it was deleted (null: it was not); a deleted message is a
    /// tombstone: same id, seq, author and time, body `""`.
    #[serde(default, serialize_with = "serialize_opt_time")]
    #[schema(example = json!(null))]
    pub deleted_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
impl MessageView {
    /// A message for unit tests: id = seq, author 9 "ann", now.
    pub(crate) fn sample(room_id: i64, seq: i64, body: &str) -> Self {
        MessageView {
            id: MessageId(seq),
            room_id: RoomId(room_id),
            seq: Seq(seq),
            author: AuthorView {
                id: UserId(9),
                username: "ann".into(),
                display_name: "Ann".into(),
            },
            body: body.into(),
            client_id: None,
            created_at: Utc::now(),
            edited_at: None,
            deleted_at: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_follow_the_pattern() {
        for ok in ["abc", "a.b-c_d", "x23", &"a".repeat(32)] {
            assert!(Username::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["ab", "ABC", "a b", "émile", &"a".repeat(33), ""] {
            assert!(Username::parse(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn every_parser_answers_any_string_by_its_rule(raw in proptest::prelude::any::<String>()) {
            let chars = raw.chars().count();
            let no_nul = !raw.contains('\0');
            proptest::prop_assert_eq!(
                MessageBody::parse(&raw).is_ok(),
                no_nul && !raw.trim().is_empty() && chars <= 4000
            );
            proptest::prop_assert_eq!(
                ClientId::parse(&raw).is_ok(),
                no_nul && (1..=64).contains(&chars)
            );
            let trimmed = raw.trim().chars().count();
            proptest::prop_assert_eq!(
                RoomName::parse(&raw).is_ok(),
                no_nul && (1..=100).contains(&trimmed)
            );
            proptest::prop_assert_eq!(
                DisplayName::parse(&raw).is_ok(),
                no_nul && (1..=64).contains(&trimmed)
            );
            let _ = (Username::parse(&raw), Password::parse(&raw), Role::parse(&raw));
        }
    }

    #[test]
    fn stored_text_refuses_nul() {
        assert!(DisplayName::parse("a\0b").is_err());
        assert!(RoomName::parse("room\0").is_err());
        assert!(MessageBody::parse("hi\0there").is_err());
        assert!(ClientId::parse("\0").is_err());
        let e = MessageBody::parse("x\0").unwrap_err();
        assert!(e.to_string().contains("NUL"), "{e}");
        assert!(MessageBody::parse("hi \u{1} there").is_ok());
    }

    #[test]
    fn passwords_are_8_to_256_characters() {
        assert!(Password::parse("1234567").is_err());
        assert!(Password::parse("12345678").is_ok());
        assert!(Password::parse(&"é".repeat(256)).is_ok());
        assert!(Password::parse(&"x".repeat(257)).is_err());
        assert_eq!(
            format!("{:?}", Password::parse("secret-pass").unwrap()),
            "Password(..)"
        );
    }

    #[test]
    fn bodies_are_1_to_4000_characters_and_not_only_whitespace() {
        assert!(MessageBody::parse("").is_err());
        assert!(MessageBody::parse(" \n\t ").is_err());
        assert!(MessageBody::parse(" hi ").unwrap().as_str() == " hi ");
        assert!(MessageBody::parse(&"ü".repeat(4000)).is_ok());
        assert!(MessageBody::parse(&"x".repeat(4001)).is_err());
    }

    #[test]
    fn client_ids_are_1_to_64_characters() {
        assert!(ClientId::parse("").is_err());
        assert!(ClientId::parse(&"c".repeat(64)).is_ok());
        assert!(ClientId::parse(&"c".repeat(65)).is_err());
    }

    #[test]
    fn roles_order_and_parse() {
        assert!(Role::Admin.sees_every_room() && Role::Agent.sees_every_room());
        assert!(!Role::Member.sees_every_room());
        assert_eq!(Role::parse("agent").unwrap(), Role::Agent);
        assert!(Role::parse("root").is_err());
    }

    #[test]
    fn times_have_milliseconds_and_z() {
        let t = DateTime::parse_from_rfc3339("2026-11-22T10:00:00.123456+00:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(format_time(&t), "2026-11-22T10:00:00.123Z");
    }
}

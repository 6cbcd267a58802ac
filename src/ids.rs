//! Id newtypes: a `UserId` cannot be passed where a `RoomId` is expected.
//!
//! Each is an `i64` on the wire (a JSON integer, `#[serde(transparent)]`)
//! and in PostgreSQL (`BIGINT`), and nothing else: they carry no validation,
//! only meaning. [`Seq`] is a position in a room rather than an id, but it
//! travels beside room ids everywhere and is as easy to swap.

use diesel::deserialize::FromSql;
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{Output, ToSql};
use diesel::sql_types::BigInt;
use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug,
            Clone,
            Copy,
            PartialEq,
            Eq,
            Hash,
            PartialOrd,
            Ord,
            Default,
            Serialize,
            Deserialize,
            diesel::expression::AsExpression,
            diesel::deserialize::FromSqlRow,
            utoipa::ToSchema,
        )]
        #[serde(transparent)]
        #[diesel(sql_type = BigInt)]
        pub struct $name(pub i64);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl ToSql<BigInt, Pg> for $name {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> diesel::serialize::Result {
                <i64 as ToSql<BigInt, Pg>>::to_sql(&self.0, out)
            }
        }

        impl FromSql<BigInt, Pg> for $name {
            fn from_sql(bytes: PgValue<'_>) -> diesel::deserialize::Result<Self> {
                <i64 as FromSql<BigInt, Pg>>::from_sql(bytes).map($name)
            }
        }
    };
}

id_type!(
    /// `users.id`.
    UserId
);
id_type!(
    /// `rooms.id`.
    RoomId
);
id_type!(
    /// `messages.id`.
    MessageId
);
id_type!(
    /// `auth_tokens.id`: what a logout revokes.
    TokenId
);
id_type!(
    /// A message's position in its room: 1, 2, 3, … without gaps; 0 is
    /// "before the first message".
    Seq
);

/// The distance between two positions.
impl std::ops::Sub for Seq {
    type Output = i64;
    fn sub(self, rhs: Seq) -> i64 {
        self.0 - rhs.0
    }
}

/// The position `n` after this one.
impl std::ops::Add<i64> for Seq {
    type Output = Seq;
    fn add(self, n: i64) -> Seq {
        Seq(self.0 + n)
    }
}

/// The position `n` before this one.
impl std::ops::Sub<i64> for Seq {
    type Output = Seq;
    fn sub(self, n: i64) -> Seq {
        Seq(self.0 - n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_plain_integers_on_the_wire() {
        assert_eq!(serde_json::to_string(&RoomId(7)).unwrap(), "7");
        assert_eq!(serde_json::from_str::<UserId>("12").unwrap(), UserId(12));
        assert!(serde_json::from_str::<Seq>("\"3\"").is_err());
        assert_eq!(TokenId(9).to_string(), "9");
    }
}

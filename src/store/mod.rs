//! Queries, one module per table group. Every function takes the connection
//! it runs on, so callers compose several inside one [`crate::db::Db::transaction`].

pub mod activity;
pub mod events;
pub mod messages;
pub mod rooms;
pub mod sends;
pub mod tokens;
pub mod users;

/// True when `e` is a unique-constraint violation (a taken username, a
/// repeated `client_id`).
pub fn is_unique_violation(e: &diesel::result::Error) -> bool {
    matches!(
        e,
        diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)
    )
}

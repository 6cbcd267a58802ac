//! Queries, one module per table group. Every function takes the connection
//! it runs on, so callers compose several inside one [`crate::db::Db::transaction`].

pub mod activity;
pub mod events;
pub mod messages;
pub mod presence;
pub mod reads;
pub mod rooms;
pub mod search;
pub mod sends;
pub mod tokens;
pub mod users;

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::QueryResult;

/// A raw-SQL statement (`diesel::sql_query` with its binds) allowed into the
/// connection's prepared-statement cache, keyed by its SQL text.
///
/// diesel never caches `sql_query` statements (it cannot know the text is
/// one of a few fixed shapes), so each run was parsed and planned again:
/// 0.4 ms of PostgreSQL CPU for a history page whose execution takes 0.14 ms.
/// Every statement of this module is built from constant text (the `format!`
/// pieces are constants too), so caching them is safe.
#[derive(Debug, Clone)]
pub struct Cached<Q>(Q);

/// `.cached()` on any query: see [`Cached`].
pub trait CacheStatement: Sized {
    /// This statement, prepared once per connection.
    fn cached(self) -> Cached<Self> {
        Cached(self)
    }
}

impl<Q> CacheStatement for Q {}

impl<Q: Query> Query for Cached<Q> {
    type SqlType = Q::SqlType;
}

impl<Q> QueryId for Cached<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for Cached<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &Pg) -> QueryResult<bool> {
        Ok(true)
    }
}

/// True when `e` is a unique-constraint violation (a taken username, a
/// repeated `client_id`).
pub fn is_unique_violation(e: &diesel::result::Error) -> bool {
    matches!(
        e,
        diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)
    )
}

//! `auth_tokens`: bearer tokens, stored only as SHA-256 hashes.

use std::time::Duration;

use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::result::Error;
use diesel::sql_types::{Bool, Double};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::users::UserRow;
use crate::ids::{TokenId, UserId};
use crate::schema::{auth_tokens, users};

/// Stores a token hash for `user_id` and returns the token's id.
pub async fn insert(
    conn: &mut AsyncPgConnection,
    user_id: UserId,
    hash: &[u8],
) -> Result<TokenId, Error> {
    diesel::insert_into(auth_tokens::table)
        .values((
            auth_tokens::user_id.eq(user_id),
            auth_tokens::token_hash.eq(hash),
        ))
        .returning(auth_tokens::id)
        .get_result(conn)
        .await
}

/// A token found by [`lookup`].
pub struct Found {
    /// The token's id.
    pub id: TokenId,
    /// The stored hash (the caller compares it in constant time).
    pub hash: Vec<u8>,
    /// Seconds it has left before it expires, by the database's clock.
    pub seconds_left: f64,
    /// Its user.
    pub user: UserRow,
}

/// The token with this hash, unless it was issued `ttl` or longer ago (it
/// expired): an index lookup on the unique hash. Expiry is decided by the
/// database's clock, the one that stamped `created_at`.
pub async fn lookup(
    conn: &mut AsyncPgConnection,
    hash: &[u8],
    ttl: Duration,
) -> Result<Option<Found>, Error> {
    let ttl = ttl.as_secs_f64();
    let row: Option<(TokenId, Vec<u8>, f64, UserRow)> = auth_tokens::table
        .inner_join(users::table)
        .filter(auth_tokens::token_hash.eq(hash))
        .filter(
            sql::<Bool>("auth_tokens.created_at > now() - make_interval(secs => ")
                .bind::<Double, _>(ttl)
                .sql(")"),
        )
        .select((
            auth_tokens::id,
            auth_tokens::token_hash,
            sql::<Double>("extract(epoch FROM auth_tokens.created_at - now())::float8 + ")
                .bind::<Double, _>(ttl),
            UserRow::as_select(),
        ))
        .first(conn)
        .await
        .optional()?;
    Ok(row.map(|(id, hash, seconds_left, user)| Found {
        id,
        hash,
        seconds_left,
        user,
    }))
}

/// Deletes up to `limit` tokens issued `ttl` or longer ago (expired, by the
/// database's clock) and returns their ids, oldest first (a range scan on
/// `created_at`).
pub async fn delete_expired(
    conn: &mut AsyncPgConnection,
    ttl: Duration,
    limit: i64,
) -> Result<Vec<TokenId>, Error> {
    #[derive(QueryableByName)]
    struct Deleted {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: TokenId,
    }
    let rows: Vec<Deleted> = diesel::sql_query(
        "DELETE FROM auth_tokens WHERE id IN ( \
             SELECT id FROM auth_tokens WHERE created_at <= now() - make_interval(secs => $1) \
             ORDER BY created_at LIMIT $2 \
         ) RETURNING id",
    )
    .bind::<Double, _>(ttl.as_secs_f64())
    .bind::<diesel::sql_types::BigInt, _>(limit)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// Deletes every token of `user_id` ("log out everywhere"); their ids.
pub async fn delete_all_of(
    conn: &mut AsyncPgConnection,
    user_id: UserId,
) -> Result<Vec<TokenId>, Error> {
    diesel::delete(auth_tokens::table.filter(auth_tokens::user_id.eq(user_id)))
        .returning(auth_tokens::id)
        .get_results(conn)
        .await
}

/// Deletes a token; returns whether it existed.
pub async fn delete(conn: &mut AsyncPgConnection, token_id: TokenId) -> Result<bool, Error> {
    let n = diesel::delete(auth_tokens::table.find(token_id))
        .execute(conn)
        .await?;
    Ok(n > 0)
}

/// Which of `ids` still exist (the others were revoked).
pub async fn existing(
    conn: &mut AsyncPgConnection,
    ids: &[TokenId],
) -> Result<Vec<TokenId>, Error> {
    auth_tokens::table
        .filter(auth_tokens::id.eq_any(ids))
        .select(auth_tokens::id)
        .load(conn)
        .await
}

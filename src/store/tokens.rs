//! `auth_tokens`: bearer tokens, stored only as SHA-256 hashes.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error;
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
    /// When it was issued.
    pub issued_at: DateTime<Utc>,
    /// Its user.
    pub user: UserRow,
}

/// The token with this hash, if it was issued after `issued_after` (older
/// ones have expired): an index lookup on the unique hash.
pub async fn lookup(
    conn: &mut AsyncPgConnection,
    hash: &[u8],
    issued_after: DateTime<Utc>,
) -> Result<Option<Found>, Error> {
    let row: Option<(TokenId, Vec<u8>, DateTime<Utc>, UserRow)> = auth_tokens::table
        .inner_join(users::table)
        .filter(auth_tokens::token_hash.eq(hash))
        .filter(auth_tokens::created_at.gt(issued_after))
        .select((
            auth_tokens::id,
            auth_tokens::token_hash,
            auth_tokens::created_at,
            UserRow::as_select(),
        ))
        .first(conn)
        .await
        .optional()?;
    Ok(row.map(|(id, hash, issued_at, user)| Found {
        id,
        hash,
        issued_at,
        user,
    }))
}

/// Deletes up to `limit` tokens issued at or before `issued_by` (expired)
/// and returns their ids, oldest first (a range scan on `created_at`).
pub async fn delete_expired(
    conn: &mut AsyncPgConnection,
    issued_by: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<TokenId>, Error> {
    #[derive(QueryableByName)]
    struct Deleted {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: TokenId,
    }
    let rows: Vec<Deleted> = diesel::sql_query(
        "DELETE FROM auth_tokens WHERE id IN ( \
             SELECT id FROM auth_tokens WHERE created_at <= $1 ORDER BY created_at LIMIT $2 \
         ) RETURNING id",
    )
    .bind::<diesel::sql_types::Timestamptz, _>(issued_by)
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

//! `auth_tokens`: bearer tokens, stored only as SHA-256 hashes.

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

/// The token's id, stored hash and user for a token hash (an index lookup on
/// the unique hash; the caller compares the returned hash in constant time).
pub async fn lookup(
    conn: &mut AsyncPgConnection,
    hash: &[u8],
) -> Result<Option<(TokenId, Vec<u8>, UserRow)>, Error> {
    auth_tokens::table
        .inner_join(users::table)
        .filter(auth_tokens::token_hash.eq(hash))
        .select((
            auth_tokens::id,
            auth_tokens::token_hash,
            UserRow::as_select(),
        ))
        .first(conn)
        .await
        .optional()
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

//! `users`: accounts and roles.

use chrono::{DateTime, Utc};
use diesel::deserialize::FromSql;
use diesel::pg::{Pg, PgValue};
use diesel::prelude::*;
use diesel::result::Error;
use diesel::serialize::{Output, ToSql};
use diesel::sql_types::Text;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::domain::{Role, UserView};
use crate::ids::UserId;
use crate::schema::users;

/// A stored user, hash included: never serialise this, use [`UserRow::view`].
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = users)]
pub struct UserRow {
    /// User id.
    pub id: UserId,
    /// Login name.
    pub username: String,
    /// Shown name.
    pub display_name: String,
    /// Role.
    pub role: Role,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

impl UserRow {
    /// The SPEC's user object.
    pub fn view(&self) -> UserView {
        UserView {
            id: self.id,
            username: self.username.clone(),
            display_name: self.display_name.clone(),
            role: self.role,
            created_at: self.created_at,
        }
    }
}

/// A new account.
#[derive(Debug, Insertable)]
#[diesel(table_name = users)]
pub struct NewUser<'a> {
    /// Login name (already validated).
    pub username: &'a str,
    /// Shown name.
    pub display_name: &'a str,
    /// Role.
    pub role: Role,
    /// Argon2id PHC string.
    pub password_hash: &'a str,
}

/// Inserts a user; `None` when the username is taken (the one place that
/// tells a taken name from a failure, for the API and the CLI alike).
pub async fn insert(
    conn: &mut AsyncPgConnection,
    new: &NewUser<'_>,
) -> Result<Option<UserRow>, Error> {
    let inserted = diesel::insert_into(users::table)
        .values(new)
        .returning(UserRow::as_returning())
        .get_result(conn)
        .await;
    match inserted {
        Ok(user) => Ok(Some(user)),
        Err(e) if super::is_unique_violation(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

impl ToSql<Text, Pg> for Role {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> diesel::serialize::Result {
        <str as ToSql<Text, Pg>>::to_sql(self.as_str(), out)
    }
}

impl FromSql<Text, Pg> for Role {
    /// Anything but the three names is an error: the column's `CHECK`
    /// constraint should make that impossible, and a guess would be worse.
    fn from_sql(bytes: PgValue<'_>) -> diesel::deserialize::Result<Self> {
        let name = <String as FromSql<Text, Pg>>::from_sql(bytes)?;
        Role::parse(&name).map_err(|_| format!("unknown role {name:?} in users.role").into())
    }
}

/// Looks a user up by username.
pub async fn by_username(
    conn: &mut AsyncPgConnection,
    name: &str,
) -> Result<Option<UserRow>, Error> {
    users::table
        .filter(users::username.eq(name))
        .select(UserRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Looks a user up by id.
pub async fn by_id(conn: &mut AsyncPgConnection, id: UserId) -> Result<Option<UserRow>, Error> {
    users::table
        .find(id)
        .select(UserRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Users whose username starts with `prefix`, by username (an index range
/// scan). Run it under [`custom_plans`]: a generic plan of `LIKE $1` cannot
/// use the index (PostgreSQL turns only a known pattern into a range).
pub async fn with_prefix(
    conn: &mut AsyncPgConnection,
    prefix: &str,
    limit: i64,
) -> Result<Vec<UserRow>, Error> {
    let escaped: String = prefix
        .chars()
        .flat_map(|c| match c {
            '%' | '_' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    users::table
        .filter(users::username.like(format!("{escaped}%")).escape('\\'))
        .order(users::username.asc())
        .limit(limit)
        .select(UserRow::as_select())
        .load(conn)
        .await
}

/// Plans the rest of this transaction's statements for their parameters'
/// values (chatpool's sessions otherwise use generic plans, db::pool).
pub async fn custom_plans(conn: &mut AsyncPgConnection) -> Result<(), Error> {
    diesel::sql_query("SET LOCAL plan_cache_mode = force_custom_plan")
        .execute(conn)
        .await
        .map(drop)
}

/// Users with id above `after_id`, by id (keyset pagination).
pub async fn after_id(
    conn: &mut AsyncPgConnection,
    after_id: UserId,
    limit: i64,
) -> Result<Vec<UserRow>, Error> {
    users::table
        .filter(users::id.gt(after_id))
        .order(users::id.asc())
        .limit(limit)
        .select(UserRow::as_select())
        .load(conn)
        .await
}

/// Changes a user's role; `None` when there is no such user.
pub async fn set_role(
    conn: &mut AsyncPgConnection,
    id: UserId,
    role: Role,
) -> Result<Option<UserRow>, Error> {
    diesel::update(users::table.find(id))
        .set(users::role.eq(role.as_str()))
        .returning(UserRow::as_returning())
        .get_result(conn)
        .await
        .optional()
}

/// The admins' ids, their rows locked until the transaction ends, so two
/// demotions at once cannot both see another admin left.
pub async fn lock_admins(conn: &mut AsyncPgConnection) -> Result<Vec<UserId>, Error> {
    users::table
        .filter(users::role.eq(Role::Admin.as_str()))
        .select(users::id)
        .for_update()
        .load(conn)
        .await
}

/// Number of users.
pub async fn count(conn: &mut AsyncPgConnection) -> Result<i64, Error> {
    users::table.count().get_result(conn).await
}

/// How many of `ids` (distinct) name an existing user.
pub async fn count_existing(conn: &mut AsyncPgConnection, ids: &[UserId]) -> Result<i64, Error> {
    users::table
        .filter(users::id.eq_any(ids))
        .count()
        .get_result(conn)
        .await
}

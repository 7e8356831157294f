//! Operator accounts, browser sessions and API tokens. Only digests and hashes are stored.

use sqlx::Row;

use super::{Db, DbError};

/// An operator account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRow {
    pub id: i64,
    pub username: String,
    /// Argon2id PHC string.
    pub password_hash: String,
}

/// A live browser session, joined with its user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRow {
    pub user_id: i64,
    pub username: String,
    pub csrf: String,
    pub expires_at: i64,
}

/// An API token as listed to operators (never the token itself).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TokenRow {
    pub id: i64,
    pub name: String,
    pub created_by: Option<String>,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl Db {
    pub async fn count_users(&self) -> Result<i64, DbError> {
        let row = sqlx::query("SELECT count(*) FROM users")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Creates the account, or sets the password of an existing one.
    pub async fn put_user(&self, username: &str, hash: &str, now: i64) -> Result<i64, DbError> {
        let row = sqlx::query(
            "INSERT INTO users (username, password_hash, created_at, password_changed_at)
             VALUES (?, ?, ?, ?)
             ON CONFLICT (username) DO UPDATE SET password_hash = excluded.password_hash,
                 password_changed_at = excluded.password_changed_at
             RETURNING id",
        )
        .bind(username)
        .bind(hash)
        .bind(now)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }

    /// Sets a password and ends every session of that user.
    pub async fn set_password(&self, user_id: i64, hash: &str, now: i64) -> Result<(), DbError> {
        let mut tx = self.write_tx().await?;
        sqlx::query("UPDATE users SET password_hash = ?, password_changed_at = ? WHERE id = ?")
            .bind(hash)
            .bind(now)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM sessions WHERE user_id = ?")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn user_by_name(&self, username: &str) -> Result<Option<UserRow>, DbError> {
        let row = sqlx::query("SELECT id, username, password_hash FROM users WHERE username = ?")
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(UserRow {
                id: r.try_get(0)?,
                username: r.try_get(1)?,
                password_hash: r.try_get(2)?,
            })
        })
        .transpose()
    }

    pub async fn create_session(
        &self,
        id_sha256: &str,
        user_id: i64,
        csrf: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<(), DbError> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM sessions WHERE expires_at <= ?")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO sessions (id_sha256, user_id, csrf, created_at, expires_at)
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(id_sha256)
        .bind(user_id)
        .bind(csrf)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The unexpired session with this id digest.
    pub async fn session(&self, id_sha256: &str, now: i64) -> Result<Option<SessionRow>, DbError> {
        let row = sqlx::query(
            "SELECT s.user_id, u.username, s.csrf, s.expires_at
             FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.id_sha256 = ? AND s.expires_at > ?",
        )
        .bind(id_sha256)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(SessionRow {
                user_id: r.try_get(0)?,
                username: r.try_get(1)?,
                csrf: r.try_get(2)?,
                expires_at: r.try_get(3)?,
            })
        })
        .transpose()
    }

    pub async fn delete_session(&self, id_sha256: &str) -> Result<(), DbError> {
        sqlx::query("DELETE FROM sessions WHERE id_sha256 = ?")
            .bind(id_sha256)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn create_token(
        &self,
        name: &str,
        token_sha256: &str,
        created_by: Option<i64>,
        now: i64,
    ) -> Result<i64, DbError> {
        let row = sqlx::query(
            "INSERT INTO api_tokens (name, token_sha256, created_by, created_at)
             VALUES (?, ?, ?, ?) RETURNING id",
        )
        .bind(name)
        .bind(token_sha256)
        .bind(created_by)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }

    /// The id and name of the unrevoked token with this digest. Marks it used, at most once a
    /// minute, so automation polling the API does not write on every request.
    pub async fn use_token(
        &self,
        token_sha256: &str,
        now: i64,
    ) -> Result<Option<(i64, String)>, DbError> {
        let row = sqlx::query(
            "SELECT id, name, last_used_at FROM api_tokens
             WHERE token_sha256 = ? AND revoked_at IS NULL",
        )
        .bind(token_sha256)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let (id, name, last): (i64, String, Option<i64>) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        if last.is_none_or(|at| now - at >= 60_000) {
            sqlx::query("UPDATE api_tokens SET last_used_at = ? WHERE id = ?")
                .bind(now)
                .bind(id)
                .execute(&self.pool)
                .await?;
        }
        Ok(Some((id, name)))
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenRow>, DbError> {
        let rows = sqlx::query(
            "SELECT t.id, t.name, u.username, t.created_at, t.last_used_at, t.revoked_at
             FROM api_tokens t LEFT JOIN users u ON u.id = t.created_by
             ORDER BY t.id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TokenRow {
                    id: r.try_get(0)?,
                    name: r.try_get(1)?,
                    created_by: r.try_get(2)?,
                    created_at: r.try_get(3)?,
                    last_used_at: r.try_get(4)?,
                    revoked_at: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// Revokes a token; false when there is no such unrevoked token.
    pub async fn revoke_token(&self, id: i64, now: i64) -> Result<bool, DbError> {
        let done =
            sqlx::query("UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
                .bind(now)
                .bind(id)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }
}

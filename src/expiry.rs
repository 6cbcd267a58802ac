//! Token expiry (SPEC §6 "Tokens expire"): a token stops working
//! `CHATPOOL_TOKEN_TTL` after it was issued, and a background job deletes the
//! expired ones.
//!
//! Authentication already refuses an expired token (401; by the database's
//! clock, see [`crate::store::tokens::lookup`]); this job removes the rows, so tokens do not
//! pile up, and announces each as revoked, so the sockets still holding one
//! close with 1008 on every instance and the token caches forget it. It runs
//! every [`period`] (30 s, or half the TTL when that is shorter), through the
//! pool like any other work (one transaction per batch of [`BATCH`], the usual
//! wait and time limits): it never opens a connection of its own. Several
//! instances sweeping at once delete each row once.

use std::time::Duration;

use futures_util::FutureExt;

use crate::announce::commit_and_announce;
use crate::error::ApiError;
use crate::events::Event;
use crate::state::AppState;
use crate::store;

/// Tokens deleted per transaction.
pub const BATCH: i64 = 500;

/// Pause between two batches of a backlog.
const BATCH_PAUSE: Duration = Duration::from_millis(100);

/// How often the job runs for `ttl`: 30 s, or half the TTL when shorter, and
/// at least once a second.
pub fn period(ttl: Duration) -> Duration {
    (ttl / 2).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// Starts the job on the shutdown tracker; it ends when shutdown starts.
pub fn spawn(state: &AppState) {
    let state = state.clone();
    let tracker = state.shutdown().tracker().clone();
    tracker.spawn(async move {
        let every = period(state.settings().token_ttl);
        let stop = state.shutdown().token();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            match sweep(&state, &stop).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(tokens = n, "expired tokens deleted"),
                Err(e) => {
                    tracing::warn!(error = %e, "deleting expired tokens failed; retrying later")
                }
            }
        }
    });
}

/// Deletes every expired token, in batches (a short pause between them, and
/// none started once `stop` is cancelled), announcing each as revoked;
/// returns how many.
///
/// # Errors
/// A batch's database failure (the batches before it stay done).
pub async fn sweep(
    state: &AppState,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<usize, ApiError> {
    let ttl = state.settings().token_ttl;
    let mut total = 0;
    loop {
        let deleted = commit_and_announce(state.db(), state.hub(), move |conn, outbox| {
            async move {
                let ids = store::tokens::delete_expired(conn, ttl, BATCH).await?;
                for token_id in &ids {
                    outbox.announce(Event::Revoked {
                        token_id: *token_id,
                    });
                }
                Ok::<_, ApiError>(ids.len())
            }
            .boxed()
        })
        .await?;
        total += deleted;
        if (deleted as i64) < BATCH {
            return Ok(total);
        }
        // A backlog (a first deploy) goes out in steps, leaving the pool and
        // the token caches room in between, and yields to shutdown.
        tokio::select! {
            () = stop.cancelled() => return Ok(total),
            () = tokio::time::sleep(BATCH_PAUSE) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_runs_every_30_s_or_twice_per_ttl() {
        assert_eq!(
            period(Duration::from_secs(30 * 86_400)),
            Duration::from_secs(30)
        );
        assert_eq!(period(Duration::from_secs(10)), Duration::from_secs(5));
        assert_eq!(period(Duration::from_secs(1)), Duration::from_secs(1));
    }
}

//! `GET /sync/pull`: what changed since a cursor, answered from the views,
//! with an optional long-poll woken by the user's next push.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

use super::page::{Page, PageChange};
use super::wire::PullResponse;
use crate::error::ErrorResponse;
use crate::error::{ApiError, ApiResult};
use crate::events::log::{DEFAULT_LIMIT, MAX_LIMIT, MAX_PAGE_PAYLOAD_BYTES};
use crate::events::Kind;
use crate::events::{read_tip, LogTip};
use crate::http::codec::{Accepts, Format};
use crate::http::QueryParams;
use crate::state::long_polls::Refused;
use crate::state::read_ahead::PageKey;
use crate::state::AppState;
use crate::state::UserAuth;
use crate::store::{StoreError, StoreResult, UserDb};
use crate::views::changes::{ChangedSince, StoredChange, StoredHead, STORED_HEAD_COLUMNS};
use crate::views::remote_read::changed_since;
use crate::views::CLIENT_KINDS;

pub const MAX_WAIT_SECS: u64 = 60;

/// A parsed pull request.
#[derive(Debug, Clone)]
pub struct PullQuery {
    pub since: u64,
    pub limit: u64,
    pub kinds: Vec<Kind>,
    pub wait: Duration,
}

impl PullQuery {
    fn parse(params: &QueryParams) -> ApiResult<Self> {
        Ok(PullQuery {
            since: params.cursor()?,
            limit: params.number("limit", DEFAULT_LIMIT, 1..=MAX_LIMIT)?,
            kinds: parse_kinds(params.raw("kinds"))?,
            wait: Duration::from_secs(params.number("wait", 0, 0..=MAX_WAIT_SECS)?),
        })
    }
}

fn parse_kinds(raw: Option<&str>) -> ApiResult<Vec<Kind>> {
    let Some(raw) = raw.filter(|r| !r.trim().is_empty()) else { return Ok(CLIENT_KINDS.to_vec()) };
    let mut kinds = Vec::new();
    for name in raw.split(',').map(str::trim) {
        let kind = Kind::parse(name).filter(|k| CLIENT_KINDS.contains(k)).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!("kinds: `{name}` is not one of entry, memory, tag, embedding"),
            )
        })?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    Ok(kinds)
}

/// Changes since a cursor.
#[utoipa::path(get, path = "/sync/pull", tag = "sync", security(("bearer" = [])),
    params(
        ("since" = Option<u64>, Query, description = "Cursor from the last pull (default 0: current state)"),
        ("limit" = Option<u64>, Query, description = "1–1000, default 500"),
        ("kinds" = Option<String>, Query, description = "Comma list of entry, memory, tag, embedding (default all)"),
        ("wait" = Option<u64>, Query, description = "0–60 s: hold the request until something changes"),
    ),
    responses(
        (status = 200, description = "Each aggregate changed after `since` once, in order of its latest change", content((PullResponse = "application/json"), (PullResponse = "application/msgpack"))),
        (status = 400, description = "A bad query parameter (named in the message)", body = ErrorResponse),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorResponse),
        (status = 409, description = "`cursor_ahead`: `since` is beyond the log head; resync from 0", body = ErrorResponse),
        (status = 429, description = "`too_many_long_polls`: with `wait`, the device or the account already holds as many long-polls as allowed (`LONG_POLLS_PER_DEVICE`, `LONG_POLLS_PER_USER`); see `Retry-After`", body = ErrorResponse),
    ))]
#[tracing::instrument(skip_all)]
pub async fn pull(
    State(state): State<AppState>,
    auth: UserAuth,
    Accepts(format): Accepts,
    params: QueryParams,
) -> ApiResult<Response> {
    let query = PullQuery::parse(&params)?;
    let key = PageKey { since: query.since, limit: query.limit, kinds: query.kinds.clone(), format };
    if let Some(kept) = state.read_ahead.take(auth.user_id, &key).await {
        // Exactly what a read now would give, as long as the log has not moved.
        let conn = auth.db.read().await?;
        let head = read_tip(&conn).await?;
        // Back to the pool first: the next read-ahead takes it, cache and all.
        drop(conn);
        if head == kept.head {
            if let Some(cursor) = kept.next {
                read_next(&state, &auth, &query, format, cursor);
            }
            metrics::counter!("echolia_pulls_total").increment(1);
            metrics::counter!("echolia_pulls_read_ahead_total").increment(1);
            return Ok(format.respond_encoded(StatusCode::OK, kept.body.clone()));
        }
    }
    let page = wait_for_page(&state, &auth, &query).await?;
    if page.has_more {
        read_next(&state, &auth, &query, format, page.cursor);
    }
    metrics::counter!("echolia_pulls_total").increment(1);
    let body = page.encode(format).map_err(|err| ApiError::internal(format!("encoding a pull page: {err}")))?;
    Ok(format.respond_encoded(StatusCode::OK, body))
}

/// Reads and encodes the page after this one in the background, for the
/// device's next pull ([`crate::state::read_ahead`]). Only a page with changes is
/// kept: a long-poll must not be answered with an empty one.
fn read_next(state: &AppState, auth: &UserAuth, query: &PullQuery, format: Format, cursor: u64) {
    let next = PullQuery { since: cursor, wait: Duration::ZERO, ..query.clone() };
    let key = PageKey { since: cursor, limit: next.limit, kinds: next.kinds.clone(), format };
    let db = auth.db.clone();
    let read = state.metrics.scope(async move {
        let page = read_page(&db, &next).await.ok().filter(|page| !page.changes.is_empty())?;
        let body = page.encode(format).ok()?;
        Some((page.head, body, page.has_more.then_some(page.cursor)))
    });
    state.read_ahead.start(auth.user_id, key, read);
}

/// The first page with changes, or the empty one once `wait` ends (or the
/// server stops, or the user's channel goes).
async fn wait_for_page(state: &AppState, auth: &UserAuth, query: &PullQuery) -> ApiResult<Page> {
    // Subscribe before the first read, so a push between the read and the
    // wait is not missed.
    let mut pushes = state.notifier.subscribe(auth.user_id);
    let deadline = tokio::time::Instant::now() + query.wait;
    // Counted as waiting from the first wait until this returns or is dropped.
    let mut waiting = None;
    loop {
        // A long-poll re-checks its device on every pass: a revocation ends it.
        state.auth.require_active(&auth.db, auth.device_id).await?;
        let page = read_page(&auth.db, query).await?;
        if !page.changes.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(page);
        }
        if waiting.is_none() {
            let slot = state.long_polls.hold(auth.user_id, auth.device_id, deadline).map_err(too_many_long_polls)?;
            let gauge = metrics::gauge!("echolia_long_polls_waiting");
            gauge.increment(1);
            waiting = Some((slot, scopeguard::guard(gauge, |gauge| gauge.decrement(1))));
        }
        loop {
            tokio::select! {
                woke = pushes.changed() => if woke.is_err() { return Ok(page) } else { break },
                () = tokio::time::sleep_until(deadline) => return Ok(page),
                () = state.shutdown.cancelled() => return Ok(page),
                // Appends through another server (several share a store) notify nobody here:
                // watch the log's head, one read a second per waiting long-poll (they are
                // bounded per user and device), and the device's status with it.
                () = tokio::time::sleep(HEAD_WATCH) => {
                    state.auth.require_active(&auth.db, auth.device_id).await?;
                    if read_tip(&*auth.db.read().await?).await? != page.head {
                        // A replica behind that head syncs before the next read.
                        auth.db.moved_elsewhere();
                        break;
                    }
                }
            }
        }
    }
}

/// How often a waiting long-poll reads the log's head.
const HEAD_WATCH: Duration = Duration::from_secs(1);

/// 429 for a long-poll over its user's or device's cap (`LONG_POLLS_PER_*`).
fn too_many_long_polls(refused: Refused) -> ApiError {
    let whose = if refused.per_device { "this device" } else { "this account" };
    ApiError::Client {
        status: StatusCode::TOO_MANY_REQUESTS,
        code: "too_many_long_polls",
        message: format!("{whose} already holds {} long-polls (wait > 0); retry after one ends", refused.limit),
        retry_after: Some(refused.retry_after.as_secs_f64().ceil() as u64),
    }
}

/// One page, read from one snapshot of the database.
pub async fn read_page(db: &UserDb, query: &PullQuery) -> ApiResult<Page> {
    // From the embedded replica when it is fresh, else the primary: in one
    // round trip on a remote one.
    let conn = match (db.read_replica().await?, db.remote()) {
        (Some(replica), _) => replica,
        (None, Some(hrana)) => return read_remote_page(hrana, query).await,
        (None, None) => db.read().await?,
    };
    let snapshot = conn.transaction().await?;
    let head = read_tip(&snapshot).await?;
    if query.since > head.seq {
        return Err(cursor_ahead(query.since, head));
    }
    // One row more than the limit: whether there are more. A page ends once
    // its changes' bytes (all of them: payloads, vectors, ids) reach the
    // budget, so it always holds at least one change.
    let mut changed = ChangedSince::open(&snapshot, query.since, query.limit + 1, &query.kinds).await?;
    // For the other heads of a conflict: prepared on the first one.
    let mut read_event = None;
    let (mut changes, mut bytes, mut has_more) = (Vec::new(), 0u64, false);
    while let Some(row) = changed.next().await? {
        if changes.len() as u64 == query.limit || bytes >= MAX_PAGE_PAYLOAD_BYTES {
            has_more = true;
            break;
        }
        let mut others = Vec::new();
        for seq in PageChange::other_head_seqs(&row)? {
            let stmt = match read_event.take() {
                Some(stmt) => stmt,
                None => {
                    let sql = format!(
                        "SELECT {STORED_HEAD_COLUMNS} FROM events WHERE seq = ?1 AND aggregate_id = ?2 AND kind = ?3"
                    );
                    snapshot.prepare(&sql).await?
                }
            };
            others.push(event_at(&stmt, &row, seq).await?);
            read_event = Some(stmt);
        }
        let change = PageChange::new(row, others);
        bytes += change.wire_bytes();
        changes.push(change);
    }
    drop((changed, read_event));
    snapshot.commit().await?;
    let cursor = match changes.last() {
        _ if !has_more => head.seq,
        Some(last) => last.updated_seq(),
        None => query.since,
    };
    Ok(Page { changes, cursor, has_more, head, wire_bytes: bytes })
}

/// [`read_page`] on a remote database: one round trip (views::remote_read),
/// then the same limits as the local page.
async fn read_remote_page(hrana: &crate::store::remote::hrana::Hrana, query: &PullQuery) -> ApiResult<Page> {
    let read = changed_since(hrana, query.since, query.limit + 1, &query.kinds).await?;
    let head = read.head;
    if query.since > head.seq {
        return Err(cursor_ahead(query.since, head));
    }
    let (mut changes, mut bytes, mut has_more) = (Vec::new(), 0u64, false);
    for (row, others) in read.changes {
        if changes.len() as u64 == query.limit || bytes >= MAX_PAGE_PAYLOAD_BYTES {
            has_more = true;
            break;
        }
        let change = PageChange::new(row, others);
        bytes += change.wire_bytes();
        changes.push(change);
    }
    let cursor = match changes.last() {
        _ if !has_more => head.seq,
        Some(last) => last.updated_seq(),
        None => query.since,
    };
    Ok(Page { changes, cursor, has_more, head, wire_bytes: bytes })
}

/// The event of `row`'s head at `seq` ([`STORED_HEAD_COLUMNS`]).
async fn event_at(stmt: &libsql::Statement, row: &StoredChange, seq: u64) -> StoreResult<StoredHead> {
    stmt.reset();
    let mut rows = stmt.query((seq, row.id.as_str(), row.kind.as_str())).await?;
    let event = match rows.next().await? {
        Some(event) => StoredHead::decode(&event, 0),
        None => Err(StoreError::Corrupt(format!(
            "{} {}: its head {seq} is not an event of it in the log",
            row.kind.as_str(),
            row.id
        ))),
    };
    drop(rows);
    stmt.reset();
    event
}

pub fn cursor_ahead(since: u64, head: LogTip) -> ApiError {
    ApiError::conflict("cursor_ahead", format!("since={since} is beyond the log head {}; resync from 0", head.seq))
}

//! A Hrana 3 client over HTTP (`POST {url}/v3/pipeline`, the protocol
//! sqld and Turso speak), for the few calls whose shape decides remote
//! speed: a read of many statements in one round trip, and a conditional
//! write batch that commits all of its statements or none of them.
//! libSQL's own remote client runs every statement of a transaction as a
//! round trip of its own and takes batches only as SQL text; everything
//! else goes through it ([`super::SqldBackend::open`]).
//!
//! Every call has a deadline (`SQLD_TIMEOUT_SECS`, `TURSO_TIMEOUT_SECS`): a
//! server that is down or stalled is [`StoreError::Unavailable`], never a hang.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use super::Auth;
use crate::store::{StoreError, StoreResult};

/// One database (a namespace) of a Hrana server.
#[derive(Clone)]
pub struct Hrana {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    url: String,
    pipeline: String,
    /// Sent as `x-namespace` (sqld); `None` where the host names the database (Turso).
    namespace: Option<String>,
    /// The database in messages: `sqld namespace …`, `Turso database …`.
    label: String,
    auth: Auth,
    timeout: Duration,
}

impl std::fmt::Debug for Hrana {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hrana").field("database", &self.inner.label).finish_non_exhaustive()
    }
}

/// A value as Hrana carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Value {
    Null,
    Integer {
        #[serde(with = "integer_text")]
        value: i64,
    },
    Float {
        value: f64,
    },
    Text {
        value: String,
    },
    Blob {
        #[serde(with = "blob_base64")]
        base64: Vec<u8>,
    },
}

impl Value {
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text { value: text.into() }
    }

    pub fn integer(value: u64) -> StoreResult<Self> {
        let value =
            i64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{value} is too large for SQLite")))?;
        Ok(Self::Integer { value })
    }

    pub fn blob(bytes: Vec<u8>) -> Self {
        Self::Blob { base64: bytes }
    }
}

impl TryFrom<libsql::Value> for Value {
    type Error = StoreError;

    fn try_from(value: libsql::Value) -> StoreResult<Self> {
        Ok(match value {
            libsql::Value::Null => Self::Null,
            libsql::Value::Integer(value) => Self::Integer { value },
            libsql::Value::Real(value) => Self::Float { value },
            libsql::Value::Text(value) => Self::Text { value },
            libsql::Value::Blob(base64) => Self::Blob { base64 },
        })
    }
}

mod integer_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &i64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(itoa::Buffer::new().format(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

mod blob_base64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD_NO_PAD.encode(value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        // Servers may pad or not.
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(text.trim_end_matches('='))
            .map_err(serde::de::Error::custom)
    }
}

/// One statement with its positional arguments (`?1`, `?2`, ...).
#[derive(Debug, Clone, Serialize)]
pub struct Stmt {
    pub sql: Cow<'static, str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<Value>,
    pub want_rows: bool,
}

impl Stmt {
    pub fn new(sql: impl Into<Cow<'static, str>>, args: Vec<Value>) -> Self {
        Self { sql: sql.into(), args, want_rows: true }
    }
}

/// When a step of a batch runs.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Cond {
    Ok { step: u32 },
    Not { cond: Box<Cond> },
}

#[derive(Debug, Clone, Serialize)]
struct Step {
    stmt: Stmt,
    #[serde(skip_serializing_if = "Option::is_none")]
    condition: Option<Cond>,
}

#[derive(Serialize)]
struct Pipeline<'a> {
    baton: Option<&'a str>,
    requests: &'a [Request<'a>],
}

/// One request of a pipeline.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Request<'a> {
    Batch {
        batch: BatchBody<'a>,
    },
    /// One statement.
    Execute {
        stmt: Stmt,
    },
    /// SQL of several statements (no arguments, no rows): a migration file.
    Sequence {
        sql: Cow<'a, str>,
    },
    /// Ends the stream (and rolls back a transaction left open on it).
    Close,
}

#[derive(Serialize)]
pub struct BatchBody<'a> {
    steps: &'a [Step],
}

#[derive(Deserialize)]
struct PipelineResponse {
    baton: Option<String>,
    results: Vec<StreamResult>,
}

/// What became of one request of a pipeline.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum StreamResult {
    Ok { response: StreamResponse },
    Error { error: ErrorBody },
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum StreamResponse {
    Batch { result: BatchResult },
    Execute { result: StmtResult },
    Sequence,
    Close,
}

#[derive(Debug, Deserialize)]
pub struct BatchResult {
    step_results: Vec<Option<StmtResult>>,
    step_errors: Vec<Option<ErrorBody>>,
}

/// The rows one statement returned.
#[derive(Debug, Default, Deserialize)]
pub struct StmtResult {
    #[serde(default)]
    pub rows: Vec<Row>,
}

/// One row: its values by column.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub struct Row(pub Vec<Value>);

/// An error the server reported for a statement (SQLite's, with its code name).
#[derive(Debug, Clone, Deserialize)]
pub struct ErrorBody {
    pub message: String,
    #[serde(default)]
    pub code: Option<String>,
}

impl ErrorBody {
    /// The store's error for this failure of a statement (`what` says where).
    /// A server that cannot serve now (busy, locked, out of space, an I/O
    /// error, read-only, blocked) is [`StoreError::Unavailable`] (503 and a
    /// retry); anything else is the store's fault. SQLite's messages name
    /// columns and constraints, never a statement's arguments.
    pub fn into_store_error(self, what: &str) -> StoreError {
        let code = self.code.as_deref().unwrap_or_default();
        let unavailable = ["SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_READONLY"]
            .iter()
            .any(|prefix| code.starts_with(prefix))
            || code.contains("BLOCKED")
            || code.contains("TIMEOUT")
            || self.message.contains("database is locked");
        let detail = format!("{what}: {}", self.message);
        if unavailable {
            StoreError::Unavailable(detail)
        } else {
            StoreError::Corrupt(detail)
        }
    }
}

/// What a batch's statements gave, each `None` if it did not run.
#[derive(Debug)]
pub struct Outcome {
    pub results: Vec<Option<StmtResult>>,
    /// The first statement that failed, and its error.
    pub failed: Option<(usize, ErrorBody)>,
}

impl Hrana {
    /// The database at `url` (with `namespace` on a server that has them), as `label` in messages.
    pub fn new(
        http: reqwest::Client,
        url: &str,
        namespace: Option<String>,
        label: String,
        auth: Auth,
        timeout: Duration,
    ) -> Self {
        let url = url.trim_end_matches('/').to_owned();
        let pipeline = format!("{url}/v3/pipeline");
        Self { inner: Arc::new(Inner { http, url, pipeline, namespace, label, auth, timeout }) }
    }

    /// Runs `stmts` one after the other in one round trip, each whatever
    /// became of the others; the results of those that ran, and the first error.
    pub async fn read(&self, stmts: Vec<Stmt>) -> StoreResult<Outcome> {
        let steps: Vec<Step> = stmts.into_iter().map(|stmt| Step { stmt, condition: None }).collect();
        self.batch(&steps).await
    }

    /// Runs `stmts` in one `BEGIN IMMEDIATE` transaction, in one round trip:
    /// each only if the one before succeeded, `COMMIT` only if all did,
    /// `ROLLBACK` otherwise. The outcome's results are the statements' (not
    /// the `BEGIN`'s), and `failed` names the statement that failed, by its
    /// index in `stmts` (or `stmts.len()` for the commit). A `BEGIN` that
    /// fails (nothing ran) is an error of its own, never statement 0's.
    pub async fn transaction(&self, stmts: Vec<Stmt>) -> StoreResult<Outcome> {
        let begin = Stmt { sql: "BEGIN IMMEDIATE".into(), args: Vec::new(), want_rows: false };
        let count = u32::try_from(stmts.len() + 1).map_err(|_| StoreError::Corrupt("a batch too long".into()))?;
        let mut steps = Vec::with_capacity(stmts.len() + 3);
        steps.push(Step { stmt: begin, condition: None });
        for (at, stmt) in stmts.into_iter().enumerate() {
            steps.push(Step { stmt, condition: Some(Cond::Ok { step: at as u32 }) });
        }
        let commit = Stmt { sql: "COMMIT".into(), args: Vec::new(), want_rows: false };
        steps.push(Step { stmt: commit, condition: Some(Cond::Ok { step: count - 1 }) });
        let rollback = Stmt { sql: "ROLLBACK".into(), args: Vec::new(), want_rows: false };
        let committed = Cond::Ok { step: count };
        steps.push(Step { stmt: rollback, condition: Some(Cond::Not { cond: Box::new(committed) }) });
        let mut outcome = self.batch(&steps).await?;
        // Without the BEGIN and the ROLLBACK: the statements and the COMMIT.
        outcome.results.pop();
        outcome.results.remove(0);
        outcome.failed = match outcome.failed {
            Some((0, error)) => return Err(error.into_store_error(&format!("{}: BEGIN", self.inner.label))),
            Some((at, error)) => Some((at - 1, error)),
            None if outcome.results.last().is_some_and(Option::is_none) => Some((
                outcome.results.len() - 1,
                ErrorBody { message: "the transaction did not commit".into(), code: None },
            )),
            None => None,
        };
        outcome.results.pop();
        Ok(outcome)
    }

    async fn batch(&self, steps: &[Step]) -> StoreResult<Outcome> {
        let requests = [Request::Batch { batch: BatchBody { steps } }, Request::Close];
        let (results, _) = self.pipeline(None, &requests).await?;
        let inner = &self.inner;
        let batch = match results.into_iter().next() {
            Some(StreamResult::Ok { response: StreamResponse::Batch { result } }) => result,
            Some(StreamResult::Error { error }) => return Err(error.into_store_error(&inner.label)),
            _ => return Err(StoreError::Corrupt(format!("{}: no batch result", inner.label))),
        };
        if batch.step_results.len() != steps.len() {
            return Err(StoreError::Corrupt(format!(
                "{}: {} results for {} statements",
                inner.label,
                batch.step_results.len(),
                steps.len()
            )));
        }
        let failed = batch.step_errors.into_iter().enumerate().find_map(|(at, error)| error.map(|error| (at, error)));
        Ok(Outcome { results: batch.step_results, failed })
    }

    /// Sends `requests` on the stream `baton` names (a new one if `None`),
    /// in one round trip: each request's result, and the baton that carries
    /// the stream on (`None` once closed).
    pub async fn pipeline(
        &self,
        baton: Option<&str>,
        requests: &[Request<'_>],
    ) -> StoreResult<(Vec<StreamResult>, Option<String>)> {
        metrics::counter!("echolia_sqld_round_trips_total").increment(1);
        let body = Pipeline { baton, requests };
        let body = serde_json::to_vec(&body).map_err(|err| StoreError::Corrupt(format!("a Hrana request: {err}")))?;
        let inner = &self.inner;
        let unavailable = |what: String| StoreError::Unavailable(format!("{}: {what}", inner.label));
        let token = inner.auth.token().await?;
        let call = async {
            let mut request = inner.http.post(&inner.pipeline);
            if let Some(namespace) = &inner.namespace {
                request = request.header("x-namespace", namespace);
            }
            let response = request
                .bearer_auth(token.expose_secret())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
                .send()
                .await
                .map_err(|err| unavailable(without_url(err)))?;
            let status = response.status();
            let bytes = response.bytes().await.map_err(|err| unavailable(without_url(err)))?;
            Ok::<_, StoreError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(inner.timeout, call)
            .await
            .map_err(|_| unavailable(format!("no answer within {:?}", inner.timeout)))??;
        // A namespace sqld says does not exist, when this client was made for an existing one:
        // sqld answers so while it shuts down (and if another server deleted the account, the
        // retry finds out and answers 401).
        // Any other refusal is the server's or its configuration's (a token it does not take is
        // 401): 503, for the operator to see in the log. The body is not kept: an error that
        // quotes the request could quote a statement's arguments (payloads).
        if !status.is_success() {
            let hint = match status {
                reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN => inner.auth.refused(&token),
                _ => "",
            };
            return Err(unavailable(format!("HTTP {status}{hint}")));
        }
        let response: PipelineResponse = serde_json::from_slice(&bytes)
            .map_err(|err| StoreError::Corrupt(format!("{}: a Hrana answer: {err}", inner.label)))?;
        if response.results.len() != requests.len() {
            return Err(StoreError::Corrupt(format!("{}: a pipeline answer short of results", inner.label)));
        }
        Ok((response.results, response.baton))
    }

    /// The database's URL (no trailing slash).
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The namespace sent with every request, on a server that has them.
    pub fn namespace(&self) -> Option<&str> {
        self.inner.namespace.as_deref()
    }

    /// The database, as messages name it.
    pub fn label(&self) -> &str {
        &self.inner.label
    }

    /// Where its tokens come from.
    pub fn auth(&self) -> &Auth {
        &self.inner.auth
    }

    /// The token a request to this database carries now.
    pub async fn token(&self) -> StoreResult<secrecy::SecretString> {
        self.inner.auth.token().await
    }
}

/// A reqwest error without its URL (which holds nothing secret, but is noise in every log line).
pub(in crate::store) fn without_url(err: reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let err = err.without_url();
    format!("{kind}: {err}")
}

/// A column of a [`Row`] as the store's decoders read it.
impl Row {
    fn value(&self, idx: i32) -> StoreResult<&Value> {
        usize::try_from(idx)
            .ok()
            .and_then(|idx| self.0.get(idx))
            .ok_or_else(|| StoreError::Corrupt(format!("no column {idx} in a row of {}", self.0.len())))
    }

    pub fn is_null(&self, idx: i32) -> StoreResult<bool> {
        Ok(matches!(self.value(idx)?, Value::Null))
    }

    pub fn integer(&self, idx: i32) -> StoreResult<i64> {
        match self.value(idx)? {
            Value::Integer { value } => Ok(*value),
            other => Err(StoreError::Corrupt(format!("column {idx} holds {other:?}, not an integer"))),
        }
    }

    pub fn opt_text(&self, idx: i32) -> StoreResult<Option<&str>> {
        match self.value(idx)? {
            Value::Null => Ok(None),
            Value::Text { value } => Ok(Some(value)),
            _ => Err(StoreError::Corrupt(format!("column {idx} is not text"))),
        }
    }

    pub fn text(&self, idx: i32) -> StoreResult<&str> {
        self.opt_text(idx)?.ok_or_else(|| StoreError::Corrupt(format!("column {idx} is NULL")))
    }

    pub fn blob(&self, idx: i32) -> StoreResult<Option<&[u8]>> {
        match self.value(idx)? {
            Value::Null => Ok(None),
            Value::Blob { base64 } => Ok(Some(base64)),
            _ => Err(StoreError::Corrupt(format!("column {idx} is not a blob"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_that_cannot_serve_now_is_unavailable_and_a_failed_statement_is_not() {
        let error =
            |message: &str, code: Option<&str>| ErrorBody { message: message.into(), code: code.map(Into::into) };
        for (message, code) in [
            ("database is locked", Some("SQLITE_BUSY")),
            ("disk I/O error", Some("SQLITE_IOERR_WRITE")),
            ("database or disk is full", Some("SQLITE_FULL")),
            ("database is locked", None),
        ] {
            let err = error(message, code).into_store_error("a write");
            assert!(matches!(err, StoreError::Unavailable(_)), "{message}: {err:?}");
        }
        let err = error("UNIQUE constraint failed: events.event_id", Some("SQLITE_CONSTRAINT_UNIQUE"));
        assert!(matches!(err.into_store_error("a write"), StoreError::Corrupt(_)));
    }

    #[test]
    fn values_take_hranas_json_shape() {
        let values = vec![Value::Null, Value::Integer { value: -7 }, Value::text("a'b"), Value::blob(vec![0, 1, 2])];
        let json = serde_json::to_string(&values).unwrap();
        assert_eq!(
            json,
            r#"[{"type":"null"},{"type":"integer","value":"-7"},{"type":"text","value":"a'b"},{"type":"blob","base64":"AAEC"}]"#
        );
        let back: Vec<Value> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, values);
        let padded: Value = serde_json::from_str(r#"{"type":"blob","base64":"AA=="}"#).unwrap();
        assert_eq!(padded, Value::blob(vec![0]));
    }
}

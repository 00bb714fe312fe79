//! Query parameters, parsed by name with 400 `invalid_query` naming the
//! parameter at fault.

use std::collections::HashMap;
use std::str::FromStr;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;

use crate::error::{ApiError, ApiResult};

pub struct QueryParams(HashMap<String, String>);

/// The largest cursor a client may send: seqs are SQLite integers (i64).
pub const MAX_CURSOR: u64 = i64::MAX as u64;

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map(|Query(map)| QueryParams(map))
            .map_err(|_| ApiError::bad_request("invalid_query", "the query string could not be parsed"))
    }
}

impl QueryParams {
    /// The `since` cursor (default 0).
    pub fn cursor(&self) -> ApiResult<u64> {
        self.number("since", 0, 0..=MAX_CURSOR)
    }

    pub fn raw(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// An unsigned integer in `range`, or `default` when absent.
    pub fn number<T>(&self, name: &str, default: T, range: std::ops::RangeInclusive<T>) -> ApiResult<T>
    where
        T: FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        let Some(text) = self.raw(name) else { return Ok(default) };
        let value: T = text
            .trim()
            .parse()
            .map_err(|_| ApiError::bad_request("invalid_query", format!("{name}: `{text}` is not a whole number")))?;
        if !range.contains(&value) {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("{name}: must be between {} and {}", range.start(), range.end()),
            ));
        }
        Ok(value)
    }
}

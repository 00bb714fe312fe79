//! Operations: health, request tracing and logs, the OpenAPI document.

pub mod health;
pub mod metrics;
pub mod openapi;
pub mod telemetry;

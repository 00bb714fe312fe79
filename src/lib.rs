//! Echolia Sync: a zero-knowledge, event-sourced sync backend.
//!
//! Layout follows the architecture: `store` (databases and backends),
//! `events` (the log and its hash chain), `projection` (pure read-model
//! folds), `replay` (views rebuilt or checked from the log), `auth`, `ops`,
//! `cli` (the operator commands), and `http` plumbing shared by the areas.

pub mod account;
pub mod app;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod events;
pub mod http;
pub mod ops;
pub mod projection;
pub mod replay;
pub mod store;
pub mod sync;

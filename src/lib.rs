//! Echolia Sync: a zero-knowledge, event-sourced sync backend.
//!
//! The modules form layers; each imports only from its own layer or below:
//!
//! 1. `clock`, `config` — time and settings;
//! 2. `store` — databases, backends, migrations;
//! 3. `error` (the one error type of the API), `events` — the log: event
//!    types, version vectors, wire form, hash chain, append;
//! 4. `projection` — the pure folds of the log into view rows;
//! 5. `views` — the views as stored, and the write path that appends and
//!    folds in one transaction;
//! 6. `replay` — operator rebuilds and checks of the views; `identity` —
//!    tokens, sessions, device statuses, pairings; `http` — body codecs and
//!    extractors that need no state; `entitlements` — store subscriptions,
//!    the tier they give, the stores' verifiers and API clients;
//!    `inference` — what calling models shares: the upstream seam, token
//!    accounting, the usage ledger, quotas per tier; `embedder` — the
//!    fallback embeddings' providers (the in-process model and its pool, or
//!    an OpenAI-compatible upstream); `backup` — snapshots of the local
//!    databases, their targets (a folder, object storage), restore and check;
//! 7. `state` — what every request shares, built once at start;
//! 8. the areas, each with its routes: `auth`, `sync`, `audit`, `account`,
//!    `payments`, `llm` (the LLM proxy and its OHTTP gateway), `embeddings`
//!    (fallback embeddings for devices that cannot compute them), `ops` (health,
//!    metrics, OpenAPI); an area never imports another's;
//! 9. `app` — composes the areas' routers and serves; `cli` — the operator
//!    commands.
//!
//! `unsafe` code lives only in `store::raw` and `store::memory` (SQLite's C
//! API), each block with its safety argument.

#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod account;
pub mod app;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod cli;
pub mod clock;
pub mod config;
pub mod embedder;
pub mod embeddings;
pub mod entitlements;
pub mod error;
pub mod events;
pub mod http;
pub mod identity;
pub mod inference;
pub mod llm;
pub mod ops;
pub mod payments;
pub mod projection;
pub mod replay;
pub mod state;
pub mod store;
pub mod sync;
pub mod views;

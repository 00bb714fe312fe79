//! Integration tests: a real server on a random port, a real libSQL data
//! directory, and HTTP in between.

mod auth_flow;
mod backup;
mod backup_s3;
mod bad_input;
mod binary;
mod cli;
mod conformance;
mod crash;
mod disk_full;
mod embeddings;
mod embeddings_model;
mod hardening;
mod helpers;
mod isolation;
mod keys_audit_account;
mod layers;
mod limits;
mod llm;
mod llm_fake;
mod llm_ohttp;
mod llm_tier;
mod log_ids;
mod metrics;
mod openapi;
mod pairing;
mod payments_apple;
mod payments_google;
mod replay;
#[cfg(feature = "embedded-replicas")]
mod replicas;
mod sqld;
mod storage;
mod sync_bad_input;
mod sync_codecs;
mod sync_flow;
mod token_review;
mod turso;
mod turso_fake;

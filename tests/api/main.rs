//! Integration tests: a real server on a random port, a real libSQL data
//! directory, and HTTP in between.

mod auth_flow;
mod bad_input;
mod binary;
mod helpers;
mod storage;

//! Read models: pure folds of the event log, no I/O. `views` stores what the
//! projectors return, in the same transaction as the append, and replay
//! uses the same functions.

pub mod aggregate;
pub mod devices;

//! HTTP plumbing shared by every area: extractors whose rejections speak the
//! JSON error shape, and the client address behind trusted proxies.

pub mod client_ip;
pub mod codec;
pub mod conn;
pub mod json;
pub mod limit;
pub mod path;
pub mod query;

pub use client_ip::ClientIp;
pub use json::ApiJson;
pub use limit::BodyLimit;
pub use path::ApiPath;
pub use query::QueryParams;

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

/// Opaque bytes as the OpenAPI document shows a body (`type: string,
/// format: binary`), for routes whose body is not JSON (OHTTP messages and keys).
pub struct Binary;

impl utoipa::PartialSchema for Binary {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl utoipa::ToSchema for Binary {}

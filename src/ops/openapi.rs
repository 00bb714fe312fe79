//! The OpenAPI document of every route, served at `/openapi.json` with a
//! Swagger UI at `/docs` (vendored assets: works offline) in development.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// Every error: `{"error": {"code", "message"}}`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorResponse {
    error: ErrorDetail,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    /// Stable snake_case code, e.g. `validation_failed`, `device_revoked`.
    code: String,
    /// For a person; names the offending field where there is one.
    message: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Echolia Sync",
        description = "Zero-knowledge sync backend for the Echolia journaling apps.\n\n\
Conventions: JSON bodies (`Content-Type: application/json`); ids are UUID strings; times are RFC 3339 UTC. \
Every error is `{\"error\": {\"code\", \"message\"}}`: 400 malformed JSON or a path id that is not a UUID, \
401 missing/invalid/expired/revoked token, 404 unknown (or another user's) object, 413 body over the \
route's limit (1 MiB on `/auth/*`), 415 wrong content type, 422 a missing or invalid field (the message \
names it), 429 rate limited (with `Retry-After`), 503 storage busy (with `Retry-After`).\n\n\
Readings of the contract made by this implementation:\n\
- `platform` and `public_key` are required on register and pair-device; `capabilities` is optional \
(an object, at most 4 KiB); `device_name` is 1–100 characters after trimming.\n\
- `DELETE /auth/device/{id}` is idempotent: revoking an already revoked device answers 204 again.\n\
- After a reused refresh token, the device's remaining tokens answer 401 `token_revoked`; the device \
stays listed (not revoked) and must be paired again.\n\
- Access tokens of a revoked device answer 401 `device_revoked`, so do its refresh tokens.",
        license(name = "AGPL-3.0-only"),
    ),
    paths(
        crate::ops::health::health,
        crate::auth::enrol::register,
        crate::auth::enrol::pair_device,
        crate::auth::refresh::refresh,
        crate::auth::devices::list,
        crate::auth::devices::update_current,
        crate::auth::devices::revoke,
        crate::sync::push::push,
        crate::sync::pull::pull,
        crate::sync::log::events,
        crate::sync::status::status,
    ),
    components(schemas(ErrorResponse, ErrorDetail)),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Registration, devices, tokens"),
        (name = "sync", description = "Push event batches, pull changes since a cursor (JSON or MessagePack)"),
        (name = "operations", description = "Health"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

//! The OpenAPI document of every route, served at `/openapi.json` with a
//! Swagger UI at `/docs` (vendored assets: works offline) in development.
//!
//! Only what belongs to no route lives here (info, tags, security scheme,
//! shared schemas): each area's router registers its routes with
//! `utoipa_axum::routes!`, which adds their paths (`app::api`).

use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorDetail, ErrorResponse};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Echolia Sync",
        description = "Zero-knowledge sync backend for the Echolia journaling apps.\n\n\
Conventions: JSON bodies (`Content-Type: application/json`); ids are UUID strings; times are RFC 3339 UTC. \
Every error is `{\"error\": {\"code\", \"message\"}}`: 400 malformed JSON or a path id that is not a UUID, \
401 missing/invalid/expired/revoked token, 404 unknown (or another user's) object, 413 body over the \
route's limit (1 MiB on `/auth/*`), 415 wrong content type, 422 a missing or invalid field (the message \
names it), 429 rate limited (with `Retry-After`), 503 `storage_unavailable` when storage is busy, full, \
read-only or failing (with `Retry-After`; nothing of the request was written, reads may still work). \
Every operation lists the answers every route of its shape can give: 401 when it takes a token, 400 \
`invalid_path` when it has path parameters, 400 `invalid_query` when it has query parameters, 400, 413, \
415 and 422 when it takes a body, 503 when it reads or writes storage. Operation ids are the handlers' \
names, or `<method>_<path>` where two handlers share a name.\n\n\
Readings of the contract made by this implementation:\n\
- `platform` and `public_key` are required on register and pair-device; `capabilities` is optional \
(an object, at most 4 KiB); `device_name` is 1–100 characters after trimming.\n\
- `DELETE /auth/device/{id}` is idempotent: revoking an already revoked device answers 204 again.\n\
- On a remote storage backend (sqld), a 503 `storage_unavailable` on `POST /sync/push` can follow a batch \
that was stored but whose answer was lost on the way back from the database: pushing the same batch again \
answers its events `duplicate` with their seqs, so a retry is always safe and nothing is appended twice.\n\
- After a reused refresh token, the device's remaining tokens answer 401 `token_revoked`; the device \
stays listed (not revoked) and must be paired again.\n\
- Access tokens of a revoked device answer 401 `device_revoked`, so do its refresh tokens.\n\
- Tokens name their signing key in the JWT `kid` header; tokens of a previous key (`JWT_PREVIOUS_SECRETS`) \
are accepted until they expire. Servers' clocks may differ by up to 60 s: a token is accepted until 60 s \
after its `exp`, and refused when its `iat` is over 60 s ahead (SECURITY.md).\n\
\n\
Sync (`/sync/*` speak JSON and MessagePack: `Content-Type: application/msgpack` in, \
`Accept: application/msgpack` out, same field names; responses are gzip/zstd-compressed when \
`Accept-Encoding` allows):\n\
- Ids are UUID strings in MessagePack too; payloads are base64 in JSON and `bin` in MessagePack; \
hashes (`hash`, `head_hash`) are lowercase hex strings in both.\n\
- `hash = SHA-256(prev_hash ‖ canonical bytes)`, `prev_hash` of seq 1 = 32 zero bytes; the canonical \
layout is documented in `src/events/hash.rs`. The log also holds the server's own `device` events \
(registered, paired, updated, revoked), whose payload is JSON written by the server.\n\
- Two different events with equal version vectors are concurrent: both stay heads (a conflict). \
`deleted` is true when every head is a delete, so an edit beside a delete keeps the aggregate alive \
until a client resolves it. `parent_id` of a change is the first parent among its heads (ordered by event_id).\n\
- A pull from 0 returns every aggregate's current state once, tombstones (`deleted: true`) included; \
`device` is not a pullable kind (devices are listed by `GET /auth/devices`).\n\
- A duplicate is the same `event_id` with the same content from the same device; from another device \
it is `event_id_reused` (409). `client_time` is kept to the microsecond.\n\
- `GET /sync/status` also counts `embeddings`; counts are of live (not deleted) aggregates.\n\
- A page of `/sync/pull` or `/sync/events` also ends once it holds 8 MiB (then `has_more` is true), \
whatever `limit` says; every byte counts (payloads, version vectors, heads, ids), and a page always holds \
at least one item. A cursor (`since`) is at most 2^63 − 1.\n\
- A version vector names at most 128 devices (the contract's 1,024 made every comparison costly). A push \
that would leave an aggregate more than 32 heads is 422 `too_many_heads`: pull it and push one event above \
every head first.\n\
- Long-polls (`wait` > 0) are capped per device and per account (`LONG_POLLS_PER_DEVICE`, \
`LONG_POLLS_PER_USER`): past either, the new one is 429 `too_many_long_polls` with `Retry-After`; the \
ones held are never cut short.\n\
- A body whose `Content-Length` is over the route's limit is 413 before it is read: with \
`Expect: 100-continue`, the client gets 413 instead of `100 Continue`.\n\
- An approved pairing not collected within its 10 minutes has its new device revoked (recorded as \
revoked by the approver) and its sealed key deleted.\n\
- A `client_time` must fall in the years 0000–9999.\n\
- Any UUID is accepted as an `event_id` or a new `aggregate_id`; time-ordered ones (version 7, RFC 9562) \
are recommended: the log and the views index them, and ids that grow with time are appended at the end \
of those indexes instead of landing on a random page of each (faster pushes: benches/README.md).\n\
\n\
Pairing, keys and account:\n\
- A claim with a wrong, used or expired code is 404 `pairing_not_found` (and counted); the claim may \
also carry optional `capabilities`. Approving creates the device at once (a `paired` event by the \
approver) and gives the new device 10 more minutes to collect the result; tokens are minted at \
collection, so no raw token is ever stored. A second collection is 404 `pairing_collected`; a missing \
or foreign `X-Claim-Token` is 403 `invalid_claim_token`; a rejected pairing is 403 `pairing_rejected`; \
an expired one is 404 `pairing_expired`. Approving an unclaimed pairing is 409 `pairing_not_claimed`; \
approving or rejecting a decided one is 409 `pairing_already_decided` (rejecting twice is 204).\n\
- The key epoch starts at 1. `GET /auth/keys` answers `key_envelope: null` for a device that holds the \
user key itself (the first device, before any rotation).\n\
- `GET /account/export` streams the log up to its head at the time of the request; `devices` in \
`GET /account` counts devices not revoked; its `tier` is that of `GET /account/entitlement`.\n\
\n\
Payments:\n\
- `GET /account/entitlement` without any subscription: `tier: free`, `status: expired`, `source`, \
`expires_at` and `product_id` null. With several, the one giving access the longest is shown, else the \
latest news. `expires_at` is when the access of the status shown ends: the period end when `active`, the \
grace end when `grace`; null when nothing gives access.\n\
- Refused signed data answers 422 with `invalid_signature` (not signed by Apple: format, algorithm, chain, \
OIDs, validity at `signedDate`, signature; also a `signedDate` more than 5 minutes ahead of the server's \
clock), `wrong_app` (another bundle id or, in production, app Apple id; also renewal info posted as a \
transaction) or `wrong_environment` (sandbox data on a production server or the reverse). A transaction \
Apple signed that names no `originalTransactionId`, `productId` or `signedDate` is 422 \
`validation_failed`; anything but an auto-renewable subscription with an `expiresDate` (a consumable, a \
non-consumable, a non-renewing subscription) is 422 `unsupported_product`. Xcode-signed (StoreKit \
testing) data is never trusted. `POST /webhooks/apple` answers 422 only for `invalid_signature` and \
`validation_failed`: a notification Apple signed for another app or the other environment is recorded \
and answered 200 `ignored`, since Apple retries anything but 2xx.\n\
- A transaction without `appAccountToken` is linked to the caller, moving it from another account if it \
was linked there (as RevenueCat's default transfer does); with one naming another user it is 403 \
`app_account_token_mismatch` (Play: `obfuscatedExternalAccountId`, 403 `account_mismatch`).\n\
- Posting a transaction older (by `signedDate`) than what the server holds answers 200 and changes \
nothing but the link; so does one that ends earlier than the state held (Apple signs old transactions \
again when the app reads them), or at the same end while the server holds a grace period or billing \
retry (unless it revokes). The webhooks answer 200 `{\"outcome\"}`: `applied`, `stale`, `unlinked` (no \
user known yet: recorded, the app's post links it), `ignored` (a type that changes no access, a product \
that is not an auto-renewable subscription, another app's, the other environment's, an unknown purchase \
token, Pub/Sub data that is not a developer notification) or `duplicate`.\n\
- App Store types: SUBSCRIBED, DID_RENEW, OFFER_REDEEMED, DID_CHANGE_RENEWAL_PREF, RENEWAL_EXTENDED, \
REFUND_REVERSED take the state of their transaction (active, or revoked if it carries a revocation); \
DID_FAIL_TO_RENEW is `grace` with subtype GRACE_PERIOD (until the renewal info's \
`gracePeriodExpiresDate`), else `billing_retry`; GRACE_PERIOD_EXPIRED is `billing_retry`; EXPIRED is \
`expired`; REFUND and REVOKE are `revoked`; the rest (TEST, DID_CHANGE_RENEWAL_STATUS, PRICE_INCREASE, \
…) are recorded and ignored. Play states: ACTIVE and CANCELED are `active` until the expiry, \
IN_GRACE_PERIOD `grace`, ON_HOLD `billing_retry`, the rest (EXPIRED, PAUSED, PENDING) `expired`; \
SUBSCRIPTION_REVOKED and voided purchases are `revoked`. Any consumable or one-time product is ignored.\n\
- The Play routes answer 502 `upstream_error` or 504 `upstream_timeout` when Google fails; a push \
without Google's OIDC token for the configured audience whose `email` is \
`GOOGLE_PUBSUB_SERVICE_ACCOUNT` is 401 `invalid_token`. A store whose settings \
are missing answers 503 `not_configured` naming them.\n\
\n\
LLM proxy (`/llm/*`): the contract's LLM section; this document extends it with `GET /llm/ohttp-keys` and \
`POST /llm/ohttp`, and with what follows.\n\
- OpenAI's request and response shapes; the official SDKs work with `base_url = https://<host>/llm/v1` and \
the access token as API key. Bodies are up to 8 MiB. A `model` the models file does not name is forwarded \
as it is to the `LLM_BASE_URL` provider (cost 0); with no such provider it is 404 `model_not_found`.\n\
- A streamed answer ends with `data: [DONE]`; if the provider's stream breaks off or it reports an error \
mid-stream, the stream ends instead with an event `data: {\"error\": {\"message\", \"type\", \"code\"}}`. \
The usage chunk is sent only when the request asked for `stream_options.include_usage`.\n\
- Errors from the provider: unreachable or 5xx → 502 `upstream_error`; no answer in time → 504 \
`upstream_timeout`; its 4xx → the same status, code `upstream_rejected`, with the provider's message; its \
429 → 429 `upstream_rate_limited`; a provider refusing the proxy's own key → 502. Requests the Anthropic \
translation cannot carry (tools, images, `n` > 1, embeddings) → 422 `unsupported_parameter`.\n\
- Quotas are per user: requests in the last 60 seconds and tokens (input + output) since 00:00 UTC; \
429 `quota_exceeded` with `Retry-After`. Every request that passed the quota counts, failed ones too. \
An answer that ends without the provider's final token count (a stream cut before its usage, by the \
provider or by the client, or a provider that reports none) is charged an estimate: input = the \
messages' content bytes / 4, output = the content relayed / 4, rounded up; it counts toward the quota \
and in `GET /llm/usage` like a reported count.\n\
- `GET /llm/usage`: `from` and `to` are days (`YYYY-MM-DD`, UTC), both included; the default is the 30 days \
up to today; at most 366 days. Rows cover every request recorded, whatever its outcome; `cost_usd` uses \
the prices configured when each request ran. Works (empty) when no provider is configured.\n\
- `POST /llm/ohttp`: RFC 9458 (and chunked OHTTP for streams). The outer answer is 200 whenever the \
request could be decrypted; the inner status is inside. Only `/llm/v1/*` and `/llm/usage` are reachable \
inside (others answer an inner 404).\n\
\n\
Fallback embeddings (`/embeddings*`):\n\
- `GET /embeddings/capability` also answers `available` (whether this server embeds at all); when it does \
not, `use_fallback` is false and `model` and `dimensions` are null (not a 503, so a device can always ask). \
`use_fallback` is false only for a device that registered `capabilities.local_embeddings: true` and, if it \
also listed `capabilities.embedding_models` (model ids), listed the server's `model`. An upstream provider's \
`dimensions` is null until its first answer unless `EMBEDDINGS_DIMENSIONS` sets it.\n\
- `POST /embeddings`: `inputs` holds 1 to 256 non-empty strings of at most 8,192 characters (Unicode scalar \
values; both limits configurable); anything else is 422 `validation_failed` naming the field (`inputs`, \
`inputs[3]`), never quoting it. Vectors are L2-normalised, in input order; identical inputs are computed \
once. The local model reads at most its maximum sequence length (256 tokens for all-MiniLM-L6-v2): longer \
inputs are truncated, as sentence-transformers does. A full queue answers 503 `embeddings_busy` with \
`Retry-After`, before anything is charged. Each request counts toward the tier's LLM quotas (429 \
`quota_exceeded`) and shows in `GET /llm/usage` under the embeddings model (its tokens: those computed, or \
what the upstream reported). Upstream failures answer as the LLM proxy's (502 `upstream_error`, 504 \
`upstream_timeout`).\n\
\n\
Operations: `GET /metrics` (Prometheus text) is served on its own listener, `METRICS_ADDR` (default \
127.0.0.1:9090), never on this API's port (here it is 404 like any unknown path), so it is not part of \
this document.",
        license(name = "AGPL-3.0-only"),
    ),
    components(schemas(ErrorResponse, ErrorDetail)),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Registration, devices, tokens"),
        (name = "pairing", description = "Pairing a new device with a short code; the user key travels sealed"),
        (name = "keys", description = "Key envelopes and rotation"),
        (name = "audit", description = "What each device did (metadata only)"),
        (name = "account", description = "Account info, export, deletion"),
        (name = "payments", description = "App Store and Play Store purchases, store notifications, the entitlement"),
        (name = "sync", description = "Push event batches, pull changes since a cursor (JSON or MessagePack)"),
        (name = "llm", description = "OpenAI-compatible LLM proxy (usage, quotas) and its Oblivious HTTP gateway"),
        (name = "embeddings", description = "Fallback embeddings for devices that cannot compute them"),
        (name = "operations", description = "Health (Prometheus metrics are on METRICS_ADDR, not this API)"),
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

/// Adds to every operation the answers every route of its shape can give,
/// where its own `responses(...)` did not list them: the extractors
/// (`UserAuth`, `ApiPath`, `QueryParams`, `ApiJson`, the body limit) and
/// storage answer the same way on every route, so they are declared once,
/// here. Runs on the finished document (`app::api`), after every area's
/// routes were merged.
pub fn add_shared_responses(doc: &mut utoipa::openapi::OpenApi) {
    let mut ids = std::collections::HashMap::<String, usize>::new();
    for (_, operation) in operations(doc) {
        if let Some(id) = &operation.operation_id {
            *ids.entry(id.clone()).or_default() += 1;
        }
    }
    for (name, operation) in operations(doc) {
        add_to(operation);
        // Handlers of different areas share names (`show`); operation ids must be unique.
        if operation.operation_id.as_ref().is_some_and(|id| ids.get(id).copied().unwrap_or(0) > 1) {
            operation.operation_id = Some(name);
        }
    }
}

/// Every operation of the document, with a unique name made of its method and path
/// (`get_auth_pairing_pairing_id`).
fn operations(doc: &mut utoipa::openapi::OpenApi) -> Vec<(String, &mut Operation)> {
    let mut out = Vec::new();
    for (path, item) in doc.paths.paths.iter_mut() {
        let slug: String = path
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|part| !part.is_empty())
            .collect::<Vec<_>>()
            .join("_");
        let methods = [
            ("get", &mut item.get),
            ("put", &mut item.put),
            ("post", &mut item.post),
            ("delete", &mut item.delete),
            ("patch", &mut item.patch),
            ("head", &mut item.head),
            ("options", &mut item.options),
            ("trace", &mut item.trace),
        ];
        for (method, operation) in methods {
            if let Some(operation) = operation.as_mut() {
                out.push((format!("{method}_{slug}"), operation));
            }
        }
    }
    out
}

fn add_to(operation: &mut Operation) {
    let has_param = |place: ParameterIn| {
        operation
            .parameters
            .iter()
            .flatten()
            .any(|p| std::mem::discriminant(&p.parameter_in) == std::mem::discriminant(&place))
    };
    let authenticated = operation.security.as_ref().is_some_and(|s| !s.is_empty());
    let path = has_param(ParameterIn::Path);
    let query = has_param(ParameterIn::Query);
    let body = operation.request_body.is_some();
    let mut shared: Vec<(&str, &str)> = Vec::new();
    if path || query || body {
        shared.push((
            "400",
            "`invalid_path` (a path id that is not a UUID), `invalid_query` (a query parameter that does not \
             parse) or a body that does not decode (`malformed_json`)",
        ));
    }
    if authenticated {
        shared.push((
            "401",
            "Missing, invalid or expired token (`missing_token`, `invalid_token`, `token_expired`), or a revoked \
             device (`device_revoked`, `token_revoked`)",
        ));
    }
    if body {
        shared.push(("413", "`body_too_large`: the body is over this route's limit"));
        shared.push(("415", "`unsupported_media_type`: the body is not in a content type listed here"));
        shared.push(("422", "A field is missing or invalid; the message names it"));
    }
    if authenticated || body || path || query {
        shared.push((
            "503",
            "`storage_unavailable`: storage is busy, full, read-only or failing; nothing was written \
             (see `Retry-After`)",
        ));
    }
    for (status, description) in shared {
        operation.responses.responses.entry(status.to_owned()).or_insert_with(|| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content("application/json", Content::new(Some(Ref::from_schema_name("ErrorResponse"))))
                    .build(),
            )
        });
    }
}

//! App Store signed data: the JWS that StoreKit 2 hands the app and that App
//! Store Server Notifications V2 post, verified as Apple's App Store Server
//! Libraries verify it (their `SignedDataVerifier`, online checks off):
//!
//! 1. compact JWS, header `alg` exactly `ES256`, `x5c` exactly three
//!    certificates; `x5c[2]` is ignored (the root is ours, not the sender's);
//! 2. the leaf `x5c[0]` chains through the intermediate `x5c[1]` to a
//!    configured root (Apple Root CA - G3, bundled; test roots only by
//!    configuration), every certificate valid at the payload's `signedDate`;
//! 3. the leaf carries Apple's OID 1.2.840.113635.100.6.11.1 and the
//!    intermediate 1.2.840.113635.100.6.2.1;
//! 4. the signature, with the leaf's P-256 key;
//! 5. then the payload's bundle id, app Apple id (production) and environment.
//!
//! Beyond Apple's libraries: a `signedDate` more than [`MAX_CLOCK_SKEW_MS`]
//! ahead of our clock is refused, since news is ordered by it and a date far
//! ahead would pin a subscription's state for good.
//!
//! No revocation check (OCSP): a server that cannot reach Apple still works.

use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm, TrustAnchor, UnixTime};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use webpki::{EndEntityCert, KeyPurposeIdIter};
use x509_parser::oid_registry::Oid;
use x509_parser::prelude::FromDer;

use super::{Source, Status, Update};
use crate::config::StoreEnvironment;

/// Apple Root CA - G3, Apple's public root certificate (DER), the only root
/// trusted unless `APPLE_ROOT_CERTS` names others.
pub const APPLE_ROOT_CA_G3: &[u8] = include_bytes!("../../certs/AppleRootCA-G3.cer");

/// The leaf's extension: "Mac App Store and iTunes Store Receipt Signing".
const LEAF_OID: &[u64] = &[1, 2, 840, 113635, 100, 6, 11, 1];
/// The intermediate's extension: Apple Worldwide Developer Relations CA.
const INTERMEDIATE_OID: &[u64] = &[1, 2, 840, 113635, 100, 6, 2, 1];

/// How far ahead of our clock a payload's `signedDate` may be.
pub const MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;

/// The only product type that gives an entitlement: its transactions carry
/// the end of the period paid for (a non-consumable or a non-renewing
/// subscription has no `expiresDate` and would give `pro` forever).
pub const AUTO_RENEWABLE: &str = "Auto-Renewable Subscription";

/// What Apple's chains use: P-256 and P-384 keys, SHA-256 and SHA-384.
static ALGORITHMS: &[&dyn SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
];

/// Why signed data was refused. Everything but the last two means "not
/// signed by Apple for anyone" (`invalid_signature`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AppleError {
    #[error("not a signed App Store payload: {0}")]
    Malformed(&'static str),
    #[error("the JWS algorithm must be ES256")]
    Algorithm,
    #[error("the x5c header must hold exactly three certificates")]
    ChainLength,
    #[error("invalid certificate: {0}")]
    Certificate(&'static str),
    #[error("the certificate chain is not valid: {0}")]
    Chain(String),
    #[error("the signature does not verify")]
    Signature,
    #[error("signedDate is in the future")]
    FutureDate,
    /// Signed by Apple, for another app (bundle id or app Apple id).
    #[error("signed for another app")]
    AppIdentifier,
    /// Signed by Apple, for the other environment (sandbox vs production).
    #[error("signed for another environment")]
    Environment,
}

/// The App Store verifier of one app in one environment.
#[derive(Debug, Clone)]
pub struct AppleVerifier {
    roots: Vec<Vec<u8>>,
    bundle_id: String,
    environment: StoreEnvironment,
    app_apple_id: Option<i64>,
}

/// A compact JWS split and decoded, not yet trusted.
#[derive(Debug)]
pub struct Jws {
    pub header: JwsHeader,
    /// The payload's JSON bytes.
    pub payload: Vec<u8>,
    signing_input: Vec<u8>,
    signature: Vec<u8>,
}

#[derive(Debug, Deserialize)]
pub struct JwsHeader {
    pub alg: String,
    #[serde(default)]
    pub x5c: Option<Vec<String>>,
}

impl Jws {
    /// Splits and decodes a compact JWS; says nothing about who signed it.
    pub fn parse(jws: &str) -> Result<Self, AppleError> {
        let mut parts = jws.trim().split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AppleError::Malformed("a compact JWS has three dot-separated parts"));
        };
        let decode = |part: &str| URL_SAFE_NO_PAD.decode(part.trim_end_matches('='));
        let header_bytes = decode(header).map_err(|_| AppleError::Malformed("the header is not base64url"))?;
        let header: JwsHeader = serde_json::from_slice(&header_bytes)
            .map_err(|_| AppleError::Malformed("the header is not a JWS header"))?;
        let payload_bytes = decode(payload).map_err(|_| AppleError::Malformed("the payload is not base64url"))?;
        let signature = decode(signature).map_err(|_| AppleError::Malformed("the signature is not base64url"))?;
        let signing_input = jws.trim().rsplit_once('.').map(|(input, _)| input.as_bytes().to_vec()).unwrap_or_default();
        Ok(Self { header, payload: payload_bytes, signing_input, signature })
    }

    /// The payload as `T`, unverified.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, AppleError> {
        serde_json::from_slice(&self.payload).map_err(|_| AppleError::Malformed("the payload is not the expected JSON"))
    }
}

/// `signedDate` (or an app transaction's `receiptCreationDate`): the
/// moment the chain must be valid at.
#[derive(Debug, Deserialize)]
struct Dated {
    #[serde(rename = "signedDate", default, deserialize_with = "millis")]
    signed_date: Option<i64>,
    #[serde(rename = "receiptCreationDate", default, deserialize_with = "millis")]
    receipt_creation_date: Option<i64>,
}

/// A date in milliseconds; Xcode's StoreKit testing writes some with a
/// fraction, which is dropped.
fn millis<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    let value = Option::<f64>::deserialize(deserializer)?;
    Ok(value.filter(|ms| ms.is_finite()).map(|ms| ms.trunc() as i64))
}

/// Accepts any extended key usage: Apple's certificates name none that matter
/// and Apple's libraries check none.
struct AnyKeyUsage;

impl webpki::ExtendedKeyUsageValidator for AnyKeyUsage {
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        for id in iter {
            id?;
        }
        Ok(())
    }
}

/// A StoreKit 2 transaction (`JWSTransactionDecodedPayload`), the fields used.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transaction {
    pub original_transaction_id: Option<String>,
    pub transaction_id: Option<String>,
    pub bundle_id: Option<String>,
    pub product_id: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    #[serde(default, deserialize_with = "millis")]
    pub purchase_date: Option<i64>,
    #[serde(default, deserialize_with = "millis")]
    pub expires_date: Option<i64>,
    #[serde(default, deserialize_with = "millis")]
    pub revocation_date: Option<i64>,
    pub app_account_token: Option<String>,
    pub in_app_ownership_type: Option<String>,
    pub environment: Option<String>,
    #[serde(default, deserialize_with = "millis")]
    pub signed_date: Option<i64>,
}

/// `JWSRenewalInfoDecodedPayload`, the fields used.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RenewalInfo {
    pub original_transaction_id: Option<String>,
    pub auto_renew_status: Option<i64>,
    #[serde(default, deserialize_with = "millis")]
    pub grace_period_expires_date: Option<i64>,
    pub environment: Option<String>,
    #[serde(default, deserialize_with = "millis")]
    pub signed_date: Option<i64>,
}

/// `ResponseBodyV2DecodedPayload`, the fields used.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub notification_type: String,
    pub subtype: Option<String>,
    #[serde(rename = "notificationUUID")]
    pub notification_uuid: String,
    #[serde(default, deserialize_with = "millis")]
    pub signed_date: Option<i64>,
    pub data: Option<NotificationData>,
    pub summary: Option<NotificationApp>,
    pub external_purchase_token: Option<ExternalPurchaseToken>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationData {
    pub app_apple_id: Option<i64>,
    pub bundle_id: Option<String>,
    pub environment: Option<String>,
    pub signed_transaction_info: Option<String>,
    pub signed_renewal_info: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationApp {
    pub app_apple_id: Option<i64>,
    pub bundle_id: Option<String>,
    pub environment: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalPurchaseToken {
    pub external_purchase_id: Option<String>,
    pub app_apple_id: Option<i64>,
    pub bundle_id: Option<String>,
}

/// Apple's name of an environment in signed payloads.
fn apple_name(environment: StoreEnvironment) -> &'static str {
    match environment {
        StoreEnvironment::Production => "Production",
        StoreEnvironment::Sandbox => "Sandbox",
    }
}

impl AppleVerifier {
    /// `roots`: DER certificates; empty means Apple Root CA - G3.
    pub fn new(
        roots: Vec<Vec<u8>>,
        bundle_id: String,
        environment: StoreEnvironment,
        app_apple_id: Option<i64>,
    ) -> Self {
        let roots = if roots.is_empty() { vec![APPLE_ROOT_CA_G3.to_vec()] } else { roots };
        Self { roots, bundle_id, environment, app_apple_id }
    }

    pub fn environment(&self) -> StoreEnvironment {
        self.environment
    }

    /// A StoreKit 2 signed transaction of this app in this environment.
    pub fn transaction(&self, jws: &str, now_ms: i64) -> Result<Transaction, AppleError> {
        let transaction: Transaction = self.verified(jws, now_ms)?;
        if transaction.bundle_id.as_deref() != Some(self.bundle_id.as_str()) {
            return Err(AppleError::AppIdentifier);
        }
        if transaction.environment.as_deref() != Some(apple_name(self.environment)) {
            return Err(AppleError::Environment);
        }
        Ok(transaction)
    }

    /// Signed renewal info of this environment (it names no bundle).
    pub fn renewal_info(&self, jws: &str, now_ms: i64) -> Result<RenewalInfo, AppleError> {
        let renewal: RenewalInfo = self.verified(jws, now_ms)?;
        if renewal.environment.as_deref() != Some(apple_name(self.environment)) {
            return Err(AppleError::Environment);
        }
        Ok(renewal)
    }

    /// A notification (`signedPayload`) for this app in this environment.
    pub fn notification(&self, jws: &str, now_ms: i64) -> Result<Notification, AppleError> {
        let notification: Notification = self.verified(jws, now_ms)?;
        self.check_notification(&notification)?;
        Ok(notification)
    }

    /// Step 5 for a notification Apple signed: `AppIdentifier` or
    /// `Environment` if it is for another app or the other environment.
    pub fn check_notification(&self, notification: &Notification) -> Result<(), AppleError> {
        let (bundle_id, app_apple_id, environment) = if let Some(data) = &notification.data {
            (data.bundle_id.clone(), data.app_apple_id, data.environment.clone())
        } else if let Some(summary) = &notification.summary {
            (summary.bundle_id.clone(), summary.app_apple_id, summary.environment.clone())
        } else if let Some(token) = &notification.external_purchase_token {
            let sandbox = token.external_purchase_id.as_deref().is_some_and(|id| id.starts_with("SANDBOX"));
            (token.bundle_id.clone(), token.app_apple_id, Some(if sandbox { "Sandbox" } else { "Production" }.into()))
        } else {
            (None, None, None)
        };
        let production = self.environment == StoreEnvironment::Production;
        if bundle_id.as_deref() != Some(self.bundle_id.as_str()) || (production && app_apple_id != self.app_apple_id) {
            return Err(AppleError::AppIdentifier);
        }
        if environment.as_deref() != Some(apple_name(self.environment)) {
            return Err(AppleError::Environment);
        }
        Ok(())
    }

    /// Steps 1 to 4: the payload of a JWS Apple signed, as `T`.
    pub fn verified<T: DeserializeOwned>(&self, jws: &str, now_ms: i64) -> Result<T, AppleError> {
        let jws = Jws::parse(jws)?;
        if jws.header.alg != "ES256" {
            return Err(AppleError::Algorithm);
        }
        let Some(x5c) = &jws.header.x5c else { return Err(AppleError::Malformed("the header has no x5c")) };
        let [leaf, intermediate, _ignored] = x5c.as_slice() else { return Err(AppleError::ChainLength) };
        let leaf = STANDARD.decode(leaf).map_err(|_| AppleError::Certificate("x5c[0] is not base64"))?;
        let intermediate =
            STANDARD.decode(intermediate).map_err(|_| AppleError::Certificate("x5c[1] is not base64"))?;
        let dated: Dated = jws.payload_as()?;
        let effective_ms = dated.signed_date.or(dated.receipt_creation_date).unwrap_or(now_ms);
        if effective_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
            return Err(AppleError::FutureDate);
        }
        let key = self.leaf_key(&leaf, &intermediate, effective_ms)?;
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &key)
            .verify(&jws.signing_input, &jws.signature)
            .map_err(|_| AppleError::Signature)?;
        jws.payload_as()
    }

    /// Steps 2 and 3: the leaf's public key (an uncompressed P-256 point) once
    /// its chain to a configured root holds at `effective_ms`.
    pub fn leaf_key(&self, leaf: &[u8], intermediate: &[u8], effective_ms: i64) -> Result<Vec<u8>, AppleError> {
        let seconds =
            u64::try_from(effective_ms / 1000).map_err(|_| AppleError::Malformed("signedDate is negative"))?;
        let leaf_der = CertificateDer::from(leaf);
        let end_entity =
            EndEntityCert::try_from(&leaf_der).map_err(|_| AppleError::Certificate("x5c[0] is not a certificate"))?;
        let intermediates = [CertificateDer::from(intermediate)];
        let root_ders: Vec<CertificateDer<'_>> =
            self.roots.iter().map(|root| CertificateDer::from(root.as_slice())).collect();
        let anchors: Vec<TrustAnchor<'_>> =
            root_ders.iter().filter_map(|root| webpki::anchor_from_trusted_cert(root).ok()).collect();
        let time = UnixTime::since_unix_epoch(Duration::from_secs(seconds));
        let path = end_entity
            .verify_for_usage(ALGORITHMS, &anchors, &intermediates, time, AnyKeyUsage, None, None)
            .map_err(|err| AppleError::Chain(format!("{err:?}")))?;
        // The path is exactly leaf → x5c[1] → a root.
        if path.intermediate_certificates().count() != 1 {
            return Err(AppleError::Chain("the leaf must be issued by the intermediate".into()));
        }
        require_oid(intermediate, INTERMEDIATE_OID, "the intermediate lacks Apple's WWDR extension")?;
        let key = require_oid(leaf, LEAF_OID, "the leaf lacks Apple's receipt-signing extension")?;
        Ok(key)
    }
}

/// Whether a transaction is of an auto-renewable subscription with an end:
/// the only purchases that give an entitlement.
pub fn is_auto_renewable(transaction: &Transaction) -> bool {
    transaction.kind.as_deref() == Some(AUTO_RENEWABLE) && transaction.expires_date.is_some()
}

/// What a verified transaction says: active until it expires, or revoked
/// (refunded, or family sharing withdrawn) from its revocation on. `None`
/// if it names no original transaction, product or signed date.
pub fn transaction_update(transaction: &Transaction, environment: StoreEnvironment) -> Option<Update> {
    let status = if transaction.revocation_date.is_some() { Status::Revoked } else { Status::Active };
    Some(Update {
        source: Source::Apple,
        environment,
        store_id: transaction.original_transaction_id.clone()?,
        product_id: transaction.product_id.clone()?,
        status,
        expires_at: transaction.expires_date,
        grace_expires_at: None,
        signed_at: transaction.signed_date?,
    })
}

/// What a notification changes, given its verified transaction and renewal
/// info; `None` for the types that change no access and for products that
/// are not auto-renewable subscriptions (recorded, ignored).
pub fn notification_update(
    notification: &Notification,
    transaction: &Transaction,
    renewal: Option<&RenewalInfo>,
    environment: StoreEnvironment,
) -> Option<Update> {
    if !is_auto_renewable(transaction) {
        return None;
    }
    let from_transaction = transaction_update(transaction, environment)?;
    let status = match (notification.notification_type.as_str(), notification.subtype.as_deref()) {
        // A purchase, a renewal, a plan change, an extension, a refund undone:
        // the transaction says it all (a revoked one stays revoked).
        (
            "SUBSCRIBED"
            | "DID_RENEW"
            | "OFFER_REDEEMED"
            | "DID_CHANGE_RENEWAL_PREF"
            | "RENEWAL_EXTENDED"
            | "REFUND_REVERSED",
            _,
        ) => from_transaction.status,
        ("DID_FAIL_TO_RENEW", Some("GRACE_PERIOD")) => Status::Grace,
        ("DID_FAIL_TO_RENEW", _) | ("GRACE_PERIOD_EXPIRED", _) => Status::BillingRetry,
        ("EXPIRED", _) => Status::Expired,
        ("REFUND" | "REVOKE", _) => Status::Revoked,
        // DID_CHANGE_RENEWAL_STATUS (auto-renew on or off), PRICE_INCREASE,
        // REFUND_DECLINED, CONSUMPTION_REQUEST, TEST, …: access is unchanged.
        _ => return None,
    };
    let grace_expires_at = match status {
        Status::Grace => renewal.and_then(|renewal| renewal.grace_period_expires_date),
        _ => None,
    };
    Some(Update {
        status,
        grace_expires_at,
        signed_at: notification.signed_date.unwrap_or(from_transaction.signed_at),
        ..from_transaction
    })
}

/// Checks that `der` carries the extension `oid`; answers its public key.
fn require_oid(der: &[u8], oid: &[u64], missing: &'static str) -> Result<Vec<u8>, AppleError> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|_| AppleError::Certificate("unparsable certificate"))?;
    let oid = Oid::from(oid).map_err(|_| AppleError::Certificate("bad OID"))?;
    if !cert.extensions().iter().any(|ext| ext.oid == oid) {
        return Err(AppleError::Certificate(missing));
    }
    Ok(cert.public_key().subject_public_key.data.to_vec())
}

#[cfg(test)]
mod tests;

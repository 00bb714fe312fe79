//! Unit tests of configuration loading (compiled only for tests: `#[cfg(test)] mod tests;` in config.rs).
#![cfg(test)]

use super::*;
use std::collections::HashMap;

fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Config::from_lookup(|k| map.get(k).cloned())
}

/// What `openssl rand -hex 32` prints.
const STRONG_SECRET: &str = "3f9a1c07be52d846e0f17a2c9b3d5e6804a1f7c2d9e8b6a5043c1e2f7d9a8b6c";

#[test]
fn production_refuses_a_long_secret_with_too_little_entropy() {
    for weak in
        ["x".repeat(32), "ab".repeat(32), "password".repeat(4), "0000000000000000000000000000000000000001".into()]
    {
        let err = load(&[("ENVIRONMENT", "production"), ("JWT_SECRET", &weak)]).unwrap_err();
        assert_eq!(err.variable, "JWT_SECRET", "{weak}");
        assert!(err.message.contains("entropy"), "{}", err.message);
    }
    // `openssl rand -hex 16` (32 characters) and `-base64 32` pass.
    for strong in [STRONG_SECRET, "9c1e07a4f2b3d85e6a0c4f71b29d3e58", "q3Zx8v+L0mWkT2yB7nHc4JpR9sUaE1dG6fIoK5lNwY0="] {
        assert!(load(&[("ENVIRONMENT", "production"), ("JWT_SECRET", strong)]).is_ok(), "{strong}");
    }
    // Development takes any secret of the length.
    assert!(load(&[("JWT_SECRET", &"x".repeat(32))]).is_ok());
}

#[test]
fn defaults_match_the_contract() {
    let config = load(&[]).unwrap();
    assert_eq!(config.bind_addr, "0.0.0.0:8000".parse().unwrap());
    assert_eq!(config.metrics_addr, "127.0.0.1:9090".parse().unwrap());
    assert_eq!(config.data_dir, PathBuf::from("./data"));
    assert_eq!(config.environment, Environment::Development);
    assert!(config.jwt_secret.is_none());
    assert_eq!(config.log_format, LogFormat::Pretty);
    assert_eq!(config.register_rate_limit.get(), 10);
    assert_eq!(config.pairing_claim_rate_limit.get(), 10);
    assert_eq!(config.max_open_databases.get(), 1000);
    assert_eq!(config.sqlite_memory_limit_mb, 96);
    assert!(config.worker_threads.get() >= 4);
}

#[test]
fn production_requires_a_long_secret_and_logs_json() {
    assert_eq!(load(&[("ENVIRONMENT", "production")]).unwrap_err().variable, "JWT_SECRET");
    let short = load(&[("ENVIRONMENT", "production"), ("JWT_SECRET", "short")]).unwrap_err();
    assert_eq!(short.variable, "JWT_SECRET");
    assert!(short.to_string().contains("at least 32 bytes"));
    let secret = STRONG_SECRET;
    let config = load(&[("ENVIRONMENT", "production"), ("JWT_SECRET", secret)]).unwrap();
    assert_eq!(config.log_format, LogFormat::Json);
    assert!(!format!("{config:?}").contains(secret), "the secret must not show in Debug");
}

#[test]
fn bad_values_name_their_variable() {
    for (name, value) in [
        ("BIND_ADDR", "nowhere"),
        ("METRICS_ADDR", "1.2.3.4"),
        ("ENVIRONMENT", "staging"),
        ("LOG_FORMAT", "xml"),
        ("DATABASE_BACKEND", "postgres"),
        ("DATABASE_BACKEND", "sqld"),
        ("DATABASE_BACKEND", "turso"),
        ("TRUSTED_PROXIES", "10.0.0.0/8, bogus"),
        ("REGISTER_RATE_LIMIT", "0"),
        ("PAIRING_CLAIM_RATE_LIMIT", "many"),
        ("MAX_OPEN_DATABASES", "-1"),
        ("SQLITE_MEMORY_LIMIT_MB", "lots"),
        ("WORKER_THREADS", "0"),
        ("APPLE_ENVIRONMENT", "Xcode"),
        ("APPLE_APP_APPLE_ID", "abc"),
        ("APPLE_ROOT_CERTS", "/nonexistent/root.der"),
        ("APPLE_ALLOW_CUSTOM_ROOTS", "yes"),
        ("GOOGLE_ENVIRONMENT", "test"),
        ("GOOGLE_SERVICE_ACCOUNT_FILE", "/nonexistent/key.json"),
        ("GOOGLE_API_BASE_URL", "ftp://example.com"),
        ("GOOGLE_OIDC_JWKS_URL", "example.com/certs"),
    ] {
        let err = load(&[(name, value)]).unwrap_err();
        assert_eq!(err.variable, name, "{value}");
    }
}

#[test]
fn stores_missing_settings_are_named_not_fatal() {
    let config = load(&[]).unwrap();
    assert_eq!(config.apple.unwrap_err(), Missing(vec!["APPLE_BUNDLE_ID", "APPLE_APP_APPLE_ID"]));
    assert_eq!(config.google.unwrap_err(), Missing(vec!["GOOGLE_PACKAGE_NAME", "GOOGLE_SERVICE_ACCOUNT_FILE"]));
    assert_eq!(
        config.google_pubsub.unwrap_err(),
        Missing(vec!["GOOGLE_PUBSUB_AUDIENCE", "GOOGLE_PUBSUB_SERVICE_ACCOUNT"])
    );
    // The audience alone is not enough: any Google Cloud user can get a token for it.
    let audience_only = load(&[("GOOGLE_PUBSUB_AUDIENCE", "https://x.example/webhooks/google")]).unwrap();
    assert_eq!(audience_only.google_pubsub.unwrap_err(), Missing(vec!["GOOGLE_PUBSUB_SERVICE_ACCOUNT"]));
    let sandbox = load(&[("APPLE_BUNDLE_ID", "com.example"), ("APPLE_ENVIRONMENT", "sandbox")]).unwrap();
    let apple = sandbox.apple.unwrap();
    assert_eq!((apple.environment, apple.app_apple_id, apple.root_certs.len()), (StoreEnvironment::Sandbox, None, 0));
    let production = load(&[("APPLE_BUNDLE_ID", "com.example")]).unwrap();
    assert_eq!(production.apple.unwrap_err(), Missing(vec!["APPLE_APP_APPLE_ID"]));
    // DER and PEM roots both read as DER.
    let certs = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/vectors/apple/certs");
    let roots = format!("{certs}/testCA.pem, {certs}/testCA.der");
    let config = load(&[("APPLE_ROOT_CERTS", &roots)]).unwrap();
    let der = std::fs::read(format!("{certs}/testCA.der")).unwrap();
    assert_eq!(config.apple.unwrap_err().0.len(), 2);
    let config = load(&[("APPLE_ROOT_CERTS", &roots), ("APPLE_BUNDLE_ID", "b"), ("APPLE_APP_APPLE_ID", "1")]).unwrap();
    assert_eq!(config.apple.unwrap().root_certs, vec![der.clone(), der]);
    // A file that is not a certificate stops the server.
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("root.pem");
    std::fs::write(&bogus, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
    let err = load(&[("APPLE_ROOT_CERTS", bogus.to_str().unwrap())]).unwrap_err();
    assert_eq!(err.variable, "APPLE_ROOT_CERTS");
    let key = dir.path().join("key.json");
    std::fs::write(&key, r#"{"client_email": "a@b", "private_key": "not a key"}"#).unwrap();
    assert_eq!(
        load(&[("GOOGLE_SERVICE_ACCOUNT_FILE", key.to_str().unwrap())]).unwrap_err().variable,
        "GOOGLE_SERVICE_ACCOUNT_FILE"
    );
}

#[test]
fn a_production_server_refuses_custom_apple_roots_unless_allowed() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/vectors/apple/certs/testCA.der");
    let production = [
        ("ENVIRONMENT", "production"),
        ("JWT_SECRET", STRONG_SECRET),
        ("APPLE_BUNDLE_ID", "com.example"),
        ("APPLE_APP_APPLE_ID", "1"),
        ("APPLE_ROOT_CERTS", root),
    ];
    let err = load(&production).unwrap_err();
    assert_eq!(err.variable, "APPLE_ROOT_CERTS");
    assert!(err.message.contains(APPLE_ALLOW_CUSTOM_ROOTS), "{}", err.message);
    let allowed = [&production[..], &[(APPLE_ALLOW_CUSTOM_ROOTS, "true")]].concat();
    assert_eq!(load(&allowed).unwrap().apple.unwrap().root_certs.len(), 1);
    // A sandbox store, or a development server, may use them (tests do).
    let sandbox = [&production[..], &[("APPLE_ENVIRONMENT", "Sandbox")]].concat();
    assert!(load(&sandbox).unwrap().apple.is_ok());
    assert!(load(&production[2..]).unwrap().apple.is_ok());
    // Without custom roots production starts as before.
    assert!(load(&production[..4]).unwrap().apple.is_ok());
}

#[test]
fn trusted_proxies_accept_cidrs_and_addresses() {
    let config = load(&[("TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1,::1")]).unwrap();
    assert_eq!(config.trusted_proxies.len(), 3);
    assert!(config.trusted_proxies[1].contains(&"127.0.0.1".parse::<std::net::IpAddr>().unwrap()));
}

#[test]
fn sqld_names_every_missing_variable_and_checks_its_urls() {
    let err = load(&[("DATABASE_BACKEND", "sqld"), ("SQLD_ADMIN_URL", "http://127.0.0.1:2")]).unwrap_err();
    assert_eq!(err.variable, "DATABASE_BACKEND");
    if cfg!(feature = "remote-storage") {
        assert!(err.message.contains("SQLD_URL, SQLD_AUTH_TOKEN"), "{}", err.message);
        assert!(!err.message.contains("SQLD_ADMIN_URL"), "{}", err.message);
        let full = [
            ("DATABASE_BACKEND", "sqld"),
            ("SQLD_URL", "http://127.0.0.1:1/"),
            ("SQLD_ADMIN_URL", "http://127.0.0.1:2"),
            ("SQLD_AUTH_TOKEN", "token-value"),
        ];
        let config = load(&full).unwrap();
        let BackendKind::Sqld(sqld) = &config.database_backend else { panic!("not sqld") };
        assert_eq!((sqld.url.as_str(), sqld.timeout), ("http://127.0.0.1:1", Duration::from_secs(10)));
        assert!(!format!("{config:?}").contains("token-value"), "the token must not show in Debug");
        let mut bad = full.to_vec();
        bad[1] = ("SQLD_URL", "127.0.0.1:1");
        assert_eq!(load(&bad).unwrap_err().variable, "SQLD_URL");
    }
}

#[test]
fn turso_names_every_missing_variable_and_checks_its_values() {
    let err = load(&[("DATABASE_BACKEND", "turso"), ("TURSO_GROUP", "default")]).unwrap_err();
    assert_eq!(err.variable, "DATABASE_BACKEND");
    if !cfg!(feature = "remote-storage") {
        return;
    }
    assert!(err.message.contains("TURSO_ORG, TURSO_AUTH_TOKEN"), "{}", err.message);
    assert!(!err.message.contains("TURSO_GROUP"), "{}", err.message);
    let full = [
        ("DATABASE_BACKEND", "turso"),
        ("TURSO_ORG", "acme"),
        ("TURSO_AUTH_TOKEN", "platform-token-value"),
        ("TURSO_GROUP", "default"),
    ];
    let config = load(&full).unwrap();
    let BackendKind::Turso(turso) = &config.database_backend else { panic!("not turso") };
    assert_eq!(turso.api_url, "https://api.turso.tech");
    assert_eq!((turso.org.as_str(), turso.group.as_str()), ("acme", "default"));
    assert_eq!(turso.control_database, "echolia-control");
    assert_eq!(turso.token_expiration.duration, Duration::from_secs(7 * 86_400));
    assert_eq!((turso.timeout, turso.retries, turso.connect_to), (Duration::from_secs(10), 3, None));
    assert!(!format!("{config:?}").contains("platform-token-value"), "the token must not show in Debug");
    for (name, value) in [
        ("TURSO_ORG", "acme/../x"),
        ("TURSO_GROUP", "a b"),
        ("TURSO_API_URL", "api.turso.tech"),
        ("TURSO_CONTROL_DATABASE", "Control"),
        ("TURSO_CONTROL_DATABASE", "a-name-far-longer-than-thirty-two-chars"),
        ("TURSO_TOKEN_EXPIRATION", "soon"),
        ("TURSO_TIMEOUT_SECS", "0"),
        ("TURSO_RETRIES", "11"),
        ("TURSO_CONNECT_TO", "localhost"),
        ("TURSO_ORG_URL", "https://api.turso.tech/v1/organizations/acme"),
    ] {
        let mut vars = full.to_vec();
        vars.push((name, value));
        assert_eq!(load(&vars).unwrap_err().variable, name, "{name}={value}");
    }
    let mut vars = full.to_vec();
    vars.extend([("TURSO_CONNECT_TO", "127.0.0.1:8080"), ("TURSO_TOKEN_EXPIRATION", "1h30m")]);
    let config = load(&vars).unwrap();
    let BackendKind::Turso(turso) = &config.database_backend else { panic!("not turso") };
    assert_eq!(turso.connect_to, Some("127.0.0.1:8080".parse().unwrap()));
    assert_eq!(turso.token_expiration.text, "1h30m");
}

#[test]
fn embedded_replicas_are_off_unless_asked_for_and_need_a_remote_backend() {
    assert_eq!(load(&[]).unwrap().replicas, None);
    assert_eq!(load(&[("EMBEDDED_REPLICAS", "false")]).unwrap().replicas, None);
    assert_eq!(load(&[("EMBEDDED_REPLICAS", "yes")]).unwrap_err().variable, "EMBEDDED_REPLICAS");
    let err = load(&[("EMBEDDED_REPLICAS", "true")]).unwrap_err();
    assert_eq!(err.variable, "EMBEDDED_REPLICAS");
    let sqld = [
        ("DATABASE_BACKEND", "sqld"),
        ("SQLD_URL", "http://127.0.0.1:1"),
        ("SQLD_ADMIN_URL", "http://127.0.0.1:2"),
        ("SQLD_AUTH_TOKEN", "token-value"),
        ("EMBEDDED_REPLICAS", "true"),
    ];
    if !cfg!(feature = "embedded-replicas") {
        let err = load(&sqld).unwrap_err();
        assert!(err.message.contains("embedded-replicas"), "{}", err.message);
        return;
    }
    assert!(err.message.contains("remote DATABASE_BACKEND"), "{}", err.message);
    let replicas = load(&sqld).unwrap().replicas.expect("on");
    assert_eq!(
        (replicas.sync_interval, replicas.max_staleness, replicas.sync_timeout, replicas.max_open.get()),
        (Duration::from_secs(1), Duration::from_secs(5), Duration::from_secs(5), 256)
    );
    for (variable, value) in [
        ("REPLICA_SYNC_INTERVAL_MS", "0"),
        ("REPLICA_MAX_STALENESS_MS", "-1"),
        ("REPLICA_SYNC_TIMEOUT_MS", "99"),
        ("MAX_OPEN_REPLICAS", "0"),
    ] {
        let bad = [&sqld[..], &[(variable, value)]].concat();
        assert_eq!(load(&bad).unwrap_err().variable, variable, "{variable}={value}");
    }
    let zero = [&sqld[..], &[("REPLICA_MAX_STALENESS_MS", "0")]].concat();
    assert_eq!(load(&zero).unwrap().replicas.unwrap().max_staleness, Duration::ZERO);
    // Turso too: each sync takes the database's current token.
    let turso = [
        ("DATABASE_BACKEND", "turso"),
        ("TURSO_ORG", "acme"),
        ("TURSO_AUTH_TOKEN", "platform-token-value"),
        ("TURSO_GROUP", "default"),
        ("EMBEDDED_REPLICAS", "true"),
    ];
    assert!(load(&turso).unwrap().replicas.is_some());
}

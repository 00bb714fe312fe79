//! A real libSQL server (sqld 0.24.33, `../shared/sqld/`) started by the
//! test that needs it, as a user would run it: its own process on free
//! ports, namespaces on, its admin API on a port of its own, JWT auth on
//! (an Ed25519 key made for the run). The binary is unpacked once into the
//! build directory. Without it the tests fail rather than skip: CI must run them.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use tempfile::TempDir;

/// The packed binary, next to this repository.
const PACKED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/sqld/sqld.xz");

pub struct Sqld {
    pub http_port: u16,
    pub admin_port: u16,
    /// A token sqld accepts (`SQLD_AUTH_TOKEN`).
    pub token: String,
    dir: TempDir,
    child: Option<Child>,
}

/// The unpacked binary: `$CARGO_TARGET_DIR/sqld` (the test binary is in `<target>/debug/deps`).
fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let target = exe.ancestors().nth(3).expect("the test binary is in <target>/debug/deps").to_path_buf();
        let path = target.join("sqld");
        if path.is_file() {
            return path;
        }
        assert!(
            Path::new(PACKED).is_file(),
            "{PACKED} is missing: the sqld tests need the shared sqld binary (../shared/sqld, see its README)"
        );
        // Unpacked beside its final name, then renamed: a parallel run never sees half a binary.
        let partial = target.join(format!("sqld.partial-{}", std::process::id()));
        let out = std::fs::File::create(&partial).unwrap();
        let status = Command::new("xz").args(["-dc", PACKED]).stdout(out).status().expect("xz unpacks sqld");
        assert!(status.success(), "xz -dc {PACKED} failed");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&partial, &path).unwrap();
        path
    })
}

/// A port free now, below the ephemeral range the other tests' `127.0.0.1:0`
/// listeners take theirs from: a sqld stopped and restarted on its ports must
/// not find one taken by another test in between.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 500) as u16 * 20;
    loop {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 10_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// An Ed25519 key pair for the run: sqld gets the public key, tokens are signed with the private one.
fn key_pair(dir: &Path) -> (PathBuf, String) {
    let private = dir.join("jwt.key");
    let public = dir.join("jwt.pub");
    let run = |args: &[&str]| {
        let status = Command::new("openssl").args(args).stderr(Stdio::null()).status().expect("openssl runs");
        assert!(status.success(), "openssl {args:?}");
    };
    run(&["genpkey", "-algorithm", "ed25519", "-out", private.to_str().unwrap()]);
    run(&["pkey", "-in", private.to_str().unwrap(), "-pubout", "-out", public.to_str().unwrap()]);
    let key = jsonwebtoken::EncodingKey::from_ed_pem(&std::fs::read(&private).unwrap()).unwrap();
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        &serde_json::json!({ "a": "rw" }),
        &key,
    )
    .unwrap();
    (public, token)
}

impl Sqld {
    pub async fn start() -> Sqld {
        let dir = tempfile::tempdir().unwrap();
        let (_, token) = key_pair(dir.path());
        let mut sqld = Sqld { http_port: free_port(), admin_port: free_port(), token, dir, child: None };
        sqld.spawn().await;
        sqld
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("sqld.log")).unwrap();
        let child = Command::new(binary())
            .arg("--db-path")
            .arg(self.dir.path().join("data"))
            .args(["--http-listen-addr", &format!("127.0.0.1:{}", self.http_port)])
            .args(["--admin-listen-addr", &format!("127.0.0.1:{}", self.admin_port)])
            .arg("--auth-jwt-key-file")
            .arg(self.dir.path().join("jwt.pub"))
            .args(["--enable-namespaces", "--disable-default-namespace", "--no-welcome"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("sqld starts");
        self.child = Some(child);
        let client = reqwest::Client::new();
        for _ in 0..300 {
            let probe = client.get(format!("{}/v1/namespaces/probe/config", self.admin_url())).send().await;
            let data = client.get(format!("{}/health", self.url())).send().await;
            if probe.is_ok() && data.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("sqld did not start: {}", std::fs::read_to_string(self.dir.path().join("sqld.log")).unwrap_or_default());
    }

    /// What it logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sqld.log")).unwrap_or_default()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|child| child.id() as i32).expect("sqld runs")
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// The private key the tokens sqld accepts are signed with (PEM), for
    /// the fake Turso Platform API's tokens ([`crate::turso_fake`]).
    pub fn signing_key(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("jwt.key")).unwrap()
    }

    /// The variables of a server on this sqld.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DATABASE_BACKEND", "sqld".into()),
            ("SQLD_URL", self.url()),
            ("SQLD_ADMIN_URL", self.admin_url()),
            ("SQLD_AUTH_TOKEN", self.token.clone()),
            ("SQLD_TIMEOUT_SECS", "3".into()),
        ]
    }

    /// Stops it (SIGTERM, as its README says), keeping its data.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: a plain signal to a child of this process.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            for _ in 0..200 {
                if child.try_wait().unwrap().is_some() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// Starts it again on the same ports and data.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }

    /// The namespace's configuration, as its admin API answers it.
    pub async fn config(&self, namespace: &str) -> serde_json::Value {
        let resp = reqwest::get(format!("{}/v1/namespaces/{namespace}/config", self.admin_url())).await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "GET config of {namespace}");
        resp.json().await.unwrap()
    }

    /// Whether the namespace exists (its admin API's config route).
    pub async fn namespace_exists(&self, namespace: &str) -> bool {
        let resp = reqwest::get(format!("{}/v1/namespaces/{namespace}/config", self.admin_url())).await.unwrap();
        match resp.status().as_u16() {
            200 => true,
            404 => false,
            other => panic!("GET config of {namespace}: {other}"),
        }
    }
}

impl Drop for Sqld {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

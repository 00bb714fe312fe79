//! The S3 target against a real S3-compatible server: moto in server mode
//! (`moto[server]` from PyPI, installed by `.ci/run`), started here on a free
//! port, with a fault-injecting proxy in front of it for an upload that fails
//! mid-way. Gated on `MOTO_SERVER_PYTHON` (a Python that has moto); in CI
//! (`CI` set) it must run.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::backup::{entry, json};
use crate::cli::{echolia, echolia_with, Run};
use crate::helpers::spawn_app;

const BUCKET: &str = "echolia-backups";

/// A moto server, stopped when dropped.
struct Moto {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_python() -> Option<String> {
    match std::env::var("MOTO_SERVER_PYTHON") {
        Ok(python) if !python.is_empty() => Some(python),
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI must run the S3 backup test: .ci/run exports MOTO_SERVER_PYTHON (a Python with moto[server])")
        }
        _ => {
            eprintln!(
                "skipped: set MOTO_SERVER_PYTHON to a Python that has `moto[server]` (pip install 'moto[server]')"
            );
            None
        }
    }
}

async fn start_moto(python: &str) -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(python)
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let moto = Moto { child, addr };
    let client = reqwest::Client::new();
    for _ in 0..300 {
        if let Ok(resp) = client.put(format!("http://{addr}/{BUCKET}")).send().await {
            assert!(resp.status().is_success(), "creating the bucket: {}", resp.status());
            return moto;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("moto did not start on {addr}");
}

/// A TCP proxy to `upstream` that, once `budget` bytes went upstream, cuts
/// the connection carrying them and refuses every later one: an upload
/// failing mid-way (and its retries failing too).
async fn failing_proxy(upstream: SocketAddr, budget: u64) -> (SocketAddr, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (sent, broken) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let tripped = broken.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            if broken.load(Ordering::Relaxed) {
                drop(client);
                continue;
            }
            let (sent, broken) = (sent.clone(), broken.clone());
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else { return };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let up = async {
                    let mut buf = vec![0; 16 * 1024];
                    loop {
                        let read = client_read.read(&mut buf).await.unwrap_or(0);
                        if read == 0 {
                            return;
                        }
                        if sent.fetch_add(read as u64, Ordering::Relaxed) + read as u64 > budget {
                            broken.store(true, Ordering::Relaxed);
                            return;
                        }
                        if server_write.write_all(&buf[..read]).await.is_err() {
                            return;
                        }
                    }
                };
                let down = tokio::io::copy(&mut server_read, &mut client_write);
                tokio::select! {
                    _ = up => {}
                    _ = down => {}
                }
            });
        }
    });
    (addr, tripped)
}

fn with_s3(data_dir: &Path, endpoint: SocketAddr, args: &[&str]) -> Run {
    let vars = [
        ("AWS_ACCESS_KEY_ID", "test-key".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "test-secret".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ENDPOINT_URL", format!("http://{endpoint}")),
    ];
    echolia_with(data_dir, args, &vars)
}

async fn s3(data_dir: &Path, endpoint: SocketAddr, args: &[&str]) -> Run {
    let (dir, args): (std::path::PathBuf, Vec<String>) =
        (data_dir.into(), args.iter().map(|a| a.to_string()).collect());
    tokio::task::spawn_blocking(move || with_s3(&dir, endpoint, &args.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .unwrap()
}

/// The keys in the bucket under `prefix`, as moto lists them.
async fn keys(moto: &Moto, prefix: &str) -> Vec<String> {
    let body = reqwest::get(format!("http://{}/{BUCKET}?list-type=2&prefix={prefix}", moto.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.split("<Key>").skip(1).filter_map(|part| part.split("</Key>").next()).map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_s3_target_stores_checks_and_restores_and_a_failed_upload_never_counts() {
    let Some(python) = moto_python() else { return };
    let moto = start_moto(&python).await;
    let app = spawn_app().await;
    let mut sessions = Vec::new();
    for _ in 0..4 {
        let session = app.register().await;
        for round in 0..4 {
            let batch: Vec<Value> =
                (0..25).map(|i| entry(&session, &format!("{round}-{i} {}", "x".repeat(400)))).collect();
            app.push_ok(&session, &batch).await;
        }
        sessions.push(session);
    }
    // One database over the 8 MiB part size, so its upload is a multipart one.
    for round in 0..2 {
        let big: Vec<Value> = (0..10)
            .map(|i| {
                let payload: String =
                    (0..600 * 1024).map(|n| char::from(b'a' + ((n * 7 + i * 13 + round) % 26) as u8)).collect();
                entry(&sessions[0], &payload)
            })
            .collect();
        app.push_ok(&sessions[0], &big).await;
    }
    let target = format!("s3://{BUCKET}/nightly");

    // Through a proxy that cuts the upload part way: the run fails, and its backup is not listed.
    let (proxy, tripped) = failing_proxy(moto.addr, 150 * 1024).await;
    let failed = s3(app.data_dir(), proxy, &["backup", "--to", &target, "--jobs", "1", "--retries", "1"]).await;
    assert_eq!(failed.code, Some(1), "{failed:?}");
    assert!(tripped.load(Ordering::Relaxed), "the proxy cut the upload");
    assert!(failed.stderr.contains(&target), "{}", failed.stderr);
    assert!(!keys(&moto, "nightly/data/").await.is_empty(), "some files were uploaded before the cut");
    assert!(keys(&moto, "nightly/backups/").await.is_empty(), "no manifest: the backup does not count");
    let none = s3(app.data_dir(), moto.addr, &["backup", "--check", &target]).await;
    assert_eq!(none.code, Some(2), "{none:?}");
    assert!(none.stderr.contains("there is no backup"), "{}", none.stderr);

    // What a killed run would leave: its staging folder in DATA_DIR, removed by the next run.
    let abandoned = app.data_dir().join(".staging-20261207T000000.000Z-killed");
    std::fs::create_dir(&abandoned).unwrap();
    std::fs::write(abandoned.join("control.db"), b"a partial snapshot").unwrap();

    // The next run, straight to the server, completes a backup, which checks and restores.
    let done = s3(app.data_dir(), moto.addr, &["backup", "--to", &target, "--json"]).await;
    assert_eq!(done.code, Some(0), "{done:?}");
    assert!(!abandoned.exists(), "an abandoned staging folder in DATA_DIR is removed");
    let first = json(&done);
    assert_eq!((first["users"].as_u64(), first["copied"].as_u64()), (Some(4), Some(4)));
    assert_eq!(first["events"], 4 * (100 + 1) + 20);
    assert!(first["bytes_copied"].as_u64().unwrap() > 12 << 20, "{first}");
    let check = s3(app.data_dir(), moto.addr, &["backup", "--check", &target, "--json"]).await;
    assert_eq!(check.code, Some(0), "{check:?}");
    assert_eq!(json(&check)["events"], first["events"]);
    let restored = tempfile::tempdir().unwrap();
    let into = restored.path().join("data");
    let restore =
        s3(app.data_dir(), moto.addr, &["restore", "--from", &target, "--to", into.to_str().unwrap(), "--json"]).await;
    assert_eq!(restore.code, Some(0), "{restore:?}");
    assert_eq!(json(&restore)["users"], 4);
    let verify = echolia(&into, &["verify", "--all"]);
    assert_eq!(verify.code, Some(0), "{verify:?}");
    assert!(verify.stdout.contains("424 events"), "{}", verify.stdout);

    // Incremental on S3 too, and --keep 1 removes what only the older backup needed.
    app.push_ok(&sessions[2], &[entry(&sessions[2], "later")]).await;
    let second = s3(app.data_dir(), moto.addr, &["backup", "--to", &target, "--keep", "1", "--json"]).await;
    assert_eq!(second.code, Some(0), "{second:?}");
    let second = json(&second);
    assert_eq!(second["copied"], 1, "{second}");
    assert_eq!(second["pruned"].as_array().unwrap().len(), 1);
    let manifests = keys(&moto, "nightly/backups/").await;
    assert_eq!(manifests, [format!("nightly/backups/{}.json", second["name"].as_str().unwrap())]);
    let first_name = first["name"].as_str().unwrap();
    let old = keys(&moto, &format!("nightly/data/{first_name}/")).await;
    assert_eq!(old.len(), 3, "the unchanged users' copies stay, the rest of the first backup goes: {old:?}");
    let check = s3(app.data_dir(), moto.addr, &["backup", "--check", &target]).await;
    assert_eq!(check.code, Some(0), "{check:?}");
}

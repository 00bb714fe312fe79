//! `echolia backup`, `backup --check` and `restore`, run as the shipped
//! binary against a data directory the server is serving: consistency under
//! pushes, incremental copies, corruption found, `--keep`, and the S3 target
//! against a real S3-compatible server (moto) started here.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

use crate::cli::{echolia, Run};
use crate::helpers::{event, spawn_app, Session, TestApp};

/// Runs the binary off the async workers (the server under test runs on them).
async fn run(data_dir: &Path, args: &[&str]) -> Run {
    let (dir, args): (std::path::PathBuf, Vec<String>) =
        (data_dir.into(), args.iter().map(|a| a.to_string()).collect());
    tokio::task::spawn_blocking(move || echolia(&dir, &args.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .unwrap()
}

pub(crate) fn json(run: &Run) -> Value {
    serde_json::from_str(run.stdout.trim()).unwrap_or_else(|err| panic!("{err}: {run:?}"))
}

pub(crate) fn entry(session: &Session, payload: &str) -> Value {
    event("entry", Uuid::new_v4(), "put", &[(session.device_id, 1)], Some(payload.as_bytes()))
}

async fn users(app: &TestApp, count: usize, events: usize) -> Vec<Session> {
    let mut sessions = Vec::new();
    for _ in 0..count {
        let session = app.register().await;
        for chunk in 0..events.div_ceil(10) {
            let batch: Vec<Value> =
                (0..10.min(events - chunk * 10)).map(|i| entry(&session, &format!("c{chunk}-{i}"))).collect();
            app.push_ok(&session, &batch).await;
        }
        sessions.push(session);
    }
    sessions
}

async fn event_ids(dir: &Path, user: Uuid) -> HashSet<String> {
    let db = libsql::Builder::new_local(dir.join(format!("users/{user}.db"))).build().await.unwrap();
    let conn = db.connect().unwrap();
    let mut rows = conn.query("SELECT event_id FROM events", ()).await.unwrap();
    let mut ids = HashSet::new();
    while let Some(row) = rows.next().await.unwrap() {
        ids.insert(row.get::<String>(0).unwrap());
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_taken_under_pushes_restores_every_acknowledged_event_with_verified_chains() {
    let app = Arc::new(spawn_app().await);
    let sessions = users(&app, 6, 30).await;
    let target = tempfile::tempdir().unwrap();
    let target_arg = target.path().join("backups");
    let target_arg = target_arg.to_str().unwrap().to_owned();

    // Pushers: one per user, each recording the events acknowledged and when, and its slowest push.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged: Arc<Mutex<Vec<(Uuid, String, Instant)>>> = Arc::default();
    let slowest = Arc::new(Mutex::new(Vec::new()));
    let mut pushers = Vec::new();
    for session in sessions.clone() {
        let (app, stop, acknowledged, slowest) = (app.clone(), stop.clone(), acknowledged.clone(), slowest.clone());
        pushers.push(tokio::spawn(async move {
            let mut pushes = 0;
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<Value> = (0..5).map(|i| entry(&session, &format!("live {pushes} {i}"))).collect();
                let sent = Instant::now();
                let resp = app.push(&session, &batch).await;
                assert_eq!(resp.status(), StatusCode::OK, "a push during the backup failed");
                let done = Instant::now();
                slowest.lock().unwrap().push((sent, done));
                let mut acked = acknowledged.lock().unwrap();
                for event in &batch {
                    acked.push((session.user_id, event["event_id"].as_str().unwrap().to_owned(), done));
                }
                pushes += 1;
            }
            pushes
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let began = Instant::now();
    let backup = run(app.data_dir(), &["backup", "--to", &target_arg, "--json", "--jobs", "2"]).await;
    let ended = Instant::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut pushes = 0;
    for pusher in pushers {
        pushes += pusher.await.unwrap();
    }
    assert_eq!(backup.code, Some(0), "{backup:?}");
    let summary = json(&backup);
    assert_eq!(summary["users"], 6);
    assert_eq!(summary["copied"], 6);
    assert!(pushes > 12, "pushes went on during the backup: {pushes}");
    let stall = slowest
        .lock()
        .unwrap()
        .iter()
        .filter(|(sent, done)| *done > began && *sent < ended)
        .map(|(sent, done)| done.duration_since(*sent))
        .max()
        .unwrap_or_default();
    let before_backup = slowest
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, done)| *done < began)
        .map(|(sent, done)| done.duration_since(*sent))
        .max()
        .unwrap_or_default();
    eprintln!(
        "backup took {:?}; the slowest push overlapping it took {stall:?} (before it: {before_backup:?})",
        ended - began
    );

    let restored = tempfile::tempdir().unwrap();
    let to = restored.path().join("data");
    let restore =
        run(app.data_dir(), &["restore", "--from", &target_arg, "--to", to.to_str().unwrap(), "--json"]).await;
    assert_eq!(restore.code, Some(0), "{restore:?}");
    let report = json(&restore);
    assert_eq!(report["users"], 6);
    assert_eq!(report["mismatches"], serde_json::json!([]));
    assert_eq!(report["events"], summary["events"]);

    // Every event acknowledged before the backup began is in the restored logs.
    let acked = acknowledged.lock().unwrap().clone();
    let before: Vec<_> = acked.iter().filter(|(_, _, at)| *at < began).collect();
    assert!(!before.is_empty());
    for session in &sessions {
        let ids = event_ids(&to, session.user_id).await;
        for (_, id, _) in before.iter().filter(|(user, _, _)| *user == session.user_id) {
            assert!(ids.contains(id), "user {}: event {id} acknowledged before the backup is missing", session.user_id);
        }
        assert!(ids.len() >= 30);
    }
    // Chains verify, and the views equal a replay of the restored log.
    let verify = echolia(&to, &["verify", "--all"]);
    assert_eq!(verify.code, Some(0), "{verify:?}");
    assert!(verify.stdout.contains("0 with a broken chain"), "{}", verify.stdout);
    let check = echolia(&to, &["replay", "--check", "--all"]);
    assert_eq!(check.code, Some(0), "{check:?}");
    assert!(check.stdout.contains("0 with views that differ"), "{}", check.stdout);

    // The restored directory serves: a device logs in with its refresh token there.
    let restarted = crate::helpers::spawn_app_with(&[("DATA_DIR", to.to_str().unwrap())]).await;
    let resp = restarted.refresh(&sessions[0].refresh_token).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

fn manifest(target: &Path, name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(target.join(format!("backups/{name}.json"))).unwrap()).unwrap()
}

#[tokio::test]
async fn a_second_backup_copies_only_the_users_that_changed() {
    let app = spawn_app().await;
    let sessions = users(&app, 5, 12).await;
    let target = tempfile::tempdir().unwrap();
    let to = target.path().to_str().unwrap();
    let first = run(app.data_dir(), &["backup", "--to", to, "--json"]).await;
    assert_eq!(first.code, Some(0), "{first:?}");
    let first = json(&first);
    assert_eq!((first["users"].as_u64(), first["copied"].as_u64()), (Some(5), Some(5)));

    // Two users push; a third only rotates its refresh token (no event, but state a restore needs).
    app.push_ok(&sessions[0], &[entry(&sessions[0], "new")]).await;
    app.push_ok(&sessions[3], &[entry(&sessions[3], "new")]).await;
    assert_eq!(app.refresh(&sessions[1].refresh_token).await.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = run(app.data_dir(), &["backup", "--to", to, "--json"]).await;
    assert_eq!(second.code, Some(0), "{second:?}");
    let second = json(&second);
    assert_eq!(second["copied"], 3, "{second}");
    assert_eq!(second["unchanged"], 2);
    assert!(second["bytes_copied"].as_u64() < second["bytes_total"].as_u64());

    let (first_name, second_name) = (first["name"].as_str().unwrap(), second["name"].as_str().unwrap());
    let manifest = manifest(target.path(), second_name);
    let changed = [sessions[0].user_id, sessions[1].user_id, sessions[3].user_id];
    for user in manifest["users"].as_array().unwrap() {
        let id = Uuid::parse_str(user["user_id"].as_str().unwrap()).unwrap();
        let owner = if changed.contains(&id) { second_name } else { first_name };
        assert_eq!(user["path"], format!("data/{owner}/users/{id}.db"), "{user}");
    }
    let check = run(app.data_dir(), &["backup", "--check", to]).await;
    assert_eq!(check.code, Some(0), "{check:?}");
    assert!(check.stdout.contains("5 users") && check.stdout.contains("0 mismatches"), "{}", check.stdout);
}

#[tokio::test]
async fn a_corrupted_or_missing_file_is_found_by_check_and_by_restore() {
    let app = spawn_app().await;
    let sessions = users(&app, 3, 15).await;
    let target = tempfile::tempdir().unwrap();
    let to = target.path().to_str().unwrap();
    let backup = json(&run(app.data_dir(), &["backup", "--to", to, "--json"]).await);
    let name = backup["name"].as_str().unwrap();
    let good = run(app.data_dir(), &["backup", "--check", to, "--at", name, "--json"]).await;
    assert_eq!(good.code, Some(0), "{good:?}");
    assert_eq!(json(&good)["events"], backup["events"]);

    // One flipped byte in one copy, another copy gone.
    let (damaged, gone) = (sessions[0].user_id, sessions[2].user_id);
    let path = target.path().join(format!("data/{name}/users/{damaged}.db"));
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    std::fs::remove_file(target.path().join(format!("data/{name}/users/{gone}.db"))).unwrap();

    let check = run(app.data_dir(), &["backup", "--check", to]).await;
    assert_eq!(check.code, Some(1), "{check:?}");
    assert!(
        check.stdout.contains(&format!("user {damaged}: MISMATCH")) && check.stdout.contains("SHA-256 mismatch"),
        "{}",
        check.stdout
    );
    assert!(
        check.stdout.contains(&format!("user {gone}: MISMATCH")) && check.stdout.contains("missing from the target"),
        "{}",
        check.stdout
    );
    assert!(check.stdout.contains("1 users") && check.stdout.contains("2 mismatches"), "{}", check.stdout);

    let restored = tempfile::tempdir().unwrap();
    let into = restored.path().to_str().unwrap();
    let restore = run(app.data_dir(), &["restore", "--from", to, "--to", into, "--json"]).await;
    assert_eq!(restore.code, Some(1), "{restore:?}");
    let report = json(&restore);
    assert_eq!(report["users"], 1);
    let mismatched: HashSet<&str> =
        report["mismatches"].as_array().unwrap().iter().map(|m| m["user_id"].as_str().unwrap()).collect();
    assert_eq!(mismatched, HashSet::from([damaged.to_string().as_str(), gone.to_string().as_str()]));
    assert!(restore.stderr.contains("do not start a server on it"), "{}", restore.stderr);
    assert!(!restored.path().join(format!("users/{damaged}.db")).exists(), "a damaged copy is not installed");
    assert!(restored.path().join(format!("users/{}.db", sessions[1].user_id)).exists());

    // A non-empty DATA_DIR is refused without --force, replaced with it.
    let again = run(app.data_dir(), &["restore", "--from", to, "--to", into]).await;
    assert_eq!(again.code, Some(2), "{again:?}");
    assert!(again.stderr.contains("not empty") && again.stderr.contains("--force"), "{}", again.stderr);
    // A full backup copies every user again, the damaged one included.
    let second = json(&run(app.data_dir(), &["backup", "--to", to, "--full", "--json"]).await);
    assert_eq!(second["copied"], 3, "{second}");
    let forced = run(app.data_dir(), &["restore", "--from", to, "--to", into, "--force"]).await;
    assert_eq!(forced.code, Some(0), "{forced:?}");
    assert!(
        forced.stdout.contains(second["name"].as_str().unwrap()) && forced.stdout.contains("3 users"),
        "{}",
        forced.stdout
    );
    let verify = echolia(restored.path(), &["verify", "--all"]);
    assert_eq!(verify.code, Some(0), "{verify:?}");

    // A copy whose bytes are intact but whose log was already broken on the server (an event deleted,
    // then one more pushed, which moves the head): the chain check finds it.
    let conn = app.open_user_db(sessions[1].user_id).await;
    conn.execute_batch("DROP TRIGGER events_are_append_only; DELETE FROM events WHERE seq = 3").await.unwrap();
    app.push_ok(&sessions[1], &[entry(&sessions[1], "after the damage")]).await;
    let third = json(&run(app.data_dir(), &["backup", "--to", to, "--json"]).await);
    assert_eq!(third["copied"], 1, "{third}");
    let check = run(app.data_dir(), &["backup", "--check", to]).await;
    assert_eq!(check.code, Some(1), "{check:?}");
    assert!(check.stdout.contains("chain broken at seq 3"), "{}", check.stdout);
}

#[tokio::test]
async fn keep_prunes_old_backups_but_never_a_file_a_kept_one_needs() {
    let app = spawn_app().await;
    let sessions = users(&app, 3, 5).await;
    let target = tempfile::tempdir().unwrap();
    let to = target.path().to_str().unwrap();
    let mut names = Vec::new();
    for round in 0..4 {
        // Only the first user changes between backups: the others' copies stay those of the first backup.
        if round > 0 {
            app.push_ok(&sessions[0], &[entry(&sessions[0], "more")]).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let backup = run(app.data_dir(), &["backup", "--to", to, "--keep", "2", "--json"]).await;
        assert_eq!(backup.code, Some(0), "{backup:?}");
        names.push(json(&backup)["name"].as_str().unwrap().to_owned());
    }
    let listed: Vec<String> = std::fs::read_dir(target.path().join("backups"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().trim_end_matches(".json").to_owned())
        .filter(|name| !name.starts_with('.'))
        .collect();
    let mut listed = listed;
    listed.sort();
    assert_eq!(listed, names[2..].to_vec());
    // The first backup's copies of the unchanged users are still needed and still there; its copy of
    // the changed user and the second backup's files are gone.
    for user in &sessions[1..] {
        assert!(target.path().join(format!("data/{}/users/{}.db", names[0], user.user_id)).exists());
    }
    assert!(!target.path().join(format!("data/{}/users/{}.db", names[0], sessions[0].user_id)).exists());
    assert!(!target.path().join(format!("data/{}", names[1])).exists());
    for name in &names[2..] {
        let check = run(app.data_dir(), &["backup", "--check", to, "--at", name]).await;
        assert_eq!(check.code, Some(0), "{check:?}");
    }
    // A kept manifest that does not read stops the pruning (nothing removed), after the backup counts.
    std::fs::write(target.path().join("backups/20000101T000000.000Z.json"), b"{").unwrap();
    let failed = run(app.data_dir(), &["backup", "--to", to, "--keep", "5", "--json"]).await;
    assert_eq!(failed.code, Some(1), "{failed:?}");
    assert!(failed.stderr.contains("is stored, but --keep failed"), "{}", failed.stderr);
    let check = run(app.data_dir(), &["backup", "--check", to]).await;
    assert_eq!(check.code, Some(0), "the backup counts: {check:?}");
    assert!(target.path().join(format!("data/{}", names[2])).exists());
    let gone = run(app.data_dir(), &["backup", "--check", to, "--at", &names[0]]).await;
    assert_eq!(gone.code, Some(2), "{gone:?}");
    assert!(gone.stderr.contains("there is no backup"), "{}", gone.stderr);
}

#[tokio::test]
async fn bad_backup_arguments_exit_2_with_a_clear_message() {
    let app = spawn_app().await;
    users(&app, 1, 1).await;
    let dir = app.data_dir();
    let target = tempfile::tempdir().unwrap();
    let to = target.path().to_str().unwrap();
    for (args, says) in [
        (vec!["backup"], "--to"),
        (vec!["backup", "--to", to, "--check", to], "cannot be used with"),
        (vec!["backup", "--check", to, "--keep", "2"], "go with --to"),
        (vec!["backup", "--to", to, "--at", "20261207T050000.000Z"], "--at goes with --check"),
        (vec!["backup", "--to", to, "--keep", "0"], "0"),
        (vec!["backup", "--check", to], "there is no backup"),
        (vec!["backup", "--check", to, "--at", "../../etc"], "not a backup name"),
        (vec!["backup", "--to", "s3://bucket/prefix"], "AWS_ACCESS_KEY_ID"),
        (vec!["backup", "--to", "ftp://host/x"], "neither a folder nor"),
        (vec!["restore", "--from", to], "--to"),
    ] {
        let run = run(dir, &args).await;
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
    }
    // A directory that is not a data directory is not backed up.
    let empty = tempfile::tempdir().unwrap();
    let run = run(empty.path(), &["backup", "--to", to]).await;
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("control.db"), "{}", run.stderr);
}

#[tokio::test]
async fn a_restore_that_fails_part_way_says_the_data_dir_is_half_restored() {
    let app = spawn_app().await;
    let sessions = users(&app, 2, 3).await;
    let target = tempfile::tempdir().unwrap();
    let to = target.path().to_str().unwrap();
    let backup = json(&run(app.data_dir(), &["backup", "--to", to, "--json"]).await);
    let name = backup["name"].as_str().unwrap();
    // A copy that cannot be read at all (not a mismatch: the read itself fails).
    let copy = target.path().join(format!("data/{name}/users/{}.db", sessions[1].user_id));
    std::fs::remove_file(&copy).unwrap();
    std::fs::create_dir(&copy).unwrap();

    let restored = tempfile::tempdir().unwrap();
    let into = restored.path().join("data");
    let restore = run(app.data_dir(), &["restore", "--from", to, "--to", into.to_str().unwrap()]).await;
    assert_eq!(restore.code, Some(1), "{restore:?}");
    assert!(
        restore.stderr.contains("half restored") && restore.stderr.contains(into.to_str().unwrap()),
        "{}",
        restore.stderr
    );
    assert!(into.join("control.db").exists(), "the restore had begun writing");
}

#[tokio::test]
async fn a_crafted_manifest_naming_paths_outside_the_target_is_refused_before_anything_is_written() {
    let app = spawn_app().await;
    users(&app, 1, 2).await;
    let target = tempfile::tempdir().unwrap();
    let to = target.path().to_str().unwrap();
    let backup = json(&run(app.data_dir(), &["backup", "--to", to, "--json"]).await);
    let name = backup["name"].as_str().unwrap();
    let secret = tempfile::tempdir().unwrap();
    std::fs::write(secret.path().join("secret.db"), b"not for a restore").unwrap();
    let outside = format!("data/{name}/../../../../../../../..{}/secret.db", secret.path().display());
    for (field, path) in [("control", outside.as_str()), ("control", "/etc/passwd"), ("user", outside.as_str())] {
        let mut manifest = manifest(target.path(), name);
        match field {
            "control" => manifest["control"]["path"] = path.into(),
            _ => manifest["users"][0]["path"] = path.into(),
        }
        std::fs::write(target.path().join(format!("backups/{name}.json")), manifest.to_string()).unwrap();
        let into = tempfile::tempdir().unwrap();
        let data = into.path().join("data");
        let restore = run(app.data_dir(), &["restore", "--from", to, "--to", data.to_str().unwrap()]).await;
        assert_eq!(restore.code, Some(1), "{field} {path}: {restore:?}");
        assert!(restore.stderr.contains(&format!("backup {name}")), "{}", restore.stderr);
        assert!(!data.exists(), "{field} {path}: nothing is written for a refused manifest");
        let check = run(app.data_dir(), &["backup", "--check", to]).await;
        assert_eq!(check.code, Some(1), "{field} {path}: {check:?}");
    }
}

#[tokio::test]
async fn a_backup_with_a_remote_backend_is_refused_with_the_way_to_its_own_recovery() {
    let data_dir = tempfile::tempdir().unwrap();
    let target = tempfile::tempdir().unwrap();
    let vars = [
        ("DATABASE_BACKEND", "sqld".to_string()),
        ("SQLD_URL", "http://127.0.0.1:9".to_string()),
        ("SQLD_ADMIN_URL", "http://127.0.0.1:9".to_string()),
        ("SQLD_AUTH_TOKEN", "unused".to_string()),
    ];
    let refused =
        crate::cli::echolia_with(data_dir.path(), &["backup", "--to", target.path().to_str().unwrap()], &vars);
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(
        refused.stderr.contains("DATABASE_BACKEND=sqld") && refused.stderr.contains("point-in-time"),
        "{refused:?}"
    );
    assert_eq!(std::fs::read_dir(target.path()).unwrap().count(), 0, "nothing written to the target");
}

//! MessagePack both ways, and response compression.

use std::collections::BTreeMap;

use echolia::sync::wire::Payload;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{event, spawn_app};

#[derive(Serialize)]
struct MsgEvent {
    event_id: String,
    kind: &'static str,
    aggregate_id: String,
    parent_id: Option<String>,
    op: &'static str,
    version: BTreeMap<String, u64>,
    payload: Option<Payload>,
    client_time: &'static str,
}

#[derive(Serialize)]
struct MsgPush {
    events: Vec<MsgEvent>,
}

#[derive(Debug, Deserialize)]
struct MsgPull {
    changes: Vec<MsgChange>,
    cursor: u64,
    has_more: bool,
    head_hash: String,
}

#[derive(Debug, Deserialize)]
struct MsgChange {
    kind: String,
    id: String,
    parent_id: Option<String>,
    deleted: bool,
    conflict: bool,
    version: BTreeMap<String, u64>,
    heads: Vec<MsgHead>,
}

#[derive(Debug, Deserialize)]
struct MsgHead {
    event_id: String,
    device_id: String,
    seq: u64,
    op: String,
    payload: Option<Payload>,
    client_time: String,
}

#[tokio::test]
async fn messagepack_in_and_out_matches_json() {
    let app = spawn_app().await;
    let a = app.register().await;
    let (entry, tag) = (Uuid::new_v4(), Uuid::new_v4());
    let payload: Vec<u8> = (0..=255).collect();
    let me = a.device_id.to_string();
    let body = MsgPush {
        events: vec![
            MsgEvent {
                event_id: Uuid::new_v4().to_string(),
                kind: "entry",
                aggregate_id: entry.to_string(),
                parent_id: None,
                op: "put",
                version: BTreeMap::from([(me.clone(), 1)]),
                payload: Some(Payload(payload.clone())),
                client_time: "2026-11-29T10:00:00Z",
            },
            MsgEvent {
                event_id: Uuid::new_v4().to_string(),
                kind: "tag",
                aggregate_id: tag.to_string(),
                parent_id: Some(entry.to_string()),
                op: "put",
                version: BTreeMap::from([(me.clone(), 2)]),
                payload: Some(Payload(b"#tag".to_vec())),
                client_time: "2026-11-29T10:00:01.5Z",
            },
        ],
    };
    let resp = app
        .client
        .post(app.url("/sync/push"))
        .bearer_auth(&a.access_token)
        .header("content-type", "application/msgpack")
        .header("accept", "application/msgpack")
        .body(rmp_serde::to_vec_named(&body).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{:?}", resp.headers());
    assert_eq!(resp.headers()["content-type"], "application/msgpack");
    #[derive(Deserialize)]
    struct Pushed {
        cursor: u64,
        results: Vec<PushedEvent>,
    }
    #[derive(Deserialize)]
    struct PushedEvent {
        event_id: String,
        seq: u64,
        status: String,
    }
    let pushed: Pushed = rmp_serde::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(pushed.results.len(), 2);
    assert_eq!(pushed.results[0].event_id, body.events[0].event_id);
    assert_eq!(pushed.results[1].seq, pushed.cursor);
    assert!(pushed.results.iter().all(|r| r.status == "applied"));

    let msg: MsgPull = rmp_serde::from_slice(&app.get_msgpack("/sync/pull?since=0", &a.access_token).await).unwrap();
    let json = app.pull(&a, "since=0").await;

    assert_eq!(msg.cursor, pushed.cursor);
    assert_eq!(json["cursor"], msg.cursor);
    assert_eq!(json["has_more"], msg.has_more);
    assert_eq!(json["head_hash"], msg.head_hash);
    assert_eq!(msg.changes.len(), 2);
    for (m, j) in msg.changes.iter().zip(json["changes"].as_array().unwrap()) {
        assert_eq!(j["kind"], m.kind);
        assert_eq!(j["id"], m.id, "ids are UUID strings in MessagePack too");
        assert_eq!(j["parent_id"].as_str(), m.parent_id.as_deref());
        assert_eq!((j["deleted"].clone(), j["conflict"].clone()), (Value::from(m.deleted), Value::from(m.conflict)));
        assert_eq!(serde_json::to_value(&m.version).unwrap(), j["version"]);
        let (mh, jh) = (&m.heads[0], &j["heads"][0]);
        assert_eq!((jh["event_id"].as_str(), jh["device_id"].as_str()), (Some(&*mh.event_id), Some(&*mh.device_id)));
        assert_eq!((jh["seq"].as_u64(), jh["op"].as_str()), (Some(mh.seq), Some(&*mh.op)));
        assert_eq!(jh["client_time"], mh.client_time);
    }
    let entry_change = msg.changes.iter().find(|c| c.id == entry.to_string()).unwrap();
    assert_eq!(entry_change.heads[0].payload, Some(Payload(payload)), "payloads are raw bin, byte for byte");
}

#[tokio::test]
async fn messagepack_with_the_wrong_shape_is_422_naming_the_field() {
    let app = spawn_app().await;
    let a = app.register().await;
    #[derive(Serialize)]
    struct Bad {
        events: Vec<BTreeMap<&'static str, u32>>,
    }
    let body = rmp_serde::to_vec_named(&Bad { events: vec![BTreeMap::from([("event_id", 5)])] }).unwrap();
    let resp = app
        .client
        .post(app.url("/sync/push"))
        .bearer_auth(&a.access_token)
        .header("content-type", "application/msgpack")
        .body(body)
        .send()
        .await
        .unwrap();
    let message = crate::helpers::assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert!(message.starts_with("events[0]"), "{message}");
}

#[tokio::test]
async fn responses_are_compressed_when_the_client_accepts_it() {
    let app = spawn_app().await;
    let a = app.register().await;
    let batch: Vec<Value> =
        (0..200).map(|_| event("entry", Uuid::new_v4(), "put", &[(a.device_id, 1)], Some(&[7u8; 512]))).collect();
    app.push_ok(&a, &batch).await;
    for encoding in ["gzip", "zstd"] {
        let resp = app
            .client
            .get(app.url("/sync/pull?since=0"))
            .bearer_auth(&a.access_token)
            .header("accept-encoding", encoding)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-encoding"], encoding);
        let compressed = resp.bytes().await.unwrap().len();
        assert!(compressed < 200 * 512 / 2, "{encoding}: {compressed} bytes");
    }
    let plain = app.client.get(app.url("/sync/pull?since=0")).bearer_auth(&a.access_token).send().await.unwrap();
    assert!(plain.headers().get("content-encoding").is_none());
}

/// One pushed event with `kind`, `op` and `payload` of any MessagePack type.
#[derive(Serialize)]
struct LooseEvent<K, O, P> {
    event_id: String,
    kind: K,
    aggregate_id: String,
    op: O,
    version: BTreeMap<String, u64>,
    payload: P,
    client_time: &'static str,
}

#[derive(Serialize)]
struct LoosePush<K, O, P> {
    events: Vec<LooseEvent<K, O, P>>,
}

fn loose<K: Serialize, O: Serialize, P: Serialize>(device: Uuid, kind: K, op: O, payload: P) -> Vec<u8> {
    rmp_serde::to_vec_named(&LoosePush {
        events: vec![LooseEvent {
            event_id: Uuid::new_v4().to_string(),
            kind,
            aggregate_id: Uuid::new_v4().to_string(),
            op,
            version: BTreeMap::from([(device.to_string(), 1)]),
            payload,
            client_time: "2026-11-29T10:00:00Z",
        }],
    })
    .unwrap()
}

#[tokio::test]
async fn messagepack_refuses_integer_kind_and_op_a_string_payload_and_trailing_bytes() {
    let app = spawn_app().await;
    let a = app.register().await;
    let push = |body: Vec<u8>| {
        app.client
            .post(app.url("/sync/push"))
            .bearer_auth(&a.access_token)
            .header("content-type", "application/msgpack")
            .body(body)
            .send()
    };
    let bin = || Payload(b"ciphertext".to_vec());
    // Variant indices: 0 is `entry` and `put`.
    let resp = push(loose(a.device_id, 0u32, "put", bin())).await.unwrap();
    let message = crate::helpers::assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert!(message.starts_with("events[0].kind"), "{message}");
    let resp = push(loose(a.device_id, "entry", 0u32, bin())).await.unwrap();
    let message = crate::helpers::assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert!(message.starts_with("events[0].op"), "{message}");
    // Base64 text where MessagePack carries bin.
    let resp = push(loose(a.device_id, "entry", "put", "Y2lwaGVydGV4dA==")).await.unwrap();
    let message = crate::helpers::assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert!(message.starts_with("events[0].payload"), "{message}");
    // A valid body followed by anything is not one MessagePack value.
    let mut trailing = loose(a.device_id, "entry", "put", bin());
    trailing.push(0xc0);
    let resp = push(trailing).await.unwrap();
    crate::helpers::assert_error(resp, StatusCode::BAD_REQUEST, "malformed_msgpack").await;
    // Nothing above was appended; the same event shape, well typed, is.
    let events_before = app.event_count(a.user_id).await;
    let resp = push(loose(a.device_id, "entry", "put", bin())).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(app.event_count(a.user_id).await, events_before + 1);
}

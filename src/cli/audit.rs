//! `echolia audit --user <id> [--device <id>] [--since <time>] [--json]`: what
//! the devices of a user did, from the log: a table for people, or JSON
//! lines. Metadata only: payloads stay where they are, and device events
//! show only the name of their action.

use std::collections::{HashMap, HashSet};
use std::io::Write;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{CliError, Outcome, Storage};
use crate::clock::rfc3339;
use crate::events::device::DeviceAction;
use crate::events::log::{read_filtered, LogFilter};
use crate::events::verify::PAGE;
use crate::events::{Kind, Op, StoredEvent};
use crate::store::{StoreError, StoreResult};
use crate::views::{client_table, devices, CLIENT_KINDS};

#[derive(Debug, Clone)]
pub struct AuditArgs {
    pub user: Uuid,
    pub device: Option<Uuid>,
    pub since: Option<DateTime<Utc>>,
    pub json: bool,
}

/// One line of the history.
#[derive(Debug, Serialize)]
pub struct AuditLine {
    pub seq: u64,
    pub event_id: Uuid,
    /// When the server received it.
    pub time: String,
    pub client_time: String,
    pub device_id: Uuid,
    pub device_name: Option<String>,
    pub kind: Kind,
    pub op: Op,
    /// `registered`, `paired`, `updated`, `revoked` for device events;
    /// `<kind> <op>` otherwise.
    pub action: String,
    pub aggregate_id: Uuid,
    pub parent_id: Option<Uuid>,
    /// `head` (the event is a current head of its aggregate), `superseded`,
    /// or `-` for device events.
    pub result: &'static str,
}

/// The name of a device action, from a device event's payload.
pub fn action_name(payload: Option<&[u8]>) -> &'static str {
    match payload.map(DeviceAction::from_payload) {
        Some(Ok(DeviceAction::Registered(_))) => "registered",
        Some(Ok(DeviceAction::Paired(_))) => "paired",
        Some(Ok(DeviceAction::Updated { .. })) => "updated",
        Some(Ok(DeviceAction::Revoked)) => "revoked",
        _ => "unreadable",
    }
}

fn line(stored: StoredEvent, names: &HashMap<Uuid, String>, heads: &HashSet<u64>) -> AuditLine {
    let event = &stored.event;
    let (action, result) = if event.kind == Kind::Device {
        (action_name(event.payload.as_deref()).to_owned(), "-")
    } else {
        let head = heads.contains(&stored.seq);
        (format!("{} {}", event.kind.as_str(), event.op.as_str()), if head { "head" } else { "superseded" })
    };
    AuditLine {
        seq: stored.seq,
        event_id: event.event_id,
        time: rfc3339(stored.received_at),
        client_time: rfc3339(event.client_time),
        device_id: stored.device_id,
        device_name: names.get(&stored.device_id).cloned(),
        kind: event.kind,
        op: event.op,
        action,
        aggregate_id: event.aggregate_id,
        parent_id: event.parent_id,
        result,
    }
}

/// The seqs of every aggregate's heads, from the views: an event is a head
/// when its seq is among them (a view row names its heads by seq). One scan
/// of each view, rather than a lookup by aggregate id, which no index serves.
async fn head_seqs(conn: &libsql::Connection) -> StoreResult<HashSet<u64>> {
    let mut seqs = HashSet::new();
    for kind in CLIENT_KINDS {
        let table = client_table(kind)?;
        let mut rows = conn.query(&format!("SELECT h.value FROM {table}, json_each({table}.heads) AS h"), ()).await?;
        while let Some(row) = rows.next().await? {
            seqs.insert(row.get::<u64>(0)?);
        }
    }
    Ok(seqs)
}

const NAME_WIDTH: usize = 20;

/// A device name fit for a terminal column: control characters replaced (a
/// name is user input), cut to the column's width.
fn column_name(line: &AuditLine) -> String {
    let name = match &line.device_name {
        Some(name) => name.chars().map(|c| if c.is_control() { '?' } else { c }).collect::<String>(),
        None => format!("{}…", &line.device_id.simple().to_string()[..8]),
    };
    if name.chars().count() > NAME_WIDTH {
        format!("{}…", name.chars().take(NAME_WIDTH - 1).collect::<String>())
    } else {
        name
    }
}

fn write_table_row(out: &mut impl Write, line: &AuditLine) -> std::io::Result<()> {
    writeln!(
        out,
        "{:>8}  {:<27}  {:<NAME_WIDTH$}  {:<16}  {:<36}  {}",
        line.seq,
        line.time,
        column_name(line),
        line.action,
        line.aggregate_id,
        line.result
    )
}

pub async fn run(storage: &Storage, args: &AuditArgs, out: &mut impl Write) -> Result<Outcome, CliError> {
    let db = storage.user(args.user).await?;
    let conn = db.read_view().await?;
    let snapshot = conn.transaction().await.map_err(StoreError::from)?;
    let names: HashMap<Uuid, String> =
        devices::list(&snapshot).await?.into_iter().map(|d| (d.device_id, d.profile.device_name)).collect();
    if let Some(device) = args.device.filter(|device| !names.contains_key(device)) {
        return Err(CliError::Usage(format!("device {device} is not a device of user {}", args.user)));
    }
    let heads = head_seqs(&snapshot).await?;
    let filter = LogFilter { device_id: args.device, received_from: args.since };
    if !args.json {
        writeln!(
            out,
            "{:>8}  {:<27}  {:<NAME_WIDTH$}  {:<16}  {:<36}  RESULT",
            "SEQ", "TIME", "DEVICE", "ACTION", "AGGREGATE"
        )
        .map_err(CliError::stdout)?;
    }
    let mut since = 0;
    loop {
        let page = read_filtered(&snapshot, since, PAGE, &filter).await?;
        let Some(last) = page.last() else { break };
        since = last.seq;
        for stored in page {
            let line = line(stored, &names, &heads);
            let written = if args.json {
                serde_json::to_writer(&mut *out, &line)
                    .map_err(std::io::Error::from)
                    .and_then(|()| out.write_all(b"\n"))
            } else {
                write_table_row(out, &line)
            };
            written.map_err(CliError::stdout)?;
        }
    }
    snapshot.commit().await.map_err(StoreError::from)?;
    out.flush().map_err(CliError::stdout)?;
    Ok(Outcome::Success)
}

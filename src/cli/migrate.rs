//! `echolia migrate`: pending migrations applied to the control database and
//! every user database, each reported. Idempotent: a second run applies
//! nothing. (The server also migrates a database when it first opens it;
//! this does all of them now, e.g. before a deploy.)

use super::{CliError, Outcome, Storage};
use crate::store::{migrations, StoreError};

pub async fn run(storage: &Storage) -> Result<Outcome, CliError> {
    let control = storage.backend.open_control().await?;
    let applied = control.migrate(migrations::CONTROL).await?;
    report("control", &applied);
    let mut total = applied.len();
    let users = storage.control(true).await?.user_ids().await?;
    let mut skipped = 0;
    for user in &users {
        let db = match storage.backend.open_user(*user, false).await {
            Ok(db) => db,
            Err(StoreError::UserNotFound(_)) => {
                skipped += 1;
                println!("user {user}: in the directory but without a database (skipped)");
                continue;
            }
            Err(err) => return Err(err.into()),
        };
        let applied = db.migrate(migrations::USER).await?;
        report(&format!("user {user}"), &applied);
        total += applied.len();
    }
    println!(
        "migrate: control and {} user databases, {total} migrations applied, {skipped} skipped",
        users.len() - skipped
    );
    Ok(Outcome::Success)
}

fn report(what: &str, applied: &[&str]) {
    if applied.is_empty() {
        println!("{what}: up to date");
    }
    for name in applied {
        println!("{what}: applied {name}");
    }
}

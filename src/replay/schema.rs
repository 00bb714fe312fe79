//! The shadows' schema: their `CREATE TABLE` from the live table (or the
//! projection file), and their indexes under the name the live one does not use.

use libsql::Connection;

use super::View;
use crate::store::{migrations, query_opt, StoreError, StoreResult};

pub(super) async fn table_exists(conn: &Connection, table: &str) -> StoreResult<bool> {
    let sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1";
    Ok(query_opt(conn, sql, [table]).await?.is_some())
}

/// The `CREATE TABLE` of a view: the live one, or when the table was dropped
/// (the log is the truth; views may be thrown away), its projection file's.
pub(super) async fn table_sql(conn: &Connection, table: &str) -> StoreResult<String> {
    match query_opt(conn, "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1", [table]).await? {
        Some(row) => Ok(row.get(0)?),
        None => embedded(table)?
            .into_iter()
            .find(|statement| statement.starts_with("CREATE TABLE"))
            .ok_or_else(|| StoreError::Corrupt(format!("projections/{table}.sql creates no table"))),
    }
}

/// The statements of a view's embedded projection file, comments removed.
fn embedded(table: &str) -> StoreResult<Vec<String>> {
    let name = format!("projections/{table}.sql");
    let file = migrations::USER
        .iter()
        .find(|migration| migration.name == name)
        .ok_or_else(|| StoreError::Corrupt(format!("no embedded {name}")))?;
    let code: Vec<&str> = file.sql.lines().map(|line| line.split("--").next().unwrap_or_default()).collect();
    Ok(code.join("\n").split(';').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
}

/// The `CREATE INDEX` statements of a view's shadow: the live table's
/// explicit indexes (or its projection file's, when the table was dropped),
/// each on the shadow and under the one of its two names (`<name>` and
/// `<name>_replay`) that the live index does not use. SQLite cannot rename
/// an index, and the shadow's are built before the swap, while the live
/// ones still serve: so the names alternate from one rebuild to the next.
pub(super) async fn shadow_indexes(conn: &Connection, view: View) -> StoreResult<Vec<String>> {
    let live = if table_exists(conn, view.table).await? {
        explicit_indexes(conn, view.table).await?
    } else {
        let creates = embedded(view.table)?.into_iter().filter(|sql| IndexSql::parse(sql).is_some());
        creates.map(|sql| (String::new(), sql)).collect()
    };
    let mut shapes = index_shapes(view.table, &live)?;
    shapes.dedup_by(|a, b| a.0 == b.0);
    if shapes.len() < live.len() {
        return Err(StoreError::Conflict(format!(
            "`{}` has an index under both of its names (`<name>` and `<name>_replay`); drop one, then run replay",
            view.table
        )));
    }
    let used: Vec<&str> = live.iter().map(|(name, _)| name.as_str()).collect();
    live.iter().map(|(_, sql)| shadow_index_sql(view, sql, &used)).collect()
}

/// The explicit indexes of a table: (name, `CREATE` statement).
pub(super) async fn explicit_indexes(conn: &Connection, table: &str) -> StoreResult<Vec<(String, String)>> {
    let sql = "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1 AND sql IS NOT NULL \
               ORDER BY name";
    let mut rows = conn.query(sql, [table]).await?;
    let mut indexes = Vec::new();
    while let Some(row) = rows.next().await? {
        indexes.push((row.get(0)?, row.get(1)?));
    }
    Ok(indexes)
}

/// An index's `CREATE` statement, parsed. Names and the table may be
/// quoted: SQLite writes the table so after a rename.
struct IndexSql<'a> {
    create: &'static str,
    name: String,
    table: String,
    /// From the opening parenthesis on.
    columns: &'a str,
}

impl<'a> IndexSql<'a> {
    fn parse(sql: &'a str) -> Option<Self> {
        let unquote = |word: &str| word.trim_matches('"').to_owned();
        let (create, rest) = ["CREATE UNIQUE INDEX ", "CREATE INDEX "]
            .iter()
            .find_map(|create| sql.strip_prefix(create).map(|rest| (*create, rest.trim_start())))?;
        let (name, rest) = rest.split_once(char::is_whitespace)?;
        let rest = rest.trim_start().strip_prefix("ON")?.trim_start();
        let (table, columns) = rest.split_at(rest.find(|c: char| c == '(' || c.is_whitespace())?);
        Some(Self { create, name: unquote(name), table: unquote(table), columns: columns.trim_start() })
    }

    /// The name without the `_replay` a rebuild may have given it.
    fn canonical(&self) -> &str {
        self.name.strip_suffix("_replay").unwrap_or(&self.name)
    }
}

/// What a table's explicit indexes are, whatever their current names: by
/// name without `_replay`, with their kind and columns.
pub(super) fn index_shapes(
    table: &str,
    indexes: &[(String, String)],
) -> StoreResult<Vec<(String, &'static str, String)>> {
    let mut shapes = indexes
        .iter()
        .map(|(_, sql)| {
            let index = IndexSql::parse(sql)
                .ok_or_else(|| StoreError::Corrupt(format!("cannot read the index `{sql}` of `{table}`")))?;
            Ok((index.canonical().to_owned(), index.create, index.columns.to_owned()))
        })
        .collect::<StoreResult<Vec<_>>>()?;
    shapes.sort();
    Ok(shapes)
}

/// An index's `CREATE` statement for the shadow of `view`, named apart from
/// the live indexes `used` (see [`shadow_indexes`]).
fn shadow_index_sql(view: View, sql: &str, used: &[&str]) -> StoreResult<String> {
    let unexpected = || StoreError::Corrupt(format!("cannot derive a shadow index of `{}` from `{sql}`", view.table));
    let index = IndexSql::parse(sql).filter(|index| index.table == view.table).ok_or_else(unexpected)?;
    let canonical = index.canonical();
    let name = if used.contains(&canonical) { format!("{canonical}_replay") } else { canonical.to_owned() };
    Ok(format!("{}{name} ON {} {}", index.create, view.shadow(), index.columns))
}

/// The live table's `CREATE TABLE` with the shadow's name. The name may be
/// quoted: SQLite writes it so after a rename (a previous replay).
pub(super) fn shadow_sql(table: &str, live: &str) -> StoreResult<String> {
    let unexpected = || StoreError::Corrupt(format!("cannot derive a shadow of `{table}` from its schema"));
    let rest = live.strip_prefix("CREATE TABLE").ok_or_else(unexpected)?.trim_start();
    let rest = rest
        .strip_prefix(&format!("\"{table}\""))
        .or_else(|| rest.strip_prefix(table))
        .filter(|rest| rest.starts_with(|c: char| c == '(' || c.is_whitespace()))
        .ok_or_else(unexpected)?;
    Ok(format!("CREATE TABLE {table}_replay {}", rest.trim_start()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::VIEWS;

    #[test]
    fn shadows_are_derived_from_plain_and_quoted_names() {
        let plain = "CREATE TABLE tags (\n    id TEXT PRIMARY KEY\n) STRICT";
        assert_eq!(shadow_sql("tags", plain).unwrap(), "CREATE TABLE tags_replay (\n    id TEXT PRIMARY KEY\n) STRICT");
        let quoted = "CREATE TABLE \"tags\" (id TEXT PRIMARY KEY) STRICT";
        assert_eq!(shadow_sql("tags", quoted).unwrap(), "CREATE TABLE tags_replay (id TEXT PRIMARY KEY) STRICT");
        assert!(shadow_sql("tags", "CREATE TABLE tagsx (id TEXT)").is_err());
        assert!(shadow_sql("tags", "CREATE VIEW tags AS SELECT 1").is_err());
    }

    #[test]
    fn shadow_indexes_take_the_name_the_live_index_does_not_use() {
        let tags = VIEWS[4];
        let live = "CREATE INDEX tags_by_parent ON tags (parent_id)";
        let shadow = shadow_index_sql(tags, live, &["tags_by_parent"]).unwrap();
        assert_eq!(shadow, "CREATE INDEX tags_by_parent_replay ON tags_replay (parent_id)");
        // As SQLite stores it after the swap renamed `tags_replay`: back to the first name.
        let renamed = "CREATE INDEX tags_by_parent_replay ON \"tags\" (parent_id)";
        let shadow = shadow_index_sql(tags, renamed, &["tags_by_parent_replay"]).unwrap();
        assert_eq!(shadow, "CREATE INDEX tags_by_parent ON tags_replay (parent_id)");
        // A dropped table's indexes, from its projection file.
        let unique = "CREATE UNIQUE INDEX tags_by_updated_seq ON tags (updated_seq)";
        let shadow = shadow_index_sql(tags, unique, &[]).unwrap();
        assert_eq!(shadow, "CREATE UNIQUE INDEX tags_by_updated_seq ON tags_replay (updated_seq)");
        assert!(shadow_index_sql(tags, "CREATE INDEX x ON entries (parent_id)", &[]).is_err());
        assert!(shadow_index_sql(tags, "CREATE TABLE tags (id TEXT)", &[]).is_err());
    }
}

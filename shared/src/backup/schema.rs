//! What a backup covers, read from PostgreSQL's catalog rather than listed by hand: every
//! table of the `public` schema but the migrations' own, foreign-key parents first, with
//! its columns; the schema version; and the statements that copy a table out and in.
//!
//! These statements live here rather than in `store`: they read and write whole tables of
//! any shape, where the store's statements each serve one operation on known columns. They
//! are unnamed (`persistent(false)`): a backup runs them once, inside its snapshot's
//! transaction, so they work through a transaction-mode pooler and leave nothing behind on a
//! server connection it lends to others (see `store::unit`).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, bail};
use sqlx::{AssertSqlSafe, PgConnection};

use super::format::TableSpec;

/// sqlx's record of applied migrations: not backed up (a restore migrates its target).
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// The latest migration this build applies: backups of another version are refused.
pub fn latest_known_migration() -> i64 {
    sqlx::migrate!("../migrations")
        .iter()
        .filter(|migration| migration.migration_type.is_up_migration())
        .map(|migration| migration.version)
        .max()
        .unwrap_or(0)
}

/// The latest migration applied to the database `conn` is connected to; `None` if it has
/// never been migrated.
pub async fn applied_migration(conn: &mut PgConnection) -> anyhow::Result<Option<i64>> {
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations') IS NOT NULL")
            .persistent(false)
            .fetch_one(&mut *conn)
            .await
            .context("looking for the migrations table")?;
    if !exists {
        return Ok(None);
    }
    sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
        .persistent(false)
        .fetch_one(&mut *conn)
        .await
        .context("reading the latest applied migration")
}

/// Every table of the `public` schema except [`MIGRATIONS_TABLE`], foreign-key parents
/// before the tables that reference them (ties by name), with the columns a `COPY` can
/// write back (generated columns are left out: PostgreSQL computes them again).
pub async fn tables(conn: &mut PgConnection) -> anyhow::Result<Vec<TableSpec>> {
    let rows: Vec<(String, Vec<String>)> = sqlx::query_as(
        "SELECT c.relname::text,
                coalesce(array_agg(a.attname::text ORDER BY a.attnum)
                         FILTER (WHERE a.attnum IS NOT NULL), '{}')
           FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
           LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
                                   AND NOT a.attisdropped AND a.attgenerated = ''
          WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname <> $1
          GROUP BY c.relname",
    )
    .bind(MIGRATIONS_TABLE)
    .persistent(false)
    .fetch_all(&mut *conn)
    .await
    .context("listing the tables to back up")?;
    let references: Vec<(String, String)> = sqlx::query_as(
        "SELECT child.relname::text, parent.relname::text
           FROM pg_constraint k
           JOIN pg_class child ON child.oid = k.conrelid
           JOIN pg_class parent ON parent.oid = k.confrelid
           JOIN pg_namespace n ON n.oid = child.relnamespace
          WHERE k.contype = 'f' AND n.nspname = 'public'",
    )
    .persistent(false)
    .fetch_all(&mut *conn)
    .await
    .context("listing the foreign keys between tables")?;
    let columns: BTreeMap<String, Vec<String>> = rows.into_iter().collect();
    let order = parents_first(columns.keys().cloned().collect(), &references)?;
    Ok(order
        .into_iter()
        .map(|name| TableSpec {
            columns: columns[&name].clone(),
            name,
        })
        .collect())
}

/// Orders `tables` so that each comes after every table it references (`(child, parent)`
/// pairs; references to itself or to tables outside the set are ignored).
fn parents_first(
    tables: BTreeSet<String>,
    references: &[(String, String)],
) -> anyhow::Result<Vec<String>> {
    let mut parents: BTreeMap<&str, BTreeSet<&str>> = tables
        .iter()
        .map(|t| (t.as_str(), BTreeSet::new()))
        .collect();
    for (child, parent) in references {
        if child != parent
            && tables.contains(parent)
            && let Some(set) = parents.get_mut(child.as_str())
        {
            set.insert(parent.as_str());
        }
    }
    let mut order = Vec::with_capacity(tables.len());
    while !parents.is_empty() {
        let ready: Vec<&str> = parents
            .iter()
            .filter(|(_, waiting)| waiting.is_empty())
            .map(|(table, _)| *table)
            .collect();
        if ready.is_empty() {
            let cycle: Vec<&str> = parents.keys().copied().collect();
            bail!(
                "tables {} reference each other in a cycle; a backup cannot order them",
                cycle.join(", ")
            );
        }
        for table in ready {
            parents.remove(table);
            for waiting in parents.values_mut() {
                waiting.remove(table);
            }
            order.push(table.to_owned());
        }
    }
    Ok(order)
}

/// The tables among `tables` that hold at least one row.
pub async fn occupied(
    conn: &mut PgConnection,
    tables: &[TableSpec],
) -> anyhow::Result<Vec<String>> {
    let mut occupied = Vec::new();
    for table in tables {
        let sql = format!("SELECT EXISTS (SELECT 1 FROM {})", table_ref(&table.name));
        let any: bool = sqlx::query_scalar(AssertSqlSafe(sql))
            .persistent(false)
            .fetch_one(&mut *conn)
            .await
            .with_context(|| format!("looking for rows in {}", table.name))?;
        if any {
            occupied.push(table.name.clone());
        }
    }
    Ok(occupied)
}

/// Moves every sequence owned by a column of `tables` (serial and identity columns) past
/// the largest value restored, so new rows do not collide with restored ones.
pub async fn advance_sequences(
    conn: &mut PgConnection,
    tables: &[TableSpec],
) -> anyhow::Result<()> {
    for table in tables {
        for column in &table.columns {
            let sequence: Option<String> =
                sqlx::query_scalar("SELECT pg_get_serial_sequence($1, $2)")
                    .bind(table_ref(&table.name))
                    .bind(column)
                    .persistent(false)
                    .fetch_one(&mut *conn)
                    .await
                    .with_context(|| {
                        format!("looking for the sequence of {}.{column}", table.name)
                    })?;
            let Some(sequence) = sequence else { continue };
            let sql = format!(
                "SELECT setval($1::regclass, coalesce(max({column}), 1), max({column}) IS NOT NULL)::bigint FROM {table}",
                column = quote(column),
                table = table_ref(&table.name),
            );
            sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql))
                .bind(sequence)
                .persistent(false)
                .fetch_one(&mut *conn)
                .await
                .with_context(|| format!("advancing the sequence of {}.{column}", table.name))?;
        }
    }
    Ok(())
}

/// `COPY <table> (<columns>) TO STDOUT`, in text format.
pub fn copy_out(table: &TableSpec) -> String {
    format!("COPY {} TO STDOUT", target(table))
}

/// `COPY <table> (<columns>) FROM STDIN`, in text format.
pub fn copy_in(table: &TableSpec) -> String {
    format!("COPY {} FROM STDIN", target(table))
}

fn target(table: &TableSpec) -> String {
    if table.columns.is_empty() {
        return table_ref(&table.name);
    }
    let columns: Vec<String> = table.columns.iter().map(|c| quote(c)).collect();
    format!("{} ({})", table_ref(&table.name), columns.join(", "))
}

/// A table of the `public` schema, whatever the session's `search_path`.
fn table_ref(name: &str) -> String {
    format!("public.{}", quote(name))
}

/// A quoted identifier: names come from the catalog or a backup file, never trusted as SQL.
pub fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(tables: &[&str], references: &[(&str, &str)]) -> anyhow::Result<Vec<String>> {
        parents_first(
            tables.iter().map(|t| t.to_string()).collect(),
            &references
                .iter()
                .map(|(c, p)| (c.to_string(), p.to_string()))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn parents_come_before_the_tables_that_reference_them() {
        let ordered = order(
            &["api_keys", "a_notes", "job_errors", "jobs"],
            &[
                ("job_errors", "jobs"),
                ("a_notes", "job_errors"),
                ("jobs", "jobs"),
                ("jobs", "elsewhere"),
            ],
        )
        .unwrap();
        assert_eq!(ordered, ["api_keys", "jobs", "job_errors", "a_notes"]);
        let error = order(&["a", "b", "c"], &[("a", "b"), ("b", "a")]).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("tables a, b reference each other"),
            "{error}"
        );
    }

    #[test]
    fn copy_statements_quote_every_name() {
        let table = TableSpec {
            name: "we\"ird".into(),
            columns: vec!["id".into(), "select".into()],
        };
        assert_eq!(
            copy_out(&table),
            r#"COPY public."we""ird" ("id", "select") TO STDOUT"#
        );
        assert_eq!(
            copy_in(&table),
            r#"COPY public."we""ird" ("id", "select") FROM STDIN"#
        );
    }

    #[test]
    fn this_build_knows_its_latest_migration() {
        assert!(latest_known_migration() >= 20261122000002);
    }
}

//! Reading the dependents from the catalog: the table's own row, then every kind's queries
//! ([`super::Kind::queries`]) in two pipelined round trips, from SQL text ([`read`]) or from
//! statements prepared before the cutover asks for its lock ([`Prepared`]).
//!
//! The first batch holds the queries that need only the table's OID (the table, statistics
//! targets, column dependencies, views, foreign keys, extended statistics); the views it
//! returns are the parameters of the second batch (everything else). Each batch is sent
//! together on the connection, not one round trip after the other: the read runs again under
//! the cutover lock, where each round trip lengthens the lock hold (docs/design.md §4.3).

use std::collections::HashMap;
use std::ops::Range;

use anyhow::{Context, Result, bail};
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row, Statement};

use super::{Dependents, KINDS, first_char, view};
use crate::sql::qualified;

/// The round trip of the read a query is sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Batch {
    /// With the table's row: the query needs only the table's OID ([`Params::Oid`]).
    First,
    /// After the views are known.
    Second,
}

/// The parameters a query takes, from what the first batch found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Params {
    /// `$1`: the table's OID.
    Oid,
    /// `$1`: the OIDs of the dependent views (plain and materialized).
    Views,
    /// `$1`: the OIDs of the dependent materialized views.
    Matviews,
    /// `$1`: the materialized views' OIDs, `$2`: the plain views' OIDs.
    MatviewsAndPlainViews,
    /// `$1`: the table's and the views' OIDs.
    Relations,
    /// `$1`: the table's and the views' OIDs, `$2`: their row types.
    RelationsAndTypes,
    /// `$1`: the table's and the views' OIDs, `$2`: their row types, `$3`: the table's OID.
    RelationsTypesAndOid,
    /// `$1`: the table's OID, `$2`: the name of doppel's own publication.
    OidAndPublication,
}

/// A catalog query of the read.
pub(super) struct Query {
    /// What it reads, for errors (`reading triggers`); also its key among the rows and the
    /// prepared statements, unique among the queries that run on one server version.
    pub what: &'static str,
    /// The SQL, run under an empty `search_path`.
    pub sql: &'static str,
    /// The round trip it is sent in.
    pub batch: Batch,
    /// Its parameters.
    pub params: Params,
    /// The server versions (`server_version_num`) it is valid SQL on.
    pub versions: Range<i32>,
}

/// [`Query::versions`] of a query valid on every supported server.
pub(super) const EVERY_VERSION: Range<i32> = 0..i32::MAX;

/// Rows returned by the queries of the read, by [`Query::what`].
pub(super) struct Rows(HashMap<&'static str, Vec<Row>>);

impl Rows {
    /// The rows of `query`, taken out; none when it did not run (another server version).
    pub(super) fn take(&mut self, query: &Query) -> Vec<Row> {
        self.0.remove(query.what).unwrap_or_default()
    }
}

/// Columns of the table used by each dependent object, keyed by (catalog, object OID).
type ColumnUse = HashMap<(String, u32), Vec<String>>;

/// What every kind's parsing needs besides its own rows.
pub(super) struct ReadContext {
    /// OID of the table.
    pub oid: u32,
    /// `"schema"."table"`, for refusal messages.
    pub table: String,
    /// Position of each view in [`Dependents::views`], by OID.
    pub view_index: HashMap<u32, usize>,
    /// Columns of the table each dependent object uses (`pg_depend` on the column).
    columns: ColumnUse,
    /// The server's `server_version_num`.
    pub version: i32,
}

impl ReadContext {
    /// Columns of the table the object `oid` of the catalog `catalog` (e.g. `pg_trigger`)
    /// uses, from `pg_depend`; empty when it uses none by column.
    pub(super) fn columns(&self, catalog: &str, oid: u32) -> Vec<String> {
        self.columns
            .get(&(catalog.to_string(), oid))
            .cloned()
            .unwrap_or_default()
    }
}

/// The values behind [`Params`].
struct Keys<'a> {
    /// The table's OID.
    oid: u32,
    /// doppel's own publication, whose membership is not a dependent.
    own_publication: &'a str,
    /// The dependent views' OIDs, plain and materialized, root first.
    views: Vec<u32>,
    /// The materialized views' OIDs.
    matviews: Vec<u32>,
    /// The plain views' OIDs.
    plain: Vec<u32>,
    /// The table's OID, then the views'.
    relations: Vec<u32>,
    /// The table's row type, then the views'.
    types: Vec<u32>,
}

impl Keys<'_> {
    /// The parameter values of `params`.
    fn values(&self, params: Params) -> Vec<&(dyn ToSql + Sync)> {
        match params {
            Params::Oid => vec![&self.oid],
            Params::Views => vec![&self.views],
            Params::Matviews => vec![&self.matviews],
            Params::MatviewsAndPlainViews => vec![&self.matviews, &self.plain],
            Params::Relations => vec![&self.relations],
            Params::RelationsAndTypes => vec![&self.relations, &self.types],
            Params::RelationsTypesAndOid => vec![&self.relations, &self.types, &self.oid],
            Params::OidAndPublication => vec![&self.oid, &self.own_publication],
        }
    }
}

/// The table's own row (not a dependent): name, RLS flags, replica identity, reloptions,
/// TOAST reloptions, row type.
const TABLE: Query = Query {
    what: "reading the table",
    sql: "SELECT n.nspname::text, c.relname::text, c.relrowsecurity, c.relforcerowsecurity,
           c.relreplident::text,
           (SELECT ic.relname::text FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
             WHERE i.indrelid = c.oid AND i.indisreplident),
           coalesce(c.reloptions, '{}')::text[], coalesce(tc.reloptions, '{}')::text[], c.reltype
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_class tc ON tc.oid = c.reltoastrelid
    WHERE c.oid = $1",
    batch: Batch::First,
    params: Params::Oid,
    versions: EVERY_VERSION,
};

/// The table's per-column statistics targets (read for completeness, see
/// [`Dependents::statistics_targets`]).
const STATISTICS_TARGETS: Query = Query {
    what: "reading statistics targets",
    sql: "SELECT attname::text, attstattarget::int FROM pg_attribute
    WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped
      AND nullif(attstattarget::int, -1) IS NOT NULL ORDER BY attnum",
    batch: Batch::First,
    params: Params::Oid,
    versions: EVERY_VERSION,
};

/// Which columns of the table each object uses (`pg_depend` on a column).
const COLUMN_USE: Query = Query {
    what: "reading column dependencies",
    sql: "SELECT d.classid::regclass::text, d.objid::oid, array_agg(DISTINCT a.attname::text)
    FROM pg_depend d
    JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
    WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = $1 AND d.refobjsubid > 0
    GROUP BY 1, 2",
    batch: Batch::First,
    params: Params::Oid,
    versions: EVERY_VERSION,
};

/// The read's own queries, sent first in the first batch.
const OWN: [&Query; 3] = [&TABLE, &STATISTICS_TARGETS, &COLUMN_USE];

/// The queries of `batch` valid on the server version `version`, in the order they are
/// sent: the read's own first, then each kind's in the order of [`KINDS`].
fn queries(batch: Batch, version: i32) -> Vec<&'static Query> {
    OWN.into_iter()
        .chain(KINDS.iter().flat_map(|k| k.queries().iter().copied()))
        .filter(|q| q.batch == batch && q.versions.contains(&version))
        .collect()
}

/// [`Prepared::read`]'s first statement: returns `search_path` and `plan_cache_mode`, then
/// empties the one (qualified definitions) and forces generic plans (planned once, kept).
/// `MATERIALIZED`: the values are read before they are changed.
const SETUP_SQL: &str = "WITH saved AS MATERIALIZED (
      SELECT current_setting('search_path') AS search_path,
             current_setting('plan_cache_mode') AS plan_cache_mode)
    SELECT search_path, plan_cache_mode, set_config('search_path', '', false),
           set_config('plan_cache_mode', 'force_generic_plan', false)
    FROM saved";

/// [`Prepared::read`]'s last statement: puts back what [`SETUP_SQL`] returned.
const RESTORE_SQL: &str =
    "SELECT set_config('search_path', $1, false), set_config('plan_cache_mode', $2, false)";

/// Reads the dependents of the table `table_oid`, skipping membership in the publication
/// `own_publication` (doppel's, dropped at cleanup). Run it before the cutover: the
/// definitions name the table as it is named now. Changes nothing: `search_path` is set to
/// `''` for the reads (so every name is schema-qualified) and restored afterwards.
///
/// Errors: no relation has OID `table_oid`; a catalog query fails (e.g. the connection is
/// lost or the transaction it runs in is aborted); `search_path` cannot be restored.
pub async fn read(
    client: &impl GenericClient,
    table_oid: u32,
    own_publication: &str,
) -> Result<Dependents> {
    let row = client
        .query_one(
            "SELECT current_setting('search_path'), current_setting('server_version_num')::int",
            &[],
        )
        .await
        .context("reading search_path")?;
    let (saved, version): (String, i32) = (row.get(0), row.get(1));
    client
        .execute("SELECT set_config('search_path', '', false)", &[])
        .await
        .context("clearing search_path to read qualified definitions")?;
    let result = read_qualified(client, Source::Text, table_oid, own_publication, version).await;
    let restored = client
        .execute("SELECT set_config('search_path', $1, false)", &[&saved])
        .await;
    let dependents = result?;
    restored.context("restoring search_path after reading the dependents")?;
    Ok(dependents)
}

/// The statements of [`read`] for one table, prepared on one connection and planned there,
/// so that a later [`Prepared::read`] on that connection only executes them.
///
/// The cutover prepares them before it asks for its lock and reads the dependents again
/// under the lock: the reads then cost their execution only (parsing and planning ~20
/// catalog queries is most of what a [`read`] costs). The statements are the same SQL as
/// [`read`]'s, executed with their parameters under the empty `search_path` they were
/// parsed with; each execution takes a new snapshot (or, in a `REPEATABLE READ` transaction,
/// the transaction's), so a read returns what [`read`] would return at that moment, changes
/// committed after the preparation included. A plan the server finds stale (the plan cache
/// is invalidated by changes to the catalogs' own definitions or statistics) is simply made
/// again at that execution.
///
/// Plans are kept by forcing generic plans (`plan_cache_mode = force_generic_plan`) for the
/// duration of each read: a statement with parameters is otherwise planned again for each
/// of its first five executions. The plans are made by the first read, which [`Prepared::new`]
/// runs.
pub struct Prepared {
    /// The table's OID.
    table_oid: u32,
    /// doppel's own publication.
    own_publication: String,
    /// The server's `server_version_num` (which queries were prepared).
    version: i32,
    /// [`SETUP_SQL`], prepared under the connection's own `search_path` (where it runs).
    setup: Statement,
    /// [`RESTORE_SQL`].
    restore: Statement,
    /// `search_path` and `plan_cache_mode` when prepared: put back if a read fails.
    saved: (String, String),
    /// The statement of each query, by [`Query::what`].
    statements: HashMap<&'static str, Statement>,
}

impl Prepared {
    /// Prepares the statements of [`read`] for the table `table_oid` (skipping membership in
    /// `own_publication`) on `client`'s connection and runs them once, which plans them.
    /// Leaves the connection's `search_path` and `plan_cache_mode` as they were.
    ///
    /// Errors: a statement cannot be prepared or the first read fails (see [`read`]); the
    /// settings cannot be restored.
    pub async fn new(
        client: &impl GenericClient,
        table_oid: u32,
        own_publication: &str,
    ) -> Result<Prepared> {
        let version: i32 = client
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .context("reading the server version")?
            .get(0);
        let setup = client
            .prepare(SETUP_SQL)
            .await
            .context("preparing the dependents read")?;
        // Everything else is parsed under the empty search_path it runs with (a statement
        // parsed under another one is analysed again at its next execution).
        let saved = client
            .query_one(&setup, &[])
            .await
            .context("clearing search_path to prepare the dependents read")?;
        let saved: (String, String) = (saved.get(0), saved.get(1));
        let mut all = queries(Batch::First, version);
        all.extend(queries(Batch::Second, version));
        let statements = futures_util::future::try_join_all(
            all.iter()
                .map(|q| client.prepare(q.sql))
                .chain(std::iter::once(client.prepare(RESTORE_SQL))),
        )
        .await
        .context("preparing the dependents read");
        let restored = client
            .execute(RESTORE_SQL, &[&saved.0, &saved.1])
            .await
            .context("restoring search_path after preparing the dependents read");
        let mut statements = statements?;
        restored?;
        let restore = statements.pop().context("the restore statement")?;
        let prepared = Prepared {
            table_oid,
            own_publication: own_publication.to_string(),
            version,
            setup,
            restore,
            saved,
            statements: all.iter().map(|q| q.what).zip(statements).collect(),
        };
        prepared.read(client).await?;
        Ok(prepared)
    }

    /// [`read`] with the prepared statements, on the connection they were prepared on (or a
    /// transaction of it): the same result, without parsing or planning. Two round trips:
    /// the settings change and the queries that need only the table's OID, then the others
    /// and the settings restore, each pipelined.
    ///
    /// Errors: as [`read`]; also when `client` is another connection (the server knows no
    /// such prepared statement).
    pub async fn read(&self, client: &impl GenericClient) -> Result<Dependents> {
        self.read_of(client, self.table_oid).await
    }

    /// [`Prepared::read`] of another relation, `oid` (a member of the partitioned table the
    /// statements were prepared for, `MemberDependents`): the same statements, executed with
    /// its OID.
    ///
    /// Errors: as [`Prepared::read`].
    pub async fn read_of(&self, client: &impl GenericClient, oid: u32) -> Result<Dependents> {
        let result = read_qualified(
            client,
            Source::Prepared(self),
            oid,
            &self.own_publication,
            self.version,
        )
        .await;
        if result.is_err() {
            // Best effort: in a transaction the failure aborted it, and its rollback puts the
            // settings back.
            let _ = client
                .execute(&self.restore, &[&self.saved.0, &self.saved.1])
                .await;
        }
        result
    }
}

/// Where [`read_qualified`] takes its statements from.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// The SQL text: each call parses, plans, runs and closes its statement.
    Text,
    /// Statements prepared and planned on the connection.
    Prepared(&'a Prepared),
}

/// Rows of `query`; errors carry its [`Query::what`].
///
/// With [`Source::Prepared`], the request is sent when the future is first polled, so
/// futures polled together (`try_join!`, `try_join_all`) run on the server in the order they
/// are listed.
async fn fetch(
    client: &impl GenericClient,
    source: Source<'_>,
    query: &Query,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>> {
    match source {
        Source::Text => client.query(query.sql, params).await,
        Source::Prepared(p) => match p.statements.get(query.what) {
            Some(statement) => client.query(statement, params).await,
            None => bail!("{}: the statement was not prepared", query.what),
        },
    }
    .context(query.what)
}

/// Runs `queries` pipelined, in their order, with their parameters from `keys`.
async fn run_batch(
    client: &impl GenericClient,
    source: Source<'_>,
    queries: &[&'static Query],
    keys: &Keys<'_>,
) -> Result<Rows> {
    let params: Vec<Vec<&(dyn ToSql + Sync)>> =
        queries.iter().map(|q| keys.values(q.params)).collect();
    let rows = futures_util::future::try_join_all(
        queries
            .iter()
            .zip(&params)
            .map(|(q, p)| fetch(client, source, q, p)),
    )
    .await?;
    Ok(Rows(queries.iter().map(|q| q.what).zip(rows).collect()))
}

/// The reads of [`read`] and [`Prepared::read`], with `search_path` already empty for
/// [`Source::Text`] (for [`Source::Prepared`], its first and last statements empty it and put
/// it back). `version` is the server's `server_version_num`.
async fn read_qualified(
    client: &impl GenericClient,
    source: Source<'_>,
    oid: u32,
    own_publication: &str,
    version: i32,
) -> Result<Dependents> {
    let mut keys = Keys {
        oid,
        own_publication,
        views: Vec::new(),
        matviews: Vec::new(),
        plain: Vec::new(),
        relations: Vec::new(),
        types: Vec::new(),
    };
    // Every query that needs only the table's OID, pipelined; the prepared read's settings
    // change goes first in the same round trip.
    let setup = async {
        match source {
            Source::Prepared(p) => client
                .query_one(&p.setup, &[])
                .await
                .map(Some)
                .context("clearing search_path to read qualified definitions"),
            Source::Text => Ok(None),
        }
    };
    let first = queries(Batch::First, version);
    let (saved, mut rows) =
        futures_util::try_join!(setup, run_batch(client, source, &first, &keys))?;
    // What the prepared read's last statement puts back.
    let saved: Option<(String, String)> = saved.map(|r| (r.get(0), r.get(1)));
    let (mut deps, table_type) = table(oid, rows.take(&TABLE))?;
    deps.statistics_targets = rows
        .take(&STATISTICS_TARGETS)
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut cx = ReadContext {
        oid,
        table: qualified(&deps.schema, &deps.table),
        view_index: HashMap::new(),
        columns: column_use(rows.take(&COLUMN_USE)),
        version,
    };

    // The views, which the second batch takes as parameters.
    let view_types = view::read_views(&mut rows, &cx, &mut deps);
    cx.view_index = deps
        .views
        .iter()
        .enumerate()
        .map(|(i, v)| (v.oid, i))
        .collect();
    keys.views = deps.views.iter().map(|v| v.oid).collect();
    keys.matviews = deps
        .views
        .iter()
        .filter(|v| v.materialized)
        .map(|v| v.oid)
        .collect();
    keys.plain = deps
        .views
        .iter()
        .filter(|v| !v.materialized)
        .map(|v| v.oid)
        .collect();
    keys.relations = std::iter::once(oid).chain(keys.views.clone()).collect();
    keys.types = std::iter::once(table_type).chain(view_types).collect();

    // Everything else, pipelined as well; the prepared read's settings restore goes last.
    let restore = async {
        match (source, &saved) {
            (Source::Prepared(p), Some((search_path, plan_cache_mode))) => client
                .execute(&p.restore, &[search_path, plan_cache_mode])
                .await
                .map(|_| ())
                .context("restoring search_path after reading the dependents"),
            _ => Ok(()),
        }
    };
    let second = queries(Batch::Second, version);
    let (more, ()) = futures_util::try_join!(run_batch(client, source, &second, &keys), restore)?;
    rows.0.extend(more.0);
    for kind in KINDS {
        kind.read(&mut rows, &cx, &mut deps);
    }
    Ok(deps)
}

/// The aggregate with the table's own row filled in (and no dependents yet), and the
/// table's row type.
///
/// Errors: no row (no relation has OID `oid`) or more than one.
fn table(oid: u32, rows: Vec<Row>) -> Result<(Dependents, u32)> {
    if rows.len() > 1 {
        bail!("{}: more than one row", TABLE.what);
    }
    let Some(row) = rows.into_iter().next() else {
        bail!("no relation has OID {oid}: was the table dropped?");
    };
    let deps = Dependents {
        table_oid: oid,
        schema: row.get(0),
        table: row.get(1),
        row_security: row.get(2),
        force_row_security: row.get(3),
        replica_identity: first_char(row.get(4)),
        replica_identity_index: row.get(5),
        reloptions: row.get(6),
        toast_reloptions: row.get(7),
        foreign_keys: Vec::new(),
        views: Vec::new(),
        triggers: Vec::new(),
        rules: Vec::new(),
        policies: Vec::new(),
        publications: Vec::new(),
        statistics_targets: Vec::new(),
        statistics: Vec::new(),
        other_policies: Vec::new(),
        other_rules: Vec::new(),
        unsupported: Vec::new(),
    };
    Ok((deps, row.get(8)))
}

/// [`ColumnUse`] from the rows of [`COLUMN_USE`].
fn column_use(rows: Vec<Row>) -> ColumnUse {
    let mut columns: ColumnUse = HashMap::new();
    for r in rows {
        let catalog: String = r.get(0);
        let catalog = catalog.trim_start_matches("pg_catalog.").to_string();
        columns.insert((catalog, r.get(1)), r.get(2));
    }
    columns
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first batch needs only the table's OID, and no two queries that run on one
    /// server share a key.
    #[test]
    fn batches_and_keys() {
        for version in [140000, 150000, 170000] {
            let first = queries(Batch::First, version);
            assert!(first.iter().all(|q| q.params == Params::Oid));
            let mut keys: Vec<&str> = first
                .iter()
                .chain(&queries(Batch::Second, version))
                .map(|q| q.what)
                .collect();
            let count = keys.len();
            keys.sort_unstable();
            keys.dedup();
            assert_eq!(keys.len(), count, "{version}");
        }
    }

    /// The prepared read (and the prepared fingerprint) return what the unprepared ones do,
    /// including changes committed by another session after the preparation, read in a
    /// transaction holding the table's ACCESS EXCLUSIVE lock as the cutover does; the
    /// connection's settings are left as they were, after a failed read too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prepared_reads_see_changes_committed_after_preparing() {
        use crate::model::catalog::{PreparedFingerprint, fingerprint};
        let cluster = doppel_testkit::cluster::LocalCluster::start(Default::default())
            .await
            .unwrap();
        let mut client = cluster.connect("postgres").await.unwrap();
        let other = cluster.connect("postgres").await.unwrap();
        client
            .batch_execute(
                "CREATE TABLE t (id int PRIMARY KEY, v int);
                 CREATE VIEW v1 AS SELECT id, v FROM t;
                 CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;",
            )
            .await
            .unwrap();
        let oid = crate::model::catalog::resolve(&client, "t").await.unwrap();
        async fn settings_of(c: &tokio_postgres::Client) -> (String, String) {
            let r = c
                .query_one(
                    "SELECT current_setting('search_path'), current_setting('plan_cache_mode')",
                    &[],
                )
                .await
                .unwrap();
            (r.get(0), r.get(1))
        }
        let initial = settings_of(&client).await;
        let prepared = Prepared::new(&client, oid, "doppel_own").await.unwrap();
        let prepared_fingerprint = PreparedFingerprint::new(&client, oid).await.unwrap();
        assert_eq!(settings_of(&client).await, initial);
        let mut previous = read(&client, oid, "doppel_own").await.unwrap();
        assert_eq!(prepared.read(&client).await.unwrap(), previous);
        assert_eq!(settings_of(&client).await, initial);
        let mut previous_fingerprint = fingerprint(&client, oid).await.unwrap();
        assert_eq!(
            prepared_fingerprint.compute(&client).await.unwrap(),
            previous_fingerprint
        );

        for (ddl, changes_fingerprint) in [
            ("CREATE VIEW v2 AS SELECT id FROM v1", false),
            ("GRANT SELECT ON v1 TO PUBLIC", false),
            ("COMMENT ON COLUMN v1.v IS 'x'", false),
            ("CREATE RULE r AS ON DELETE TO v1 DO INSTEAD NOTHING", false),
            ("ALTER VIEW v1 ALTER COLUMN v SET DEFAULT 1", false),
            (
                "CREATE TRIGGER tg BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
                true,
            ),
            ("CREATE POLICY pol ON t USING (v > 0)", true),
            ("CREATE TABLE c (t_id int REFERENCES t (id))", true),
            ("ALTER TABLE t SET (fillfactor = 50)", true),
            ("ALTER TABLE t ALTER COLUMN v SET STATISTICS 500", false),
            ("CREATE STATISTICS st ON id, v FROM t", false),
            ("CREATE PUBLICATION p2 FOR TABLE t", true),
            ("ALTER TABLE t ADD COLUMN w int", true),
            ("CREATE INDEX t_v ON t (v)", true),
        ] {
            other.batch_execute(ddl).await.unwrap();
            let tx = client.transaction().await.unwrap();
            tx.batch_execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
                .await
                .unwrap();
            let now_fingerprint = prepared_fingerprint.compute(&tx).await.unwrap();
            let now = prepared.read(&tx).await.unwrap();
            tx.rollback().await.unwrap();
            assert_eq!(
                now,
                read(&client, oid, "doppel_own").await.unwrap(),
                "{ddl}"
            );
            assert_eq!(now_fingerprint, fingerprint(&client, oid).await.unwrap());
            if ddl.starts_with("ALTER TABLE t ADD") || ddl.starts_with("CREATE INDEX") {
                assert_eq!(now, previous, "{ddl}: not a dependent");
            } else {
                assert_ne!(now, previous, "{ddl}");
            }
            assert_eq!(
                now_fingerprint != previous_fingerprint,
                changes_fingerprint,
                "{ddl}"
            );
            assert_eq!(settings_of(&client).await, initial, "{ddl}");
            previous = now;
            previous_fingerprint = now_fingerprint;
        }

        // Every prepared statement was planned once (generic plans), never per execution.
        let plans = client
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE custom_plans > 0),
                        min(generic_plans) FILTER (WHERE statement NOT LIKE '%pg_prepared_statements%')
                 FROM pg_prepared_statements",
                &[],
            )
            .await
            .unwrap();
        let (statements, custom, generic): (i64, i64, i64) =
            (plans.get(0), plans.get(1), plans.get(2));
        assert!(statements >= 20, "{statements} statements prepared");
        assert_eq!(custom, 0, "no statement planned for its parameters");
        assert!(generic >= 15, "each ran with its generic plan: {generic}");

        other.batch_execute("DROP TABLE t CASCADE").await.unwrap();
        let err = prepared.read(&client).await.unwrap_err();
        assert!(
            format!("{err:#}").contains("no relation has OID"),
            "{err:#}"
        );
        assert_eq!(settings_of(&client).await, initial);
    }
}

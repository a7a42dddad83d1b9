//! Catalog inspection: everything doppel reads about the original table before it acts.
//!
//! One query per concern against `pg_catalog`; nothing here writes. The same functions read
//! the temporary clone preflight builds (see `preflight`), so the shadow's shape comes from the
//! server's own parse of the ALTER.

use anyhow::{Context, Result, bail};
use tokio_postgres::{GenericClient, Statement};

use crate::sql::{ident, qualified};

/// A column as the catalog describes it (`pg_attribute` + `pg_attrdef`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// `attnum`, 1-based position; survives renames and type changes.
    pub attnum: i16,
    /// Column name.
    pub name: String,
    /// `atttypid`.
    pub type_oid: u32,
    /// `format_type(atttypid, atttypmod)`, e.g. `numeric(12,2)`; safe to paste into SQL.
    pub type_sql: String,
    /// `atttypmod` (-1 when none).
    pub type_modifier: i32,
    /// `COLLATE "schema"."name"` when the column's collation differs from its type's, else empty.
    pub collate_sql: String,
    /// `NOT NULL`.
    pub not_null: bool,
    /// Default expression (`pg_get_expr`), not for identity or generated columns.
    pub default_sql: Option<String>,
    /// `attidentity`: `a` (ALWAYS), `d` (BY DEFAULT) or `None`.
    pub identity: Option<char>,
    /// Generation expression for `GENERATED ALWAYS AS (..)` columns.
    pub generated_sql: Option<String>,
    /// `attgenerated`: `s` stored, `v` virtual (PostgreSQL 18).
    pub generated_kind: Option<char>,
    /// `attstorage` when it differs from the type's default storage.
    pub storage: Option<char>,
    /// `attcompression` (`p` pglz, `l` lz4) when set.
    pub compression: Option<char>,
    /// `attstattarget` when set explicitly (not -1 / NULL).
    pub stattarget: Option<i32>,
    /// Column comment.
    pub comment: Option<String>,
}

/// An index on the table, with the constraint it backs (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    /// Index name (in the table's schema).
    pub name: String,
    /// Index OID.
    pub oid: u32,
    /// `pg_get_indexdef` text.
    pub definition: String,
    /// `relfilenode` of the index (changes when an ALTER rebuilds it).
    pub relfilenode: u32,
    /// The constraint this index implements (`p`, `u` or `x`), with its `pg_get_constraintdef`.
    pub constraint: Option<(char, String)>,
    /// `indisprimary`.
    pub is_primary: bool,
    /// `indisreplident`.
    pub is_replica_identity: bool,
}

/// A constraint that is not backed by an index (CHECK, FOREIGN KEY).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    /// Constraint name.
    pub name: String,
    /// `contype`: `c` check, `f` foreign key, `n` not-null (PostgreSQL 18), `t` trigger.
    pub kind: char,
    /// `pg_get_constraintdef` text (e.g. `CHECK ((amount > (0)::numeric))`, with ` NOT VALID`).
    pub definition: String,
    /// `convalidated`.
    pub validated: bool,
    /// The constrained columns (`conkey`), in key order.
    pub columns: Vec<String>,
    /// For a foreign key, the OID of the table it references (`confrelid`).
    pub references: Option<u32>,
}

/// A sequence owned by one of the table's columns (serial or identity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedSequence {
    /// The owning column.
    pub column: String,
    /// Sequence schema.
    pub schema: String,
    /// Sequence name.
    pub name: String,
    /// True for an identity column's internal sequence, false for serial.
    pub identity: bool,
}

/// The table as doppel sees it before it acts.
#[derive(Debug, Clone)]
pub struct Table {
    /// `pg_class.oid`.
    pub oid: u32,
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// `relkind` (`r` plain, `p` partitioned, `f` foreign, `v` view, `m` matview, ...).
    pub relkind: char,
    /// `relpersistence` (`p` permanent, `u` unlogged, `t` temporary).
    pub persistence: char,
    /// `relreplident` (`d` default, `n` nothing, `f` full, `i` index).
    pub replica_identity: char,
    /// `relispartition`.
    pub is_partition: bool,
    /// For a partition: the root of its partitioned tree (`pg_partition_root`), as
    /// `"schema"."name"`.
    pub partition_root: Option<String>,
    /// Has inheritance (`INHERITS`) parents or children; partitions of a declaratively
    /// partitioned table do not count (see `is_partition` and `relkind`).
    pub inherits: bool,
    /// Owner role name.
    pub owner: String,
    /// `reloptions` as `name=value` strings.
    pub reloptions: Vec<String>,
    /// `relfilenode` (changes when the heap is rewritten).
    pub relfilenode: u32,
    /// Row estimate (`reltuples`, -1 when never analysed).
    pub rows_estimate: i64,
    /// Heap size in bytes (`pg_relation_size`).
    pub heap_bytes: i64,
    /// Heap + indexes + TOAST in bytes (`pg_total_relation_size`).
    pub total_bytes: i64,
    /// Live columns in `attnum` order (dropped columns left out).
    pub columns: Vec<Column>,
    /// Indexes, primary key included.
    pub indexes: Vec<Index>,
    /// CHECK / FOREIGN KEY / NOT NULL constraints.
    pub constraints: Vec<Constraint>,
    /// Sequences owned by columns.
    pub sequences: Vec<OwnedSequence>,
    /// Table comment.
    pub comment: Option<String>,
    /// Table-level grants as `(grantee SQL, privilege, grantable)`; grantee `PUBLIC` or a quoted role.
    pub grants: Vec<(String, String, bool)>,
    /// Column-level grants as `(column, grantee SQL, privilege, grantable)`.
    pub column_grants: Vec<(String, String, String, bool)>,
    /// Primary-key column names in key order (empty without a primary key).
    pub pk_columns: Vec<String>,
    /// Tablespace name when not the database default.
    pub tablespace: Option<String>,
}

impl Table {
    /// `"schema"."name"`.
    pub fn qualified(&self) -> String {
        qualified(&self.schema, &self.name)
    }

    /// The primary key's index, if any.
    pub fn primary_key(&self) -> Option<&Index> {
        self.indexes.iter().find(|i| i.is_primary)
    }

    /// Column by name.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// Resolves a table name written as SQL writes it (`orders`, `public.orders`,
/// `"Sales Data"."Order-Lines"`; unqualified names through `search_path`) to its OID.
///
/// Errors: the name does not parse, or no such relation is visible.
pub async fn resolve(client: &impl GenericClient, table: &str) -> Result<u32> {
    let row = client
        .query_one("SELECT to_regclass($1)::oid", &[&table])
        .await
        .with_context(|| format!("--table {table:?} is not a valid table name: write it as SQL does, e.g. public.orders or '\"Sales Data\".\"Order-Lines\"'"))?;
    let oid: Option<u32> = row.get(0);
    match oid {
        Some(oid) => Ok(oid),
        None => bail!(
            "table {table:?} does not exist (or is not on the search_path): check the name, qualify it with its schema, and quote mixed-case names like '\"Sales Data\".\"Order-Lines\"'"
        ),
    }
}

/// Reads everything about the relation `oid` (table or temporary clone).
pub async fn inspect(client: &impl GenericClient, oid: u32) -> Result<Table> {
    let row = client
        .query_one(
            "SELECT n.nspname::text, c.relname::text, c.relkind::text, c.relpersistence::text,
                    c.relreplident::text, c.relispartition,
                    (NOT c.relispartition AND EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid))
                    OR EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class k ON k.oid = i.inhrelid
                               WHERE i.inhparent = c.oid AND NOT k.relispartition),
                    pg_get_userbyid(c.relowner)::text, coalesce(c.reloptions, '{}')::text[],
                    c.relfilenode::oid, c.reltuples::bigint, pg_relation_size(c.oid),
                    pg_total_relation_size(c.oid), obj_description(c.oid, 'pg_class'),
                    (SELECT spcname::text FROM pg_tablespace WHERE oid = c.reltablespace),
                    (SELECT ARRAY[rn.nspname::text, r.relname::text] FROM pg_class r
                     JOIN pg_namespace rn ON rn.oid = r.relnamespace
                     WHERE c.relispartition AND r.oid = pg_partition_root(c.oid))
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
            &[&oid],
        )
        .await
        .context("reading pg_class")?;
    let one_char = |s: String| s.chars().next().unwrap_or(' ');
    let mut table = Table {
        oid,
        schema: row.get(0),
        name: row.get(1),
        relkind: one_char(row.get(2)),
        persistence: one_char(row.get(3)),
        replica_identity: one_char(row.get(4)),
        is_partition: row.get(5),
        partition_root: row
            .get::<_, Option<Vec<String>>>(15)
            .map(|r| crate::sql::qualified(&r[0], &r[1])),
        inherits: row.get(6),
        owner: row.get(7),
        reloptions: row.get(8),
        relfilenode: row.get(9),
        rows_estimate: row.get(10),
        heap_bytes: row.get(11),
        total_bytes: row.get(12),
        comment: row.get(13),
        tablespace: row.get(14),
        pk_columns: Vec::new(),
        columns: Vec::new(),
        indexes: Vec::new(),
        constraints: Vec::new(),
        sequences: Vec::new(),
        grants: Vec::new(),
        column_grants: Vec::new(),
    };
    table.columns = columns(client, oid).await?;
    table.indexes = indexes(client, oid).await?;
    table.constraints = constraints(client, oid).await?;
    table.sequences = sequences(client, oid).await?;
    table.pk_columns = client
        .query(
            "SELECT a.attname::text
             FROM pg_index i
             CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord",
            &[&oid],
        )
        .await
        .context("reading the primary key")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    table.grants = client
        .query(
            "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
                    a.privilege_type::text, a.is_grantable
             FROM pg_class c, aclexplode(c.relacl) a
             WHERE c.oid = $1 AND a.grantee <> c.relowner ORDER BY 1, 2",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    table.column_grants = client
        .query(
            "SELECT att.attname::text,
                    CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
                    a.privilege_type::text, a.is_grantable
             FROM pg_attribute att, aclexplode(att.attacl) a
             WHERE att.attrelid = $1 AND att.attnum > 0 AND NOT att.attisdropped ORDER BY 1, 2, 3",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    Ok(table)
}

async fn columns(client: &impl GenericClient, oid: u32) -> Result<Vec<Column>> {
    let rows = client
        .query(
            "SELECT a.attnum, a.attname::text, a.atttypid::oid, format_type(a.atttypid, a.atttypmod),
                    a.atttypmod,
                    CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
                         THEN 'COLLATE ' || quote_ident(cn.nspname) || '.' || quote_ident(co.collname) ELSE '' END,
                    a.attnotnull,
                    CASE WHEN a.attgenerated = '' AND a.attidentity = '' THEN pg_get_expr(d.adbin, d.adrelid) END,
                    nullif(a.attidentity::text, ''),
                    CASE WHEN a.attgenerated <> '' THEN pg_get_expr(d.adbin, d.adrelid) END,
                    CASE WHEN a.attstorage <> t.typstorage THEN a.attstorage::text END,
                    nullif(a.attcompression::text, ''),
                    nullif(a.attstattarget::int, -1),
                    col_description(a.attrelid, a.attnum),
                    nullif(a.attgenerated::text, '')
             FROM pg_attribute a
             JOIN pg_type t ON t.oid = a.atttypid
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
             LEFT JOIN pg_collation co ON co.oid = a.attcollation
             LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .context("reading pg_attribute")?;
    Ok(rows
        .iter()
        .map(|r| Column {
            attnum: r.get(0),
            name: r.get(1),
            type_oid: r.get(2),
            type_sql: r.get(3),
            type_modifier: r.get(4),
            collate_sql: r.get(5),
            not_null: r.get(6),
            default_sql: r.get(7),
            identity: r.get::<_, Option<String>>(8).and_then(|s| s.chars().next()),
            generated_sql: r.get(9),
            storage: r
                .get::<_, Option<String>>(10)
                .and_then(|s| s.chars().next()),
            compression: r
                .get::<_, Option<String>>(11)
                .and_then(|s| s.chars().next()),
            stattarget: r.get(12),
            comment: r.get(13),
            generated_kind: r
                .get::<_, Option<String>>(14)
                .and_then(|s| s.chars().next()),
        })
        .collect())
}

async fn indexes(client: &impl GenericClient, oid: u32) -> Result<Vec<Index>> {
    let rows = client
        .query(
            "SELECT ic.relname::text, i.indexrelid::oid, pg_get_indexdef(i.indexrelid), ic.relfilenode::oid,
                    con.contype::text, pg_get_constraintdef(con.oid), i.indisprimary, i.indisreplident
             FROM pg_index i
             JOIN pg_class ic ON ic.oid = i.indexrelid
             LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid
                                         AND con.contype IN ('p', 'u', 'x')
             WHERE i.indrelid = $1 ORDER BY ic.relname",
            &[&oid],
        )
        .await
        .context("reading pg_index")?;
    Ok(rows
        .iter()
        .map(|r| {
            let kind: Option<String> = r.get(4);
            let def: Option<String> = r.get(5);
            Index {
                name: r.get(0),
                oid: r.get(1),
                definition: r.get(2),
                relfilenode: r.get(3),
                constraint: kind.and_then(|k| k.chars().next()).zip(def),
                is_primary: r.get(6),
                is_replica_identity: r.get(7),
            }
        })
        .collect())
}

async fn constraints(client: &impl GenericClient, oid: u32) -> Result<Vec<Constraint>> {
    let rows = client
        .query(
            "SELECT c.conname::text, c.contype::text, pg_get_constraintdef(c.oid), c.convalidated,
                    coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord)
                              FROM unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)
                              JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum), '{}'),
                    nullif(c.confrelid, 0)::oid
             FROM pg_constraint c WHERE c.conrelid = $1 AND c.contype NOT IN ('p', 'u', 'x')
             ORDER BY c.conname",
            &[&oid],
        )
        .await
        .context("reading pg_constraint")?;
    Ok(rows
        .iter()
        .map(|r| Constraint {
            name: r.get(0),
            kind: r.get::<_, String>(1).chars().next().unwrap_or(' '),
            definition: r.get(2),
            validated: r.get(3),
            columns: r.get(4),
            references: r.get(5),
        })
        .collect())
}

async fn sequences(client: &impl GenericClient, oid: u32) -> Result<Vec<OwnedSequence>> {
    let rows = client
        .query(
            "SELECT a.attname::text, n.nspname::text, s.relname::text, d.deptype = 'i'
             FROM pg_depend d
             JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
             JOIN pg_namespace n ON n.oid = s.relnamespace
             JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
             WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
               AND d.refobjid = $1 AND d.deptype IN ('a', 'i')
             ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .context("reading owned sequences")?;
    Ok(rows
        .iter()
        .map(|r| OwnedSequence {
            column: r.get(0),
            schema: r.get(1),
            name: r.get(2),
            identity: r.get(3),
        })
        .collect())
}

/// The query of [`fingerprint`]; `$1` is the table's OID.
const FINGERPRINT_SQL: &str = "SELECT md5(concat_ws('|',
     (SELECT string_agg(attname || ':' || atttypid || ':' || atttypmod || ':' || attnotnull
                        || ':' || attisdropped || ':' || coalesce(attacl::text, ''), ',' ORDER BY attnum)
        FROM pg_attribute WHERE attrelid = $1 AND attnum > 0),
     (SELECT string_agg(pg_get_indexdef(indexrelid), ',' ORDER BY indexrelid) FROM pg_index WHERE indrelid = $1),
     (SELECT string_agg(conname || pg_get_constraintdef(oid), ',' ORDER BY conname)
        FROM pg_constraint WHERE conrelid = $1 OR (confrelid = $1 AND conparentid = 0)),
     (SELECT string_agg(tgname, ',' ORDER BY tgname) FROM pg_trigger WHERE tgrelid = $1),
     (SELECT string_agg(rulename::text, ',' ORDER BY rulename) FROM pg_rewrite WHERE ev_class = $1),
     (SELECT string_agg(polname::text, ',' ORDER BY polname) FROM pg_policy WHERE polrelid = $1),
     (SELECT string_agg(prpubid::text, ',' ORDER BY prpubid) FROM pg_publication_rel WHERE prrelid = $1),
     (SELECT concat_ws(':', relacl::text, relreplident, reloptions::text, relrowsecurity, relname, relnamespace)
        FROM pg_class WHERE oid = $1),
     (SELECT string_agg(concat_ws(':', t.relid, pg_get_expr(c.relpartbound, c.oid),
                (SELECT string_agg(indexrelid::text, ',' ORDER BY indexrelid) FROM pg_index WHERE indrelid = t.relid),
                (SELECT string_agg(oid::text, ',' ORDER BY oid) FROM pg_constraint WHERE conrelid = t.relid)),
                ',' ORDER BY t.relid)
        FROM pg_partition_tree($1::regclass) t JOIN pg_class c ON c.oid = t.relid WHERE t.level > 0)))";

/// A fingerprint (md5) of the table's catalog state that a rename would not carry along:
/// columns, indexes, constraints (its own, and the foreign keys that reference it, but not
/// their clones on partitions, which PostgreSQL adds when a partition is created or attached
/// and which move with the key defined on the partitioned table), triggers, rules, policies,
/// grants, replica identity, reloptions, publication membership; for a partitioned table,
/// every member of its tree with its bound and the OIDs of its indexes and constraints (a
/// partition created, attached or detached changes it, docs/design.md §1.14). Compared before the shadow is built and again under the
/// cutover lock: DDL that ran on the original during the migration changes it.
pub async fn fingerprint(client: &impl GenericClient, oid: u32) -> Result<String> {
    let row = client
        .query_one(FINGERPRINT_SQL, &[&oid])
        .await
        .context("computing the catalog fingerprint")?;
    Ok(row.get(0))
}

/// [`fingerprint`] of one table, prepared and planned on one connection so that
/// [`PreparedFingerprint::compute`] on that connection only executes it (the cutover prepares
/// it before asking for its lock and computes it under the lock).
///
/// The statement is [`fingerprint`]'s SQL with the OID written in (no parameter), which makes
/// the server plan it once, at its first execution ([`PreparedFingerprint::new`] runs it), and
/// keep that plan; a statement with parameters is planned again at each of its first five
/// executions. Each execution reads the catalog afresh: the plan says how, not what.
pub struct PreparedFingerprint {
    statement: Statement,
}

impl PreparedFingerprint {
    /// Prepares the fingerprint of the table `oid` on `client`'s connection, under its
    /// current `search_path` (the definitions' text depends on it, so compute it under the
    /// same one as the fingerprint compared with), and computes it once.
    ///
    /// Errors: the statement cannot be prepared or run.
    pub async fn new(client: &impl GenericClient, oid: u32) -> Result<PreparedFingerprint> {
        // `$1` is the only placeholder in the text; the OID is an integer, safe to write in.
        let sql = FINGERPRINT_SQL.replace("$1", &format!("{oid}::oid"));
        let statement = client
            .prepare(&sql)
            .await
            .context("preparing the catalog fingerprint")?;
        let prepared = PreparedFingerprint { statement };
        prepared.compute(client).await?;
        Ok(prepared)
    }

    /// [`fingerprint`] with the prepared statement, on the connection it was prepared on (or a
    /// transaction of it): the same result, without parsing or planning.
    ///
    /// Errors: the query fails (including on another connection, where the statement does not
    /// exist).
    pub async fn compute(&self, client: &impl GenericClient) -> Result<String> {
        let row = client
            .query_one(&self.statement, &[])
            .await
            .context("computing the catalog fingerprint")?;
        Ok(row.get(0))
    }
}

/// `GRANT` statements reproducing the original's table and column grants on `target`.
pub fn grant_sql(
    table: &Table,
    target: &str,
    column_name: impl Fn(&str) -> Option<String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (grantee, privilege, grantable) in &table.grants {
        out.push(format!(
            "GRANT {privilege} ON {target} TO {grantee}{}",
            if *grantable { " WITH GRANT OPTION" } else { "" }
        ));
    }
    for (column, grantee, privilege, grantable) in &table.column_grants {
        if let Some(name) = column_name(column) {
            out.push(format!(
                "GRANT {privilege} ({}) ON {target} TO {grantee}{}",
                ident(&name),
                if *grantable { " WITH GRANT OPTION" } else { "" }
            ));
        }
    }
    out
}

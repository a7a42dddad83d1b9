//! The partition tree model and the shadow's tree (issue 15, groundwork for migrating a
//! partitioned table; a run still refuses one): for a range-partitioned table of 24 monthly
//! partitions and a default, a hash-partitioned one of 8, and a list-partitioned one with a
//! sub-partitioned member, each with indexes on the parent, an index and a CHECK of one
//! partition's own, storage parameters, comments and grants, `model::partitions::read`
//! reads the tree; `phases::shadow::partitions` builds the shadow's tree under a shadow
//! root with the ALTER applied, rows inserted through the shadow root land in the partitions
//! of the same bounds, and the cutover's renames (then the rollback's) leave a tree equal to
//! the original in every member's name, bound, key, properties and index names.

use doppel::model::names::Names;
use doppel::model::partitions::{self, PartitionTree};
use doppel::phases::shadow::partitions as shadow_tree;
use doppel::sql::{ident, qualified};
use tokio_postgres::Client;

use crate::common::{self, scalar};

const TREES: &str = "
CREATE ROLE auditor NOLOGIN;
CREATE TABLE pay (id bigint NOT NULL, at date NOT NULL, amount numeric(10,2), PRIMARY KEY (id, at))
  PARTITION BY RANGE (at);
CREATE INDEX pay_amount ON pay (amount);
DO $$ DECLARE d date; BEGIN
  FOR d IN SELECT generate_series(date '2024-01-01', date '2025-12-01', interval '1 month') LOOP
    EXECUTE format('CREATE TABLE %I PARTITION OF pay FOR VALUES FROM (%L) TO (%L)',
                   'pay_' || to_char(d, 'YYYY_MM'), d, (d + interval '1 month')::date);
  END LOOP; END $$;
CREATE TABLE pay_other PARTITION OF pay DEFAULT;
CREATE INDEX pay_2024_03_big ON pay_2024_03 (amount) WHERE amount > 100;
ALTER TABLE pay_2024_03 ADD CONSTRAINT pay_2024_03_positive CHECK (amount >= 0);
ALTER TABLE pay_2024_03 SET (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.01);
COMMENT ON TABLE pay_2024_03 IS 'march';
GRANT SELECT ON pay_2024_03 TO auditor;
INSERT INTO pay SELECT i, date '2023-12-20' + (i % 800), i % 500 FROM generate_series(1, 5000) i;

CREATE TABLE acct (id int PRIMARY KEY, amount int) PARTITION BY HASH (id);
DO $$ BEGIN FOR r IN 0..7 LOOP
  EXECUTE format('CREATE TABLE acct_%s PARTITION OF acct FOR VALUES WITH (MODULUS 8, REMAINDER %s)', r, r);
END LOOP; END $$;
CREATE UNIQUE INDEX acct_5_amount ON acct_5 (amount);
INSERT INTO acct SELECT i, i FROM generate_series(1, 1000) i;

CREATE TABLE region (id int, code text NOT NULL, amount int, PRIMARY KEY (id, code))
  PARTITION BY LIST (code);
CREATE TABLE region_eu PARTITION OF region FOR VALUES IN ('de', 'fr') PARTITION BY HASH (id);
CREATE TABLE region_eu_0 PARTITION OF region_eu FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE region_eu_1 PARTITION OF region_eu FOR VALUES WITH (MODULUS 2, REMAINDER 1);
CREATE TABLE region_us PARTITION OF region FOR VALUES IN ('us');
CREATE TABLE region_rest PARTITION OF region DEFAULT;
CREATE INDEX region_amount ON region (amount);
INSERT INTO region SELECT i, (ARRAY['de', 'fr', 'us', 'jp'])[1 + i % 4], i FROM generate_series(1, 400) i;
";

/// Runs every statement, naming the one that fails.
async fn run_all(client: &Client, statements: &[String]) {
    for s in statements {
        if let Err(e) = client.batch_execute(s).await {
            panic!("{s}: {e:?}");
        }
    }
}

/// The tree without OIDs: what must be equal after the swap.
fn shape(tree: &PartitionTree) -> Vec<String> {
    let parent = |oid: u32| {
        tree.members
            .iter()
            .find(|m| m.oid == oid)
            .map_or("root".to_string(), |m| m.name.clone())
    };
    let mut out = vec![tree.key.clone()];
    for m in &tree.members {
        let mut m = m.clone();
        let p = parent(m.parent_oid);
        (m.oid, m.parent_oid) = (0, 0);
        out.push(format!("{p} > {m:?}"));
    }
    out
}

/// The rows per partition name: (partition, rows).
async fn rows_by_partition(client: &Client, root: &str) -> Vec<(String, i64)> {
    client
        .query(
            &format!("SELECT tableoid::regclass::text, count(*) FROM {root} GROUP BY 1 ORDER BY 1"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The root's indexes on the shadow root under temporary names (the shadow phase's job):
/// (temporary name, final name) by the original index's name.
async fn root_indexes(
    client: &Client,
    names: &Names,
    oid: u32,
    root: &str,
) -> Vec<(String, String)> {
    let shadow_root = names.shadow_qualified();
    let root_indexes: Vec<(String, String)> = client
        .query(
            "SELECT c.relname::text, pg_get_indexdef(i.indexrelid) FROM pg_index i
             JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = $1::oid ORDER BY 1",
            &[&oid],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut temp_to_final = Vec::new();
    for (k, (name, def)) in root_indexes.iter().enumerate() {
        let temp = names.shadow_index(oid, k);
        let sql = doppel::preflight::rename_index_definition(
            def,
            &format!("ONLY public.{root}"),
            &temp,
            &shadow_root,
        )
        .unwrap();
        client.batch_execute(&sql).await.unwrap();
        temp_to_final.push((temp, name.clone()));
    }
    temp_to_final
}

/// Builds the shadow of `root` (ALTER applied to the shadow root), fills it through the
/// shadow root, swaps it in the way a cutover would, checks the tree, then swaps back.
async fn swap_and_back(client: &Client, root: &str, alter: &str) {
    let oid = common::oid_of(client, &format!("public.{root}")).await;
    let names = Names::new("public", root, oid);
    let original = partitions::read(client, oid).await.unwrap();
    let rows_before = rows_by_partition(client, root).await;
    let shadow_root = names.shadow_qualified();
    let table = qualified("public", root);
    client
        .batch_execute(&format!(
            "CREATE TABLE {shadow_root} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
               PARTITION BY {};
             ALTER TABLE {shadow_root} {alter}",
            original.key
        ))
        .await
        .unwrap();
    run_all(
        client,
        &shadow_tree::create_sql(&original, &names, &shadow_root),
    )
    .await;
    let temp_to_final = root_indexes(client, &names, oid, root).await;
    run_all(client, &shadow_tree::index_sql(&original, &names, false)).await;
    run_all(client, &shadow_tree::index_sql(&original, &names, true)).await;
    let columns: Vec<String> = client
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::oid AND attnum > 0
             AND NOT attisdropped ORDER BY attnum",
            &[&oid],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| ident(&r.get::<_, String>(0)))
        .collect();
    let columns = columns.join(", ");
    client
        .batch_execute(&format!(
            "INSERT INTO {shadow_root} ({columns}) SELECT {columns} FROM {table}"
        ))
        .await
        .unwrap();
    let shadow_oid = common::oid_of(client, &shadow_root).await;
    let shadow = partitions::read(client, shadow_oid).await.unwrap();
    let (forward, back) = shadow_tree::renames(&original, &shadow, &names, |temp| {
        temp_to_final
            .iter()
            .find(|(t, _)| t == temp)
            .map_or(temp.to_string(), |(_, f)| f.clone())
    });

    // The cutover's renames: the roots and their indexes, then the members.
    let tx_sql = |statements: Vec<String>| format!("BEGIN;\n{};\nCOMMIT;", statements.join(";\n"));
    let mut swap = vec![format!(
        "ALTER TABLE {table} RENAME TO {}",
        ident(&names.old)
    )];
    let mut unswap = Vec::new();
    for (k, (_, name)) in temp_to_final.iter().enumerate() {
        let kept = names.old_index(oid, k);
        swap.push(format!(
            "ALTER INDEX public.{} RENAME TO {}",
            ident(name),
            ident(&kept)
        ));
    }
    swap.push(format!(
        "ALTER TABLE {shadow_root} RENAME TO {}",
        ident(root)
    ));
    for (temp, name) in &temp_to_final {
        swap.push(format!(
            "ALTER INDEX public.{} RENAME TO {}",
            ident(temp),
            ident(name)
        ));
        unswap.push(format!(
            "ALTER INDEX public.{} RENAME TO {}",
            ident(name),
            ident(temp)
        ));
    }
    swap.extend(forward);
    client.batch_execute(&tx_sql(swap)).await.unwrap();

    let swapped = partitions::read(client, shadow_oid).await.unwrap();
    assert_eq!(
        shape(&swapped),
        shape(&original),
        "{root}: the new tree has the original's shape"
    );
    assert_eq!(
        rows_by_partition(client, root).await,
        rows_before,
        "{root}: rows per partition"
    );
    assert_eq!(
        scalar(
            client,
            &format!("SELECT count(*) FROM pg_class WHERE relname LIKE '\\_doppel\\_{oid}\\_new%'")
        )
        .await,
        0,
        "{root}: no shadow name left"
    );

    // The rollback's renames.
    let mut undo = vec![format!(
        "ALTER TABLE {table} RENAME TO {}",
        ident(&names.shadow)
    )];
    undo.extend(unswap);
    undo.extend(back);
    undo.push(format!(
        "ALTER TABLE {} RENAME TO {}",
        qualified("public", &names.old),
        ident(root)
    ));
    for (k, (_, name)) in temp_to_final.iter().enumerate() {
        undo.push(format!(
            "ALTER INDEX public.{} RENAME TO {}",
            ident(&names.old_index(oid, k)),
            ident(name)
        ));
    }
    client.batch_execute(&tx_sql(undo)).await.unwrap();
    assert_eq!(
        partitions::read(client, oid).await.unwrap(),
        original,
        "{root}: restored"
    );
    assert_eq!(
        partitions::read(client, shadow_oid).await.unwrap(),
        shadow,
        "{root}: the shadow is back under its names"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_trees_take_the_original_shape_and_names() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client.batch_execute(TREES).await.unwrap();

    let pay = partitions::read(&client, common::oid_of(&client, "public.pay").await)
        .await
        .unwrap();
    assert_eq!(pay.key, "RANGE (at)");
    assert_eq!(pay.members.len(), 25);
    assert_eq!(pay.members[24].bound, "DEFAULT");
    let march = pay
        .members
        .iter()
        .find(|m| m.name == "pay_2024_03")
        .unwrap();
    assert_eq!(
        march.bound,
        "FOR VALUES FROM ('2024-03-01') TO ('2024-04-01')"
    );
    assert_eq!(march.local_indexes.len(), 1);
    assert_eq!(march.checks.len(), 1);
    assert_eq!(march.comment.as_deref(), Some("march"));
    assert_eq!(
        march.grants,
        vec![("auditor".to_string(), "SELECT".to_string(), false)]
    );
    assert_eq!(
        march.attached_indexes.len(),
        2,
        "{:?}",
        march.attached_indexes
    );
    let region = partitions::read(&client, common::oid_of(&client, "public.region").await)
        .await
        .unwrap();
    let eu = region
        .members
        .iter()
        .find(|m| m.name == "region_eu")
        .unwrap();
    assert_eq!(eu.key.as_deref(), Some("HASH (id)"));
    assert_eq!(region.leaves().count(), 4);

    swap_and_back(
        &client,
        "pay",
        "ALTER COLUMN amount TYPE numeric(12,2), ADD COLUMN note text",
    )
    .await;
    swap_and_back(&client, "acct", "ALTER COLUMN amount TYPE bigint").await;
    swap_and_back(&client, "region", "ADD COLUMN note text").await;
}

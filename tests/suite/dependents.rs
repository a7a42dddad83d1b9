//! Integration tests of `doppel::dependents` against a real server: a table with every kind of
//! dependent bound to its OID (inbound foreign keys from two children, a view and a view on
//! that view with owners, options, grants to two roles and comments, a trigger with a side
//! effect, a rule, RLS policies and a policy of another table that reads it, extended
//! statistics, publications with a row filter and a column list, REPLICA IDENTITY FULL, TOAST
//! reloptions) goes through a simulated cutover (new table, renames, `forward()`, commit,
//! `forward_after_commit()`) and a simulated rollback, and after each step behaves as before.
//! `blockers()` is tested on dependents that cannot be moved.
//!
//! Each test starts its own private PostgreSQL cluster (`common::cluster`).

use doppel::dependents::{self, Dependents};
use doppel::model::names::Names;
use tokio_postgres::Client;

use crate::common::{self, fails, oid_of, scalar, text};

const SCHEMA: &str = "
CREATE ROLE app NOLOGIN;
CREATE ROLE reader_a NOLOGIN;
CREATE ROLE reader_b NOLOGIN;
CREATE ROLE tenant NOLOGIN;
CREATE TABLE public.t (id bigint PRIMARY KEY, tenant text NOT NULL, amount int NOT NULL, note text);
COMMENT ON TABLE public.t IS 'the table';
ALTER TABLE public.t REPLICA IDENTITY FULL;
ALTER TABLE public.t SET (toast.autovacuum_vacuum_threshold = 1234);
GRANT SELECT ON public.t TO app;
GRANT SELECT, INSERT ON public.t TO tenant;
CREATE TABLE public.audit (n bigserial PRIMARY KEY, op text NOT NULL, id bigint);
CREATE FUNCTION public.audit_fn() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = public AS $$
BEGIN
  INSERT INTO audit (op, id) VALUES (TG_OP, CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END);
  RETURN NULL;
END $$;
CREATE TRIGGER t_audit AFTER INSERT OR UPDATE OR DELETE ON public.t
  FOR EACH ROW EXECUTE FUNCTION public.audit_fn();
CREATE RULE t_log_delete AS ON DELETE TO public.t
  DO ALSO INSERT INTO public.audit (op, id) VALUES ('rule', OLD.id);
CREATE TABLE public.child_a (id int PRIMARY KEY, t_id bigint REFERENCES public.t (id));
CREATE TABLE public.child_b (id int PRIMARY KEY, t_id bigint,
  CONSTRAINT child_b_t FOREIGN KEY (t_id) REFERENCES public.t (id) ON DELETE CASCADE);
CREATE VIEW public.v WITH (security_barrier) AS SELECT id, tenant, amount FROM public.t WHERE amount > 0;
CREATE VIEW public.vv AS SELECT id, amount FROM public.v WHERE amount < 100000 WITH LOCAL CHECK OPTION;
ALTER VIEW public.v OWNER TO app;
ALTER VIEW public.vv OWNER TO app;
GRANT SELECT ON public.v TO reader_a, reader_b;
GRANT SELECT ON public.vv TO reader_b;
GRANT SELECT (id) ON public.vv TO reader_a;
COMMENT ON VIEW public.v IS 'positive amounts';
COMMENT ON COLUMN public.v.amount IS 'the amount';
ALTER TABLE public.t ENABLE ROW LEVEL SECURITY;
CREATE POLICY app_all ON public.t TO app USING (true);
CREATE POLICY tenant_rows ON public.t FOR SELECT TO tenant USING (tenant = current_user);
CREATE POLICY tenant_insert ON public.t FOR INSERT TO tenant WITH CHECK (tenant = current_user);
CREATE POLICY no_negative ON public.t AS RESTRICTIVE FOR INSERT TO tenant WITH CHECK (amount >= 0);
GRANT SELECT ON public.child_a TO app;
ALTER TABLE public.child_a ENABLE ROW LEVEL SECURITY;
CREATE POLICY child_a_known ON public.child_a TO app
  USING (EXISTS (SELECT 1 FROM public.t WHERE t.id = child_a.t_id));
CREATE STATISTICS public.t_stats (dependencies) ON tenant, amount FROM public.t;
COMMENT ON STATISTICS public.t_stats IS 'tenant and amount';
INSERT INTO public.t
  SELECT g, CASE WHEN g % 2 = 0 THEN 'tenant' ELSE 'other' END, g * 10, 'n' FROM generate_series(1, 20) g;
INSERT INTO public.child_a VALUES (1, 1), (2, 2);
INSERT INTO public.child_b VALUES (1, 3), (2, 4);
";

/// The publications: with a row filter and a column list from PostgreSQL 15 on (the syntax
/// does not exist before).
fn publications(pg15: bool) -> &'static str {
    if pg15 {
        "CREATE PUBLICATION pub FOR TABLE public.t WHERE (amount > 10);
         CREATE PUBLICATION pub_cols FOR TABLE public.t (id, amount) WITH (publish = 'insert');"
    } else {
        "CREATE PUBLICATION pub FOR TABLE public.t;
         CREATE PUBLICATION pub_cols FOR TABLE public.t WITH (publish = 'insert');"
    }
}

/// Runs `statements` one by one in `client`'s current transaction, naming the failing one.
async fn run_all(client: &impl tokio_postgres::GenericClient, statements: &[String]) {
    for s in statements {
        if let Err(e) = client.batch_execute(s).await {
            panic!("statement failed: {s}\n{e:?}");
        }
    }
}

/// Simulates doppel's cutover: under the locks, a new table with `prepare` applied to it
/// (the shadow's DDL), filled from the original; renames; `forward()`; commit;
/// `forward_after_commit()`.
async fn cutover(client: &mut Client, deps: &Dependents, names: &Names, prepare: &str) {
    let table = names.table_qualified();
    let shadow = names.shadow_qualified();
    let tx = client.transaction().await.unwrap();
    tx.batch_execute("SET LOCAL lock_timeout = '60s'")
        .await
        .unwrap();
    run_all(&tx, &deps.lock_sql()).await;
    tx.batch_execute(&format!(
        "LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE;
         CREATE TABLE {shadow} (LIKE {table} INCLUDING ALL EXCLUDING STATISTICS);
         {prepare}
         INSERT INTO {shadow} SELECT * FROM {table};
         ALTER TABLE {table} RENAME TO {};
         ALTER TABLE {shadow} RENAME TO {};",
        doppel::sql::ident(&names.old),
        doppel::sql::ident(&names.table),
    ))
    .await
    .unwrap();
    run_all(&tx, &deps.forward(names)).await;
    tx.commit().await.unwrap();
    run_all(&*client, &deps.forward_after_commit(names)).await;
}

/// Simulates the rollback script: the new table back to the shadow name, the old one back to
/// the original name, `rollback()`, commit, `rollback_after_commit()`.
async fn rollback(client: &mut Client, deps: &Dependents, names: &Names) {
    let table = names.table_qualified();
    let old = names.old_qualified();
    let tx = client.transaction().await.unwrap();
    tx.batch_execute("SET LOCAL lock_timeout = '60s'")
        .await
        .unwrap();
    run_all(&tx, &deps.lock_sql()).await;
    tx.batch_execute(&format!(
        "LOCK TABLE {table}, {old} IN ACCESS EXCLUSIVE MODE;
         ALTER TABLE {table} RENAME TO {};
         ALTER TABLE {old} RENAME TO {};",
        doppel::sql::ident(&names.shadow),
        doppel::sql::ident(&names.table),
    ))
    .await
    .unwrap();
    run_all(&tx, &deps.rollback(names)).await;
    tx.commit().await.unwrap();
    run_all(&*client, &deps.rollback_after_commit(names)).await;
}

/// Checks every dependent is bound to the relation `public.t` has now (OID `bound`), and
/// behaves: views return its rows, foreign keys reject orphans, policies filter, grants
/// allow, the trigger fires once per write on it and never on `other` (the other table of
/// the pair), publications list it with their filter and column list.
async fn assert_wired(client: &Client, bound: u32, other: &str, amount_type: &str, pg15: bool) {
    assert_eq!(oid_of(client, "public.t").await, bound);
    let rows = assert_views_wired(client, bound, other, amount_type).await;
    assert_view_grants(client, rows).await;
    assert_trigger_and_rule_wired(client, other).await;
    assert_policies_wired(client).await;
    assert_foreign_keys_wired(client, bound).await;
    assert_publications_wired(client, bound, pg15).await;
    assert_identity_and_statistics_wired(client, bound).await;
}

/// [`assert_wired`], the views: bound to the table (OID `bound`, not `other`), of the new
/// column type, with owner, options and comments, returning the table's rows; how many.
async fn assert_views_wired(client: &Client, bound: u32, other: &str, amount_type: &str) -> i64 {
    // Views: bound to the table, of the new column type, with owner, options, comments.
    for view in ["public.v", "public.vv"] {
        assert_eq!(
            text(
                client,
                &format!("SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE oid = '{view}'::regclass")
            )
            .await
            .as_deref(),
            Some("app"),
            "{view} owner"
        );
    }
    let view_refs = |relation: String| {
        format!(
            "SELECT count(*) FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
             WHERE r.ev_class = 'public.v'::regclass AND d.refclassid = 'pg_class'::regclass
               AND d.refobjid = {relation}"
        )
    };
    assert!(scalar(client, &view_refs(bound.to_string())).await > 0);
    assert_eq!(
        scalar(client, &view_refs(format!("'{other}'::regclass::oid"))).await,
        0,
        "v is bound to the table, not to {other}"
    );
    assert_eq!(
        text(
            client,
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'public.vv'::regclass AND attname = 'amount'"
        )
        .await
        .as_deref(),
        Some(amount_type)
    );
    assert_eq!(
        text(
            client,
            "SELECT array_to_string(reloptions, ',') FROM pg_class WHERE oid = 'public.v'::regclass"
        )
        .await
        .as_deref(),
        Some("security_barrier=true")
    );
    assert_eq!(
        text(client, "SELECT array_to_string(reloptions, ',') FROM pg_class WHERE oid = 'public.vv'::regclass").await.as_deref(),
        Some("check_option=local")
    );
    assert_eq!(
        text(
            client,
            "SELECT obj_description('public.v'::regclass, 'pg_class')"
        )
        .await
        .as_deref(),
        Some("positive amounts")
    );
    assert_eq!(
        text(client, "SELECT col_description('public.v'::regclass, 3)")
            .await
            .as_deref(),
        Some("the amount")
    );
    let rows = scalar(client, "SELECT count(*) FROM public.t WHERE amount > 0").await;
    assert_eq!(scalar(client, "SELECT count(*) FROM public.v").await, rows);
    assert_eq!(scalar(client, "SELECT count(*) FROM public.vv").await, rows);
    let max_id = scalar(client, "SELECT max(id) FROM public.t").await;
    assert_eq!(
        scalar(client, "SELECT max(id) FROM public.vv").await,
        max_id
    );
    rows
}

/// [`assert_wired`], the grants on the views, to two roles (`rows`: what the views show).
async fn assert_view_grants(client: &Client, rows: i64) {
    // Grants on the views, to two roles (views run as their owner `app`, whom a policy lets
    // see every row).
    client.batch_execute("SET ROLE reader_a").await.unwrap();
    assert_eq!(scalar(client, "SELECT count(*) FROM public.v").await, rows);
    assert_eq!(
        scalar(client, "SELECT count(id) FROM public.vv").await,
        rows
    );
    assert_eq!(fails(client, "SELECT amount FROM public.vv").await, "42501");
    client.batch_execute("RESET ROLE").await.unwrap();
    client.batch_execute("SET ROLE reader_b").await.unwrap();
    assert_eq!(scalar(client, "SELECT count(*) FROM public.vv").await, rows);
    assert_eq!(scalar(client, "SELECT count(*) FROM public.v").await, rows);
    assert_eq!(fails(client, "SELECT 1 FROM public.t").await, "42501");
    client.batch_execute("RESET ROLE").await.unwrap();
}

/// [`assert_wired`], the trigger and the rule: they fire once per write on the table, never
/// on `other`.
async fn assert_trigger_and_rule_wired(client: &Client, other: &str) {
    // The trigger fires once per write on the table, never on the other one; the rule too.
    let audit = "SELECT count(*) FROM public.audit";
    let before = scalar(client, audit).await;
    let mark = scalar(client, "SELECT coalesce(max(n), 0) FROM public.audit").await;
    client
        .batch_execute("INSERT INTO public.t VALUES (1000, 'other', 5, 'x')")
        .await
        .unwrap();
    assert_eq!(scalar(client, audit).await, before + 1, "trigger on insert");
    client
        .batch_execute("UPDATE public.t SET note = 'y' WHERE id = 1000")
        .await
        .unwrap();
    assert_eq!(scalar(client, audit).await, before + 2, "trigger on update");
    client
        .batch_execute(&format!(
            "INSERT INTO {other} VALUES (1001, 'other', 5, 'x'); UPDATE {other} SET note = 'z' WHERE id = 1001; DELETE FROM {other} WHERE id = 1001"
        ))
        .await
        .unwrap();
    assert_eq!(
        scalar(client, audit).await,
        before + 2,
        "nothing fires on {other}"
    );
    client
        .batch_execute("DELETE FROM public.t WHERE id = 1000")
        .await
        .unwrap();
    assert_eq!(
        scalar(client, audit).await,
        before + 4,
        "a delete fires the trigger and the rule once each"
    );
    assert_eq!(
        scalar(
            client,
            &format!(
                "SELECT count(*) FROM public.audit WHERE n > {mark} AND id = 1000
                 AND op IN ('INSERT', 'UPDATE', 'DELETE', 'rule')"
            )
        )
        .await,
        4
    );
    for (relation, expected) in [("public.t", 1), (other, 0)] {
        assert_eq!(
            scalar(
                client,
                &format!("SELECT count(*) FROM pg_trigger WHERE tgrelid = '{relation}'::regclass AND NOT tgisinternal")
            )
            .await,
            expected,
            "user triggers on {relation}"
        );
        assert_eq!(
            scalar(
                client,
                &format!("SELECT count(*) FROM pg_rewrite WHERE ev_class = '{relation}'::regclass")
            )
            .await,
            expected,
            "rules on {relation}"
        );
        assert_eq!(
            scalar(
                client,
                &format!("SELECT count(*) FROM pg_policy WHERE polrelid = '{relation}'::regclass")
            )
            .await,
            4 * expected,
            "policies on {relation}"
        );
    }
}

/// [`assert_wired`], the RLS policies of the table.
async fn assert_policies_wired(client: &Client) {
    // Policies filter for a non-owner role; the restrictive one still restricts.
    let tenant_rows = scalar(
        client,
        "SELECT count(*) FROM public.t WHERE tenant = 'tenant'",
    )
    .await;
    assert!(tenant_rows > 0);
    client.batch_execute("SET ROLE tenant").await.unwrap();
    assert_eq!(
        scalar(client, "SELECT count(*) FROM public.t").await,
        tenant_rows
    );
    assert_eq!(
        fails(
            client,
            "INSERT INTO public.t VALUES (2000, 'tenant', -1, 'x')"
        )
        .await,
        "42501",
        "restrictive policy"
    );
    assert_eq!(
        fails(
            client,
            "INSERT INTO public.t VALUES (2000, 'other', 1, 'x')"
        )
        .await,
        "42501",
        "WITH CHECK"
    );
    client
        .batch_execute("INSERT INTO public.t VALUES (2000, 'tenant', 1, 'x')")
        .await
        .unwrap();
    assert_eq!(
        scalar(client, "SELECT count(*) FROM public.t").await,
        tenant_rows + 1
    );
    client.batch_execute("RESET ROLE").await.unwrap();
    assert_eq!(
        text(
            client,
            "SELECT relrowsecurity::text FROM pg_class WHERE oid = 'public.t'::regclass"
        )
        .await
        .as_deref(),
        Some("true")
    );
}

/// [`assert_wired`], the inbound foreign keys (to OID `bound`) and the other table's policy
/// that reads this one.
async fn assert_foreign_keys_wired(client: &Client, bound: u32) {
    // Foreign keys: bound to the table, validated, rejecting orphans in each child, and the
    // cascade works.
    assert_eq!(
        scalar(
            client,
            &format!(
                "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND confrelid = {bound} AND convalidated
                 AND conrelid IN ('public.child_a'::regclass, 'public.child_b'::regclass)"
            )
        )
        .await,
        2
    );
    assert_eq!(
        fails(client, "INSERT INTO public.child_a VALUES (100, 99999)").await,
        "23503"
    );
    assert_eq!(
        fails(client, "INSERT INTO public.child_b VALUES (100, 99999)").await,
        "23503"
    );
    client
        .batch_execute("INSERT INTO public.child_a VALUES (100, 2000); INSERT INTO public.child_b VALUES (100, 2000)")
        .await
        .unwrap();
    client
        .batch_execute(
            "DELETE FROM public.child_a WHERE id = 100; DELETE FROM public.t WHERE id = 2000",
        )
        .await
        .unwrap();
    assert_eq!(
        scalar(client, "SELECT count(*) FROM public.child_b WHERE id = 100").await,
        0,
        "ON DELETE CASCADE"
    );

    // The other table's policy reads this table: a child row is visible to `app` exactly
    // when its parent exists here.
    client
        .batch_execute(
            "INSERT INTO public.t VALUES (3000, 'other', 1, 'x'); INSERT INTO public.child_a VALUES (300, 3000)",
        )
        .await
        .unwrap();
    let children = scalar(client, "SELECT count(*) FROM public.child_a").await;
    client.batch_execute("SET ROLE app").await.unwrap();
    assert_eq!(
        scalar(client, "SELECT count(*) FROM public.child_a").await,
        children
    );
    client.batch_execute("RESET ROLE").await.unwrap();
    client
        .batch_execute(
            "DELETE FROM public.child_a WHERE id = 300; DELETE FROM public.t WHERE id = 3000",
        )
        .await
        .unwrap();
}

/// [`assert_wired`], the publications (row filter and column list from PostgreSQL 15).
async fn assert_publications_wired(client: &Client, bound: u32, pg15: bool) {
    // Publications: the table with its row filter and column list (PostgreSQL 15+).
    let (filter, attrs) = if pg15 {
        ("pg_get_expr(pr.prqual, pr.prrelid)", "pr.prattrs::text")
    } else {
        ("NULL::text", "NULL::text")
    };
    let row = client
        .query_one(
            &format!(
                "SELECT pr.prrelid, {filter} FROM pg_publication_rel pr
                 JOIN pg_publication p ON p.oid = pr.prpubid WHERE p.pubname = 'pub'"
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, u32>(0), bound);
    if pg15 {
        assert_eq!(row.get::<_, String>(1), "(amount > 10)");
    }
    let row = client
        .query_one(
            &format!(
                "SELECT pr.prrelid, {attrs} FROM pg_publication_rel pr
                 JOIN pg_publication p ON p.oid = pr.prpubid WHERE p.pubname = 'pub_cols'"
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, u32>(0), bound);
    if pg15 {
        assert_eq!(row.get::<_, String>(1), "1 3");
    }
    assert_eq!(
        scalar(
            client,
            "SELECT count(*) FROM pg_publication_tables WHERE pubname IN ('pub', 'pub_cols')
             AND schemaname = 'public' AND tablename = 't'"
        )
        .await,
        2
    );
}

/// [`assert_wired`], the replica identity and the extended statistics.
async fn assert_identity_and_statistics_wired(client: &Client, bound: u32) {
    // Replica identity and extended statistics.
    assert_eq!(
        text(
            client,
            "SELECT relreplident::text FROM pg_class WHERE oid = 'public.t'::regclass"
        )
        .await
        .as_deref(),
        Some("f")
    );
    let row = client
        .query_one(
            "SELECT stxrelid, obj_description(oid, 'pg_statistic_ext') FROM pg_statistic_ext WHERE stxname = 't_stats'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, u32>(0), bound);
    assert_eq!(
        row.get::<_, Option<String>>(1).as_deref(),
        Some("tenant and amount")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_every_dependent_and_back() {
    let cluster = common::cluster().await;
    let mut client = cluster.connect("postgres").await.unwrap();
    let pg15 = cluster.server_version_num() >= 150000;
    client.batch_execute(SCHEMA).await.unwrap();
    client.batch_execute(publications(pg15)).await.unwrap();
    let original = oid_of(&client, "public.t").await;
    let names = Names::new("public", "t", original);
    // doppel's own publication is not a dependent to move.
    client
        .batch_execute(&format!(
            "CREATE PUBLICATION {} FOR TABLE public.t",
            doppel::sql::ident(&names.publication)
        ))
        .await
        .unwrap();
    // The search_path of the session is left as it was.
    client
        .batch_execute("SET search_path = public, pg_temp")
        .await
        .unwrap();

    let deps = dependents::read(&client, original, &names.publication)
        .await
        .unwrap();
    assert_eq!(
        text(&client, "SELECT current_setting('search_path')")
            .await
            .as_deref(),
        Some("public, pg_temp")
    );
    client.batch_execute("RESET search_path").await.unwrap();
    let again = dependents::read(&client, original, &names.publication)
        .await
        .unwrap();
    assert_eq!(deps, again, "two reads of an unchanged catalog are equal");

    assert_eq!(deps.foreign_keys.len(), 2, "{:#?}", deps.foreign_keys);
    assert!(deps.foreign_keys.iter().all(|f| f.validated));
    assert_eq!(
        deps.views
            .iter()
            .map(|v| (v.name.as_str(), v.depth))
            .collect::<Vec<_>>(),
        vec![("v", 1), ("vv", 2)]
    );
    assert_eq!(deps.views[0].grants.len(), 2);
    assert_eq!(deps.views[1].grants.len(), 2);
    assert_eq!(deps.triggers.len(), 1);
    assert_eq!(deps.rules.len(), 1);
    assert_eq!(deps.policies.len(), 4);
    assert_eq!(deps.other_policies.len(), 1);
    assert!(deps.row_security && !deps.force_row_security);
    assert_eq!(
        deps.publications
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        vec!["pub", "pub_cols"]
    );
    assert_eq!(deps.replica_identity, 'f');
    assert_eq!(deps.statistics.len(), 1);
    assert_eq!(
        deps.toast_reloptions,
        vec!["autovacuum_vacuum_threshold=1234".to_string()]
    );
    assert!(
        deps.unsupported.is_empty(),
        "unexpected: {:#?}",
        deps.unsupported
    );
    assert!(deps.blockers(&[], &[]).is_empty());
    // `note` is used by no dependent; `tenant` by the view and the policies.
    assert!(deps.blockers(&[], &["note".to_string()]).is_empty());
    let blocked = deps.blockers(&[("tenant".to_string(), "owner".to_string())], &[]);
    assert!(
        blocked.iter().any(|b| b.contains("view \"public\".\"v\"")),
        "{blocked:#?}"
    );
    assert!(
        blocked.iter().any(|b| b.contains("policy tenant_rows")),
        "{blocked:#?}"
    );
    assert_eq!(
        deps.lock_sql(),
        vec![
            "LOCK TABLE \"public\".\"child_a\", \"public\".\"child_b\" IN ACCESS EXCLUSIVE MODE",
            "ALTER VIEW \"public\".\"vv\" OWNER TO \"app\"",
            "ALTER VIEW \"public\".\"v\" OWNER TO \"app\""
        ]
    );

    // Cutover, with a column type change that CREATE OR REPLACE VIEW would refuse.
    let shadow = names.shadow_qualified();
    cutover(
        &mut client,
        &deps,
        &names,
        &format!(
            "ALTER TABLE {shadow} ALTER COLUMN amount TYPE bigint;
             GRANT SELECT ON {shadow} TO app; GRANT SELECT, INSERT ON {shadow} TO tenant;"
        ),
    )
    .await;
    let new = oid_of(&client, "public.t").await;
    assert_ne!(new, original);
    assert_wired(&client, new, &names.old_qualified(), "bigint", pg15).await;
    assert_eq!(
        text(
            &client,
            "SELECT array_to_string(t.reloptions, ',') FROM pg_class c JOIN pg_class t ON t.oid = c.reltoastrelid
             WHERE c.oid = 'public.t'::regclass"
        )
        .await
        .as_deref(),
        Some("autovacuum_vacuum_threshold=1234")
    );
    // doppel's own publication stays with the old table (cleanup drops it).
    assert_eq!(
        scalar(
            &client,
            &format!(
                "SELECT count(*) FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                 WHERE p.pubname = '{}' AND pr.prrelid = {original}",
                names.publication
            )
        )
        .await,
        1
    );
    // A row only the new table has.
    client
        .batch_execute("INSERT INTO public.t VALUES (500, 'tenant', 7, 'new')")
        .await
        .unwrap();
    assert_eq!(
        scalar(&client, "SELECT count(*) FROM public.vv WHERE id = 500").await,
        1
    );

    // Rollback: the original takes its name and its dependents back.
    rollback(&mut client, &deps, &names).await;
    assert_wired(
        &client,
        original,
        &names.shadow_qualified(),
        "integer",
        pg15,
    )
    .await;
    assert_eq!(
        scalar(&client, "SELECT count(*) FROM public.vv WHERE id = 500").await,
        0,
        "writes after the cutover are not in the old table"
    );
    assert_eq!(
        fails(&client, "INSERT INTO public.child_a VALUES (500, 500)").await,
        "23503"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blockers_name_what_cannot_move() {
    let cluster = common::cluster().await;
    let mut client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE public.parent (id int PRIMARY KEY);
             INSERT INTO public.parent VALUES (1);
             CREATE TABLE public.t (id bigint PRIMARY KEY, note text, amount int CHECK (amount > 0),
                                    parent_id int DEFAULT 1 REFERENCES public.parent, n serial);
             CREATE INDEX t_amount ON public.t (amount);
             INSERT INTO public.t (id, note, amount) SELECT g, 'n', g FROM generate_series(1, 10) g;
             CREATE FUNCTION public.noop() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NULL; END';
             CREATE CONSTRAINT TRIGGER ct AFTER INSERT ON public.parent FROM public.t
               FOR EACH ROW EXECUTE FUNCTION public.noop();
             CREATE VIEW public.vn AS SELECT id, note FROM public.t;
             CREATE FUNCTION public.f() RETURNS bigint BEGIN ATOMIC SELECT count(*) FROM public.t; END;
             CREATE MATERIALIZED VIEW public.mv AS SELECT id, amount FROM public.t;
             CREATE UNIQUE INDEX mv_id ON public.mv (id);
             CREATE FUNCTION public.rows_of() RETURNS SETOF public.t LANGUAGE sql AS 'SELECT * FROM public.t';",
        )
        .await
        .unwrap();
    let oid = oid_of(&client, "public.t").await;
    let names = Names::new("public", "t", oid);
    let deps = dependents::read(&client, oid, &names.publication)
        .await
        .unwrap();
    let always = deps.blockers(&[], &[]);
    assert!(
        always
            .iter()
            .any(|b| b.contains("function public.f()") && b.contains("SQL-standard body")),
        "{always:#?}"
    );
    assert!(
        always
            .iter()
            .any(|b| b.contains("function public.rows_of()") && b.contains("row type")),
        "{always:#?}"
    );
    assert!(
        !always.iter().any(|b| b.contains("\"public\".\"mv\"")),
        "a materialized view on the table alone is movable: {always:#?}"
    );
    assert!(
        always
            .iter()
            .any(|b| b.contains("trigger ct on table public.parent")),
        "{always:#?}"
    );
    // The table's own foreign key, serial, CHECK and index are not dependents to report.
    assert_eq!(always.len(), 3, "{always:#?}");

    let dropped = deps.blockers(&[], &["note".to_string()]);
    let about_vn: Vec<&String> = dropped
        .iter()
        .filter(|b| b.contains("\"public\".\"vn\""))
        .collect();
    assert_eq!(about_vn.len(), 1, "{dropped:#?}");
    assert!(
        about_vn[0].contains("column note") && about_vn[0].contains("drops"),
        "{about_vn:?}"
    );
    let renamed = deps.blockers(&[("note".to_string(), "memo".to_string())], &[]);
    assert!(
        renamed
            .iter()
            .any(|b| b.contains("\"public\".\"vn\"") && b.contains("renames to memo")),
        "{renamed:#?}"
    );
    // A column used only by the materialized view.
    let amount = deps.blockers(&[], &["amount".to_string()]);
    assert_eq!(amount.len(), 4, "{amount:#?}");
    assert!(
        amount
            .iter()
            .any(|b| b.contains("materialized view \"public\".\"mv\" uses column amount")),
        "{amount:#?}"
    );

    // The blockers are real: after a cutover the SQL-body function still counts the old
    // table. The materialized view is rebuilt (with its index) by forward_after_commit().
    cutover(&mut client, &deps, &names, "").await;
    client
        .batch_execute("INSERT INTO public.t (id, note, amount) VALUES (11, 'n', 11)")
        .await
        .unwrap();
    assert_eq!(scalar(&client, "SELECT public.f()").await, 10);
    assert_eq!(scalar(&client, "SELECT count(*) FROM public.vn").await, 11);
    assert_eq!(scalar(&client, "SELECT count(*) FROM public.mv").await, 10);
    client
        .batch_execute("REFRESH MATERIALIZED VIEW CONCURRENTLY public.mv")
        .await
        .unwrap();
    assert_eq!(scalar(&client, "SELECT count(*) FROM public.mv").await, 11);
}

const MATVIEW_SCHEMA: &str = "
CREATE ROLE app NOLOGIN;
CREATE ROLE reader NOLOGIN;
CREATE TABLE public.t (id bigint PRIMARY KEY, amount int NOT NULL, note text);
GRANT SELECT ON public.t TO app;
INSERT INTO public.t SELECT g, g * 10, 'n' FROM generate_series(1, 20) g;
CREATE MATERIALIZED VIEW public.mv WITH (autovacuum_enabled = false) AS
  SELECT id, amount, note, current_user::text AS built_by FROM public.t WHERE amount > 50;
CREATE UNIQUE INDEX mv_id ON public.mv (id);
CREATE INDEX mv_big ON public.mv (amount) WHERE amount > 100;
COMMENT ON INDEX public.mv_big IS 'large amounts';
ALTER MATERIALIZED VIEW public.mv CLUSTER ON mv_id;
ALTER MATERIALIZED VIEW public.mv OWNER TO app;
GRANT SELECT ON public.mv TO reader;
COMMENT ON MATERIALIZED VIEW public.mv IS 'amounts above 50';
COMMENT ON COLUMN public.mv.amount IS 'the amount';
";

/// The OID of the relation `mv`'s query reads (its `_RETURN` rule's dependency).
async fn matview_reads(client: &Client) -> Vec<u32> {
    client
        .query(
            "SELECT DISTINCT d.refobjid FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
             WHERE d.classid = 'pg_rewrite'::regclass AND r.ev_class = 'public.mv'::regclass
               AND r.rulename = '_RETURN' AND d.refclassid = 'pg_class'::regclass
               AND d.refobjid <> 'public.mv'::regclass",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Checks `public.mv` reads the relation `bound`, was rebuilt with everything it had, sees
/// rows written to `public.t` on refresh, and that no temporary copy is left.
async fn assert_matview_wired(client: &Client, bound: u32, amount_type: &str) {
    assert_eq!(matview_reads(client).await, vec![bound], "mv reads {bound}");
    let row = client
        .query_one(
            "SELECT pg_get_userbyid(c.relowner)::text, array_to_string(c.reloptions, ','),
                    obj_description(c.oid, 'pg_class'), col_description(c.oid, 2),
                    has_table_privilege('reader', c.oid, 'SELECT'),
                    has_table_privilege('reader', c.oid, 'INSERT'),
                    format_type(a.atttypid, a.atttypmod), c.relispopulated
             FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'amount'
             WHERE c.oid = 'public.mv'::regclass",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "app", "owner");
    assert_eq!(
        row.get::<_, Option<String>>(1).as_deref(),
        Some("autovacuum_enabled=false")
    );
    assert_eq!(
        row.get::<_, Option<String>>(2).as_deref(),
        Some("amounts above 50")
    );
    assert_eq!(
        row.get::<_, Option<String>>(3).as_deref(),
        Some("the amount")
    );
    assert!(row.get::<_, bool>(4), "reader may SELECT");
    assert!(!row.get::<_, bool>(5), "reader still may not INSERT");
    assert_eq!(row.get::<_, String>(6), amount_type);
    assert!(row.get::<_, bool>(7), "populated");
    // The rebuild ran the query as the owner, like a REFRESH (not as the role running it).
    assert_eq!(
        scalar(
            client,
            "SELECT count(*) FROM public.mv WHERE built_by IS DISTINCT FROM 'app'"
        )
        .await,
        0
    );
    let indexes = client
        .query(
            "SELECT ic.relname::text, i.indisunique, i.indisclustered, obj_description(ic.oid, 'pg_class'),
                    pg_get_indexdef(ic.oid)
             FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
             WHERE i.indrelid = 'public.mv'::regclass ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let indexes: Vec<(String, bool, bool, Option<String>, String)> = indexes
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(indexes.len(), 2, "{indexes:#?}");
    assert_eq!(
        (
            indexes[0].0.as_str(),
            indexes[0].1,
            indexes[0].2,
            indexes[0].3.as_deref()
        ),
        ("mv_big", false, false, Some("large amounts"))
    );
    assert!(
        indexes[0]
            .4
            .ends_with("USING btree (amount) WHERE (amount > 100)"),
        "{indexes:#?}"
    );
    assert_eq!(
        (indexes[1].0.as_str(), indexes[1].1, indexes[1].2),
        ("mv_id", true, true)
    );
    assert_eq!(
        scalar(
            client,
            "SELECT count(*) FROM pg_class WHERE relname LIKE '\\_doppel\\_%\\_mv%'"
        )
        .await,
        0,
        "no temporary copy or index is left"
    );
    // Rows written now are seen by a refresh (CONCURRENTLY needs the unique index).
    let expected = scalar(client, "SELECT count(*) FROM public.t WHERE amount > 50").await;
    client
        .batch_execute("INSERT INTO public.t VALUES (90001, 777, 'fresh')")
        .await
        .unwrap();
    assert_eq!(
        scalar(client, "SELECT count(*) FROM public.mv WHERE id = 90001").await,
        0
    );
    client
        .batch_execute("REFRESH MATERIALIZED VIEW CONCURRENTLY public.mv")
        .await
        .unwrap();
    assert_eq!(
        scalar(client, "SELECT count(*) FROM public.mv").await,
        expected + 1
    );
    client.batch_execute("SET ROLE reader").await.unwrap();
    assert_eq!(
        scalar(client, "SELECT count(*) FROM public.mv WHERE id = 90001").await,
        1,
        "reader sees the refreshed row"
    );
    client.batch_execute("RESET ROLE").await.unwrap();
    client
        .batch_execute("DELETE FROM public.t WHERE id = 90001; REFRESH MATERIALIZED VIEW public.mv")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn materialized_view_is_rebuilt_on_the_new_table_and_back() {
    let cluster = common::cluster().await;
    let mut client = cluster.connect("postgres").await.unwrap();
    client.batch_execute(MATVIEW_SCHEMA).await.unwrap();
    let original = oid_of(&client, "public.t").await;
    let matview = oid_of(&client, "public.mv").await;
    let names = Names::new("public", "t", original);
    let deps = dependents::read(&client, original, &names.publication)
        .await
        .unwrap();
    assert_eq!(deps.views.len(), 1);
    assert!(deps.views[0].materialized);
    assert_eq!(deps.views[0].indexes.len(), 2);
    assert!(
        deps.blockers(&[], &[]).is_empty(),
        "{:#?}",
        deps.blockers(&[], &[])
    );
    // Nothing about the materialized view runs under the cutover lock.
    assert!(deps.lock_sql().is_empty(), "{:#?}", deps.lock_sql());
    assert!(
        !deps.forward(&names).iter().any(|s| s.contains("\"mv\"")),
        "{:#?}",
        deps.forward(&names)
    );
    assert_eq!(deps.forward_after_commit(&names).len(), 1);
    assert_eq!(
        deps.forward_after_commit_labeled(&names)[0].0,
        "materialized view \"public\".\"mv\""
    );

    let shadow = names.shadow_qualified();
    cutover(
        &mut client,
        &deps,
        &names,
        &format!(
            "ALTER TABLE {shadow} ALTER COLUMN amount TYPE bigint; GRANT SELECT ON {shadow} TO app;"
        ),
    )
    .await;
    let new = oid_of(&client, "public.t").await;
    assert_ne!(new, original);
    assert_ne!(oid_of(&client, "public.mv").await, matview, "rebuilt");
    assert_matview_wired(&client, new, "bigint").await;
    // The kept old table is no longer used by anything: it can be dropped (then restored
    // here for the rollback by not dropping it).
    assert_eq!(
        scalar(
            &client,
            &format!(
                "SELECT count(*) FROM pg_depend WHERE refclassid = 'pg_class'::regclass AND refobjid = {original}
                 AND classid = 'pg_rewrite'::regclass"
            )
        )
        .await,
        0
    );
    client
        .batch_execute("INSERT INTO public.t VALUES (500, 600, 'after the cutover')")
        .await
        .unwrap();

    rollback(&mut client, &deps, &names).await;
    assert_eq!(oid_of(&client, "public.t").await, original);
    assert_matview_wired(&client, original, "integer").await;
    assert_eq!(
        scalar(&client, "SELECT count(*) FROM public.mv WHERE id = 500").await,
        0,
        "the row written only to the new table is not in the restored one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_materialized_view_rebuild_leaves_it_intact_and_says_so() {
    let cluster = common::cluster().await;
    let mut client = cluster.connect("postgres").await.unwrap();
    client.batch_execute(MATVIEW_SCHEMA).await.unwrap();
    let original = oid_of(&client, "public.t").await;
    let matview = oid_of(&client, "public.mv").await;
    let names = Names::new("public", "t", original);
    let deps = dependents::read(&client, original, &names.publication)
        .await
        .unwrap();
    // Something already has the name of the rebuilt copy's second index: the copy and its
    // first index are built, then the statement fails.
    let second_index = deps.views[0].indexes[1].oid;
    client
        .batch_execute(&format!(
            "CREATE TABLE public._doppel_{original}_mvi{second_index} ()"
        ))
        .await
        .unwrap();
    let shadow = names.shadow_qualified();
    let tx = client.transaction().await.unwrap();
    tx.batch_execute(&format!(
        "CREATE TABLE {shadow} (LIKE public.t INCLUDING ALL);
         GRANT SELECT ON {shadow} TO app;
         INSERT INTO {shadow} SELECT * FROM public.t;
         ALTER TABLE public.t RENAME TO {};
         ALTER TABLE {shadow} RENAME TO t;",
        doppel::sql::ident(&names.old)
    ))
    .await
    .unwrap();
    run_all(&tx, &deps.forward(&names)).await;
    tx.commit().await.unwrap();
    let steps = deps.forward_after_commit_labeled(&names);
    assert_eq!(steps.len(), 1);
    let err = client
        .batch_execute(&steps[0].1)
        .await
        .expect_err("the rebuild must fail");
    let db = err.as_db_error().expect("a server error");
    assert!(
        db.message().starts_with(&format!(
            "materialized view \"public\".\"mv\" was not rebuilt on the new table \"public\".\"t\"; it is unchanged and still reads the kept old table {}",
            names.old_qualified()
        )),
        "{}",
        db.message()
    );
    assert!(
        db.message().contains("already exists"),
        "the server's reason is kept: {}",
        db.message()
    );
    assert_eq!(db.code().code(), "42P07", "the server's SQLSTATE is kept");
    assert!(db.hint().is_some_and(|h| h.contains("Fix the cause")));
    // Intact: same relation, still reading the old table, with its rows and indexes; no
    // copy left behind.
    assert_eq!(oid_of(&client, "public.mv").await, matview);
    assert_eq!(matview_reads(&client).await, vec![original]);
    assert_eq!(scalar(&client, "SELECT count(*) FROM public.mv").await, 15);
    assert_eq!(
        scalar(
            &client,
            "SELECT count(*) FROM pg_index WHERE indrelid = 'public.mv'::regclass"
        )
        .await,
        2
    );
    assert_eq!(
        scalar(
            &client,
            &format!(
                "SELECT count(*) FROM pg_class WHERE relname = '_doppel_{original}_mv{matview}'
                 OR relname LIKE '\\_doppel\\_{original}\\_mvi%' AND relkind = 'i'"
            )
        )
        .await,
        0
    );
    // Once the obstacle is gone the same statement succeeds.
    client
        .batch_execute(&format!(
            "DROP TABLE public._doppel_{original}_mvi{second_index}"
        ))
        .await
        .unwrap();
    client.batch_execute(&steps[0].1).await.unwrap();
    assert_matview_wired(&client, oid_of(&client, "public.t").await, "integer").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn materialized_view_swap_waits_for_a_reader_then_succeeds() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client.batch_execute(MATVIEW_SCHEMA).await.unwrap();
    let original = oid_of(&client, "public.t").await;
    let matview = oid_of(&client, "public.mv").await;
    let names = Names::new("public", "t", original);
    let deps = dependents::read(&client, original, &names.publication)
        .await
        .unwrap();
    // A reader in an open transaction holds the materialized view.
    let mut reader = cluster.connect("postgres").await.unwrap();
    let reading = reader.transaction().await.unwrap();
    reading
        .batch_execute("SELECT count(*) FROM public.mv")
        .await
        .unwrap();
    let sql = deps.forward_after_commit(&names).remove(0);
    let conninfo = cluster.conninfo("postgres");
    let rebuild = tokio::spawn(async move {
        let (c, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c.batch_execute(&sql).await
    });
    // The rebuild reaches the swap and waits for the lock (retrying on lock_timeout).
    let waiting = common::wait_until_async(std::time::Duration::from_secs(10), || async {
        scalar(
            &client,
            &format!(
                "SELECT count(*) FROM pg_locks WHERE relation = {matview} AND mode = 'AccessExclusiveLock' AND NOT granted"
            ),
        )
        .await
            > 0
    })
    .await;
    assert!(waiting, "the rebuild waits for the reader's lock");
    // Readers are not blocked for long: each try gives up after its lock_timeout.
    assert!(!rebuild.is_finished());
    reading.commit().await.unwrap();
    let result = tokio::time::timeout(std::time::Duration::from_secs(30), rebuild)
        .await
        .expect("the rebuild finishes once the reader is gone")
        .unwrap();
    result.expect("the rebuild succeeds after retrying");
    assert_ne!(oid_of(&client, "public.mv").await, matview);
    assert_matview_wired(&client, original, "integer").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn materialized_views_with_dependents_are_refused() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE public.t (id bigint PRIMARY KEY, amount int NOT NULL);
             CREATE MATERIALIZED VIEW public.mv_used AS SELECT id, amount FROM public.t;
             CREATE VIEW public.on_mv AS SELECT id FROM public.mv_used;
             CREATE MATERIALIZED VIEW public.mv_on_mv AS SELECT id FROM public.mv_used;
             CREATE VIEW public.v AS SELECT id, amount FROM public.t;
             CREATE MATERIALIZED VIEW public.mv_on_view AS SELECT id FROM public.v;
             CREATE MATERIALIZED VIEW public.mv_stats AS SELECT id, amount FROM public.t;
             CREATE STATISTICS public.mv_stats_s (dependencies) ON id, amount FROM public.mv_stats;
             CREATE MATERIALIZED VIEW public.mv_policy AS SELECT id FROM public.t;
             CREATE TABLE public.other (id bigint);
             CREATE POLICY other_p ON public.other USING (id IN (SELECT id FROM public.mv_policy));
             CREATE MATERIALIZED VIEW public.mv_free AS SELECT id FROM public.t;",
        )
        .await
        .unwrap();
    let oid = oid_of(&client, "public.t").await;
    let names = Names::new("public", "t", oid);
    let deps = dependents::read(&client, oid, &names.publication)
        .await
        .unwrap();
    let blocked = deps.blockers(&[], &[]);
    let about = |needle: &str, what: &str| {
        assert!(
            blocked
                .iter()
                .any(|b| b.contains(needle) && b.contains(what)),
            "expected a refusal about {needle} ({what}): {blocked:#?}"
        );
    };
    about(
        "view public.on_mv depends on materialized view public.mv_used",
        "rebuilds",
    );
    about(
        "materialized view public.mv_on_mv depends on materialized view public.mv_used",
        "rebuilds",
    );
    about(
        "materialized view public.mv_on_view uses the view public.v",
        "recreates that view",
    );
    about(
        "statistics object public.mv_stats_s depends on materialized view public.mv_stats",
        "rebuilds",
    );
    about(
        "policy other_p on table public.other depends on materialized view public.mv_policy",
        "rebuilds",
    );
    assert!(
        !blocked.iter().any(|b| b.contains("mv_free")),
        "{blocked:#?}"
    );
    assert_eq!(blocked.len(), 5, "{blocked:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_reports_a_failed_materialized_view_rebuild_and_keeps_it_intact() {
    use doppel::cancel::Cancel;
    use doppel::run::Outcome;
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client.batch_execute(MATVIEW_SCHEMA).await.unwrap();
    let original = oid_of(&client, "public.t").await;
    let matview = oid_of(&client, "public.mv").await;
    let names = Names::new("public", "t", original);
    let index = oid_of(&client, "public.mv_id").await;
    let obstacle = format!("public._doppel_{original}_mvi{index}");

    let dir = tempfile::tempdir().unwrap();
    doppel::testing::arm(&common::pause_dir(dir.path()), "cutover-locked").unwrap();
    let options = common::options(dir.path(), "public.t", &["ALTER COLUMN amount TYPE bigint"]);
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let run =
        tokio::spawn(async move { common::run_paused(&config, &options, &Cancel::never()).await });
    let work_dir = dir.path().to_path_buf();
    assert!(
        common::wait_until(std::time::Duration::from_secs(60), || {
            doppel::testing::reached(&common::pause_dir(&work_dir), "cutover-locked").is_some()
        }),
        "the cutover reaches its lock"
    );
    // While the cutover holds its lock, something takes the name the rebuild needs.
    client
        .batch_execute(&format!("CREATE TABLE {obstacle} ()"))
        .await
        .unwrap();
    doppel::testing::release(&common::pause_dir(dir.path()), "cutover-locked").unwrap();
    let outcome = run.await.unwrap().unwrap();
    let Outcome::Migrated(report) = outcome else {
        panic!("the cutover committed: expected a migration, got {outcome:?}")
    };
    // The failed step is reported (the model has no foreign keys to validate, so it is the
    // only after-commit step). Its text is whatever cutover.rs records for the error; the
    // server's message itself (naming the materialized view and saying it is unchanged) is
    // checked by failed_materialized_view_rebuild_leaves_it_intact_and_says_so.
    assert_eq!(
        report.cutover.unvalidated.len(),
        1,
        "the failed rebuild is reported: {:?}",
        report.cutover.unvalidated
    );
    let (what, why) = &report.cutover.unvalidated[0];
    assert!(what.starts_with("materialized view"), "{what}");
    assert!(what.contains("mv"), "{what}");
    assert!(
        why.contains("42P07") || why.contains("already exists"),
        "the server's reason, not just 'db error': {why}"
    );
    // Intact, still reading the old table, with its rows; the old table is protected.
    assert_eq!(oid_of(&client, "public.mv").await, matview);
    assert_eq!(matview_reads(&client).await, vec![original]);
    assert_eq!(scalar(&client, "SELECT count(*) FROM public.mv").await, 15);
    assert_eq!(
        fails(&client, &format!("DROP TABLE {}", names.old_qualified())).await,
        "2BP01",
        "the old table cannot be dropped while the materialized view reads it"
    );

    // Once the obstacle is gone, the rollback script rebuilds it on the restored original.
    client
        .batch_execute(&format!("DROP TABLE {obstacle}"))
        .await
        .unwrap();
    let output = cluster
        .command("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"])
        .stdin(std::fs::File::open(&report.cutover.rollback_path).unwrap())
        .output()
        .expect("psql runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(oid_of(&client, "public.t").await, original);
    assert_ne!(oid_of(&client, "public.mv").await, matview, "rebuilt");
    assert_matview_wired(&client, original, "integer").await;
}

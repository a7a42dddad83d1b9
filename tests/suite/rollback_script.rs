//! End to end: a table with every kind of dependent is migrated by doppel, behaves exactly as
//! before, then the rollback script doppel wrote is run with `psql -v ON_ERROR_STOP=1` and the
//! restored original behaves exactly as before too. One test per kind of dependent checks that
//! kind's behaviour (on a fresh cluster, with every dependent present), and one checks them all
//! in sequence.
//!
//! The dependents: inbound foreign keys from two child tables (one `ON DELETE CASCADE`), a
//! view and a view on that view, a trigger with a side effect (an audit insert), grants to two
//! roles, row-level security policies with `ENABLE` and `FORCE`, comments on the table and its
//! columns, a publication, an identity column, a materialized view with a unique index and a
//! grant, and a foreign key from the table to a parent. Each behaviour is checked before the
//! migration too, so every check is known to hold on the original.

use doppel::cancel::Cancel;
use doppel::model::names::Names;
use doppel::run::{self, Outcome};
use doppel_testkit::cluster::LocalCluster;
use tokio_postgres::Client;

use crate::common::{self, fails, oid_of, scalar, text};

const SCHEMA: &str = "
CREATE ROLE reader_a NOLOGIN;
CREATE ROLE reader_b NOLOGIN;
CREATE TABLE public.parent (id int PRIMARY KEY);
INSERT INTO public.parent SELECT generate_series(1, 10);
CREATE TABLE public.t (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  tenant text NOT NULL,
  amount int NOT NULL,
  parent_id int NOT NULL REFERENCES public.parent (id),
  note text);
COMMENT ON TABLE public.t IS 'the table';
COMMENT ON COLUMN public.t.tenant IS 'who may see the row';
COMMENT ON COLUMN public.t.amount IS 'in cents';
GRANT SELECT ON public.t TO reader_a;
GRANT SELECT, INSERT ON public.t TO reader_b;
ALTER TABLE public.t ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.t FORCE ROW LEVEL SECURITY;
CREATE POLICY own_rows ON public.t FOR SELECT USING (tenant = current_user);
CREATE POLICY own_inserts ON public.t FOR INSERT TO reader_b WITH CHECK (tenant = current_user);
CREATE TABLE public.audit (n bigserial PRIMARY KEY, op text NOT NULL, id bigint);
CREATE FUNCTION public.audit_fn() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = public AS $$
BEGIN
  INSERT INTO audit (op, id) VALUES (TG_OP, CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END);
  RETURN NULL;
END $$;
CREATE TRIGGER t_audit AFTER INSERT OR UPDATE OR DELETE ON public.t
  FOR EACH ROW EXECUTE FUNCTION public.audit_fn();
CREATE TABLE public.child_a (id int PRIMARY KEY, t_id bigint REFERENCES public.t (id));
CREATE TABLE public.child_b (id int PRIMARY KEY,
  t_id bigint REFERENCES public.t (id) ON DELETE CASCADE);
CREATE VIEW public.v AS SELECT id, tenant, amount FROM public.t WHERE amount >= 0;
CREATE VIEW public.vv AS SELECT id, amount FROM public.v;
GRANT SELECT ON public.vv TO reader_a;
CREATE PUBLICATION pub FOR TABLE public.t;
CREATE MATERIALIZED VIEW public.mv AS SELECT id, amount FROM public.t;
CREATE UNIQUE INDEX mv_id ON public.mv (id);
GRANT SELECT ON public.mv TO reader_a;
INSERT INTO public.t (tenant, amount, parent_id, note)
  SELECT (ARRAY['reader_a', 'reader_b', 'other'])[g % 3 + 1], g, g % 10 + 1, 'n'
  FROM generate_series(1, 300) g;
INSERT INTO public.child_a SELECT g, g FROM generate_series(1, 5) g;
INSERT INTO public.child_b SELECT g, g + 10 FROM generate_series(1, 5) g;
REFRESH MATERIALIZED VIEW public.mv;
";

/// What the checks carry from one phase to the next.
struct State {
    /// The last value the identity of `public.t` handed out.
    last_id: i64,
}

impl State {
    /// Inserts a row into `public.t` as the session's current role and checks the identity
    /// gave it the next number. Returns the id.
    async fn insert(&mut self, client: &Client, tenant: &str, parent: i32) -> i64 {
        let id: i64 = client
            .query_one(
                "INSERT INTO public.t (tenant, amount, parent_id, note) VALUES ($1, 42, $2, 'check')
                 RETURNING id",
                &[&tenant, &parent],
            )
            .await
            .unwrap_or_else(|e| panic!("insert ({tenant}, {parent}): {e}"))
            .get(0);
        assert_eq!(id, self.last_id + 1, "the identity keeps numbering");
        self.last_id = id;
        id
    }

    /// Runs an INSERT into `public.t` that must fail with `sqlstate`, then `RESET ROLE`; the
    /// identity value the INSERT drew is taken as the last one handed out.
    async fn insert_fails(&mut self, client: &Client, sql: &str, sqlstate: &str) {
        assert_eq!(fails(client, sql).await, sqlstate, "{sql}");
        client.batch_execute("RESET ROLE").await.unwrap();
        self.last_id = scalar(
            client,
            "SELECT currval(pg_get_serial_sequence('public.t', 'id'))",
        )
        .await;
    }
}

/// A kind of dependent, and the behaviour checked for it.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Comments on the table and its columns.
    Comments,
    /// Grants to two roles allow what they allowed, RLS (`ENABLE`, `FORCE`) and the policies
    /// filter what they filtered.
    GrantsAndPolicies,
    /// The audit trigger fires once per write on `public.t`, never on the other table.
    Trigger,
    /// The view and the view on it return new rows; the grant on the outer one still allows.
    Views,
    /// The identity column keeps numbering without gaps or repeats.
    Identity,
    /// The foreign key to `parent` is enforced, and a parent whose rows left `public.t` can be
    /// deleted although the other table of the pair still has copies of them.
    ForeignKeyToParent,
    /// The foreign keys of two child tables point at `public.t`, validated, rejecting orphans,
    /// blocking or cascading deletes.
    InboundForeignKeys,
    /// The publication lists `public.t`.
    Publication,
    /// The materialized view reads `public.t`: a refresh sees a new row; index and grant kept.
    MaterializedView,
}

/// Every kind, in the order the combined test checks them.
const ALL: [Kind; 9] = [
    Kind::Comments,
    Kind::GrantsAndPolicies,
    Kind::Trigger,
    Kind::Views,
    Kind::Identity,
    Kind::ForeignKeyToParent,
    Kind::InboundForeignKeys,
    Kind::Publication,
    Kind::MaterializedView,
];

/// The relation named `public.t` at one step of a scenario.
struct Step<'a> {
    /// Its OID.
    bound: u32,
    /// The type of its `amount` column.
    amount_type: &'static str,
    /// The other table of the pair (None before the migration).
    kept: Option<&'a str>,
    /// A parent id referenced by rows of both tables, deleted by the foreign-key check.
    parent: i32,
}

/// Checks `kinds` on the relation named `public.t` now.
async fn behaves(client: &Client, state: &mut State, step: &Step<'_>, kinds: &[Kind]) {
    assert_eq!(oid_of(client, "public.t").await, step.bound);
    assert_eq!(
        text(
            client,
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
             WHERE attrelid = 'public.t'::regclass AND attname = 'amount'"
        )
        .await
        .as_deref(),
        Some(step.amount_type)
    );
    for kind in kinds {
        match kind {
            Kind::Comments => comments(client).await,
            Kind::GrantsAndPolicies => grants_and_policies(client, state, step).await,
            Kind::Trigger => trigger(client, state, step).await,
            Kind::Views => views(client, state).await,
            Kind::Identity => identity(client, state).await,
            Kind::ForeignKeyToParent => foreign_key_to_parent(client, state, step).await,
            Kind::InboundForeignKeys => inbound_foreign_keys(client, state, step).await,
            Kind::Publication => publication(client, step).await,
            Kind::MaterializedView => materialized_view(client, state, step).await,
        }
    }
}

async fn comments(client: &Client) {
    let row = client
        .query_one(
            "SELECT obj_description('public.t'::regclass, 'pg_class'),
                    col_description('public.t'::regclass, 2), col_description('public.t'::regclass, 3)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Option<String>>(0).as_deref(),
        Some("the table")
    );
    assert_eq!(
        row.get::<_, Option<String>>(1).as_deref(),
        Some("who may see the row")
    );
    assert_eq!(row.get::<_, Option<String>>(2).as_deref(), Some("in cents"));
}

async fn grants_and_policies(client: &Client, state: &mut State, step: &Step<'_>) {
    let row = client
        .query_one(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = 'public.t'::regclass",
            &[],
        )
        .await
        .unwrap();
    assert!(
        row.get::<_, bool>(0) && row.get::<_, bool>(1),
        "ENABLE and FORCE"
    );
    assert_eq!(
        scalar(
            client,
            &format!(
                "SELECT count(*) FROM pg_policy WHERE polrelid = {}",
                step.bound
            )
        )
        .await,
        2
    );
    // Each reader sees its own rows only; reader_a may read but not insert.
    let own_a = scalar(
        client,
        "SELECT count(*) FROM public.t WHERE tenant = 'reader_a'",
    )
    .await;
    assert!(own_a > 0);
    client.batch_execute("SET ROLE reader_a").await.unwrap();
    assert_eq!(scalar(client, "SELECT count(*) FROM public.t").await, own_a);
    assert_eq!(
        fails(
            client,
            "INSERT INTO public.t (tenant, amount, parent_id) VALUES ('reader_a', 1, 1)"
        )
        .await,
        "42501",
        "reader_a may not insert"
    );
    client.batch_execute("RESET ROLE").await.unwrap();
    // (A refused INSERT draws no identity value: privileges are checked first.)
    client.batch_execute("SET ROLE reader_b").await.unwrap();
    let b_id = state.insert(client, "reader_b", 1).await;
    assert_eq!(
        scalar(
            client,
            &format!("SELECT count(*) FROM public.t WHERE id = {b_id}")
        )
        .await,
        1
    );
    assert_eq!(
        scalar(
            client,
            "SELECT count(*) FROM public.t WHERE tenant <> 'reader_b'"
        )
        .await,
        0,
        "reader_b sees only its rows"
    );
    // The INSERT policy's WITH CHECK refuses another tenant's row.
    state
        .insert_fails(
            client,
            "INSERT INTO public.t (tenant, amount, parent_id) VALUES ('other', 1, 1)",
            "42501",
        )
        .await;
}

async fn trigger(client: &Client, state: &mut State, step: &Step<'_>) {
    let audit = "SELECT count(*) FROM public.audit";
    let before = scalar(client, audit).await;
    let id = state.insert(client, "other", 2).await;
    assert_eq!(scalar(client, audit).await, before + 1, "insert");
    client
        .batch_execute(&format!(
            "UPDATE public.t SET note = 'updated' WHERE id = {id}"
        ))
        .await
        .unwrap();
    assert_eq!(scalar(client, audit).await, before + 2, "update");
    client
        .batch_execute(&format!("DELETE FROM public.t WHERE id = {id}"))
        .await
        .unwrap();
    assert_eq!(scalar(client, audit).await, before + 3, "delete");
    if let Some(kept) = step.kept {
        client
            .batch_execute(&format!(
                "INSERT INTO {kept} (id, tenant, amount, parent_id) OVERRIDING SYSTEM VALUE
                   VALUES (-1, 'other', 1, 1);
                 UPDATE {kept} SET note = 'x' WHERE id = -1;
                 DELETE FROM {kept} WHERE id = -1;"
            ))
            .await
            .unwrap();
        assert_eq!(
            scalar(client, audit).await,
            before + 3,
            "nothing fires on {kept}"
        );
    }
}

async fn views(client: &Client, state: &mut State) {
    let id = state.insert(client, "other", 2).await;
    assert_eq!(
        scalar(
            client,
            &format!("SELECT count(*) FROM public.vv WHERE id = {id}")
        )
        .await,
        1
    );
    assert_eq!(
        scalar(client, "SELECT count(*) FROM public.v").await,
        scalar(client, "SELECT count(*) FROM public.t").await
    );
    client.batch_execute("SET ROLE reader_a").await.unwrap();
    assert_eq!(
        scalar(
            client,
            &format!("SELECT count(*) FROM public.vv WHERE id = {id}")
        )
        .await,
        1
    );
    client.batch_execute("RESET ROLE").await.unwrap();
    client
        .batch_execute(&format!("DELETE FROM public.t WHERE id = {id}"))
        .await
        .unwrap();
    assert_eq!(
        scalar(
            client,
            &format!("SELECT count(*) FROM public.vv WHERE id = {id}")
        )
        .await,
        0
    );
}

async fn identity(client: &Client, state: &mut State) {
    assert_eq!(
        text(
            client,
            "SELECT attidentity::text FROM pg_attribute
             WHERE attrelid = 'public.t'::regclass AND attname = 'id'"
        )
        .await
        .as_deref(),
        Some("a"),
        "GENERATED ALWAYS AS IDENTITY"
    );
    assert!(
        text(client, "SELECT pg_get_serial_sequence('public.t', 'id')")
            .await
            .is_some(),
        "the identity sequence belongs to this table"
    );
    // Each insert asserts the next number: no gap, no repeat (a repeat would also fail on
    // the primary key).
    for _ in 0..3 {
        let id = state.insert(client, "other", 2).await;
        client
            .batch_execute(&format!("DELETE FROM public.t WHERE id = {id}"))
            .await
            .unwrap();
    }
    assert_eq!(
        fails(
            client,
            "INSERT INTO public.t (id, tenant, amount, parent_id) VALUES (1, 'other', 1, 1)"
        )
        .await,
        "428C9",
        "GENERATED ALWAYS refuses an explicit id"
    );
}

async fn foreign_key_to_parent(client: &Client, state: &mut State, step: &Step<'_>) {
    state
        .insert_fails(
            client,
            "INSERT INTO public.t (tenant, amount, parent_id) VALUES ('other', 1, 999)",
            "23503",
        )
        .await;
    let parent = step.parent;
    if let Some(kept) = step.kept {
        assert!(
            scalar(
                client,
                &format!("SELECT count(*) FROM {kept} WHERE parent_id = {parent}")
            )
            .await
                > 0
        );
    }
    client
        .batch_execute(&format!(
            "DELETE FROM public.t WHERE parent_id = {parent}; DELETE FROM public.parent WHERE id = {parent};"
        ))
        .await
        .unwrap_or_else(|e| panic!("deleting parent {parent}: {e:?}"));
}

async fn inbound_foreign_keys(client: &Client, state: &mut State, step: &Step<'_>) {
    assert_eq!(
        scalar(
            client,
            &format!(
                "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND confrelid = {} AND convalidated
                 AND conrelid IN ('public.child_a'::regclass, 'public.child_b'::regclass)",
                step.bound
            )
        )
        .await,
        2
    );
    assert_eq!(
        fails(client, "INSERT INTO public.child_a VALUES (100, 999999)").await,
        "23503"
    );
    assert_eq!(
        fails(client, "INSERT INTO public.child_b VALUES (100, 999999)").await,
        "23503"
    );
    let id = state.insert(client, "other", 3).await;
    client
        .batch_execute(&format!(
            "INSERT INTO public.child_a VALUES (100, {id}); INSERT INTO public.child_b VALUES (100, {id})"
        ))
        .await
        .unwrap();
    assert_eq!(
        fails(client, &format!("DELETE FROM public.t WHERE id = {id}")).await,
        "23503",
        "child_a's key blocks the delete"
    );
    client
        .batch_execute(&format!(
            "DELETE FROM public.child_a WHERE id = 100; DELETE FROM public.t WHERE id = {id}"
        ))
        .await
        .unwrap();
    assert_eq!(
        scalar(client, "SELECT count(*) FROM public.child_b WHERE id = 100").await,
        0,
        "ON DELETE CASCADE"
    );
}

async fn publication(client: &Client, step: &Step<'_>) {
    assert_eq!(
        scalar(
            client,
            &format!(
                "SELECT count(*) FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                 WHERE p.pubname = 'pub' AND pr.prrelid = {}",
                step.bound
            )
        )
        .await,
        1
    );
    if let Some(kept) = step.kept {
        assert_eq!(
            scalar(
                client,
                &format!(
                    "SELECT count(*) FROM pg_publication_rel WHERE prrelid = '{kept}'::regclass"
                )
            )
            .await,
            0,
            "{kept} is not published"
        );
    }
}

async fn materialized_view(client: &Client, state: &mut State, step: &Step<'_>) {
    assert_eq!(
        scalar(
            client,
            &format!(
                "SELECT count(*) FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
                 WHERE r.ev_class = 'public.mv'::regclass AND d.refclassid = 'pg_class'::regclass
                   AND d.refobjid = {}",
                step.bound
            )
        )
        .await,
        2,
        "mv's query uses this table's id and amount"
    );
    let id = state.insert(client, "other", 4).await;
    client
        .batch_execute("REFRESH MATERIALIZED VIEW CONCURRENTLY public.mv")
        .await
        .unwrap();
    client.batch_execute("SET ROLE reader_a").await.unwrap();
    assert_eq!(
        scalar(
            client,
            &format!("SELECT count(*) FROM public.mv WHERE id = {id}")
        )
        .await,
        1
    );
    client.batch_execute("RESET ROLE").await.unwrap();
    assert_eq!(
        scalar(client, "SELECT count(*) FROM public.mv").await,
        scalar(client, "SELECT count(*) FROM public.t").await
    );
    client
        .batch_execute(&format!(
            "DELETE FROM public.t WHERE id = {id}; REFRESH MATERIALIZED VIEW public.mv"
        ))
        .await
        .unwrap();
}

/// Runs `file` with `psql -X -v ON_ERROR_STOP=1 -v force=1` on `cluster` (psql reads it from
/// stdin: it runs as the cluster's OS user, who may not be able to open the file). The checks
/// of each kind write to the new table, so the script's guard against losing writes made
/// after the cutover is overridden on purpose (tests/rollback_guard.rs tests the guard).
fn run_psql_file(cluster: &LocalCluster, file: &std::path::Path) {
    let output = cluster
        .command("psql")
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "force=1",
            "-f",
            "-",
        ])
        .stdin(std::fs::File::open(file).expect("the rollback script exists"))
        .output()
        .expect("psql runs");
    assert!(
        output.status.success(),
        "rollback script failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// On a fresh cluster with the whole schema: checks `kinds` on the original, migrates
/// (`amount` to bigint), checks them on the new table, runs the rollback script doppel wrote,
/// and checks them on the restored original.
async fn migrate_and_roll_back(kinds: &[Kind]) {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client.batch_execute(SCHEMA).await.unwrap();
    let original = oid_of(&client, "public.t").await;
    let names = Names::new("public", "t", original);
    let mut state = State {
        last_id: scalar(&client, "SELECT max(id) FROM public.t").await,
    };
    let before = Step {
        bound: original,
        amount_type: "integer",
        kept: None,
        parent: 7,
    };
    behaves(&client, &mut state, &before, kinds).await;

    let dir = tempfile::tempdir().unwrap();
    let options = common::options(dir.path(), "public.t", &["ALTER COLUMN amount TYPE bigint"]);
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let outcome = run::run(&config, &options, &Cancel::never()).await.unwrap();
    let Outcome::Migrated(report) = outcome else {
        panic!("expected a migration, got {outcome:?}")
    };
    assert!(
        report.cutover.unvalidated.is_empty(),
        "every after-commit step succeeded: {:?}",
        report.cutover.unvalidated
    );
    let new = oid_of(&client, "public.t").await;
    assert_ne!(new, original);
    assert_eq!(oid_of(&client, &names.old_qualified()).await, original);
    let old = names.old_qualified();
    let after = Step {
        bound: new,
        amount_type: "bigint",
        kept: Some(&old),
        parent: 8,
    };
    behaves(&client, &mut state, &after, kinds).await;

    run_psql_file(&cluster, &report.cutover.rollback_path);
    assert_eq!(oid_of(&client, &names.shadow_qualified()).await, new);
    let shadow = names.shadow_qualified();
    let rolled_back = Step {
        bound: original,
        amount_type: "integer",
        kept: Some(&shadow),
        parent: 9,
    };
    behaves(&client, &mut state, &rolled_back, kinds).await;
    // Nothing doppel built for the rebuilds is left.
    assert_eq!(
        scalar(
            &client,
            "SELECT count(*) FROM pg_class WHERE relname LIKE '\\_doppel\\_%\\_mv%'"
        )
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comments_on_the_table_and_its_columns_follow_the_name() {
    migrate_and_roll_back(&[Kind::Comments]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_still_allow_and_policies_still_filter() {
    migrate_and_roll_back(&[Kind::GrantsAndPolicies]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trigger_fires_once_per_write() {
    migrate_and_roll_back(&[Kind::Trigger]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_and_the_view_on_it_return_new_rows() {
    migrate_and_roll_back(&[Kind::Views]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_keep_numbering_the_identity_column() {
    migrate_and_roll_back(&[Kind::Identity]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_foreign_key_to_the_parent_is_enforced_and_does_not_pin_parents() {
    migrate_and_roll_back(&[Kind::ForeignKeyToParent]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_keys_from_two_child_tables_reject_orphans_and_cascade() {
    migrate_and_roll_back(&[Kind::InboundForeignKeys]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publication_lists_the_table() {
    migrate_and_roll_back(&[Kind::Publication]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_materialized_view_refreshes_from_the_table() {
    migrate_and_roll_back(&[Kind::MaterializedView]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dependent_behaves_after_migration_and_after_the_rollback_script() {
    migrate_and_roll_back(&ALL).await;
}

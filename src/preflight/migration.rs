//! Preflight of a run with its strategy per clause (docs/design.md §1.10): [`plan`] checks the
//! table and the ALTER, measures each clause on the clone, chooses each clause's strategy, and
//! builds the direct steps and the shadow migration.
//!
//! - Every clause direct or online: the steps, grouped when a rehearsal on a clone shows the
//!   grouped order gives the same table as the written order, else clause by clause. The
//!   checks only a shadow needs (logical replication, a primary key, publications) are not
//!   made.
//! - A clause needs the shadow (or `--strategy shadow`, or `--backfill`, which fills a column
//!   during the copy): the shadow plan as before ([`super::shadow`]), every clause in it. The
//!   clauses that would not need it ride along: inside the shadow they cost no lock on the
//!   table at all (a NOT NULL or CHECK is checked on the shadow, a unique index built there),
//!   where running them directly would add lock acquisitions and scans of the table.

use anyhow::Result;
use tokio_postgres::Client;

use super::checks::clauses::{self, Measured, Rehearsed};
use super::checks::{alter, leftovers, privileges, server, table, transactions};
use super::strategy::{self, Effect, Target};
use crate::failure::{Check, Refusal, Refused};
use crate::model::assignment;
use crate::model::catalog::{self, Table};
use crate::model::names::Names;
use crate::plan::{Action, Clause, DirectPlan, Migration, Rewrite, Strategy};
use crate::sql::ident;

/// What a run asks preflight for.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The table, as SQL writes it.
    pub table: &'a str,
    /// The `--alter` clauses.
    pub alters: &'a [String],
    /// The `--backfill` assignments (`column = expression`).
    pub backfills: &'a [String],
    /// `--strategy shadow`: every clause takes the shadow.
    pub force_shadow: bool,
    /// The run resumes an interrupted one: its shadow, publication and slot are not
    /// leftovers ([`super::run`]).
    pub resuming: bool,
}

/// Plans the run: checks, each clause's strategy, the direct steps and the shadow migration.
///
/// Errors: [`Refused`] (exit 2) listing every reason; a query failure otherwise.
pub async fn plan(client: &mut Client, request: &Request<'_>) -> Result<Migration> {
    let server = server::read(client).await?;
    if let Some(too_old) = server::version(&server) {
        return Err(Refused(vec![too_old]).into());
    }
    let oid = super::checks::table::resolve(client, request.table)
        .await
        .map_err(Refused::from)?;
    let original = catalog::inspect(&*client, oid).await?;
    let names = Names::new(&original.schema, &original.name, oid);
    let mut refusals = table::check(&original);
    refusals.extend(privileges::ownership(client, &original).await?);
    // Every strategy measures the clauses on a clone in pg_temp.
    let grants = privileges::read(client).await?;
    refusals.extend(
        privileges::database(&server, &grants)
            .into_iter()
            .filter(|r| r.check == Check::TempPrivilege),
    );
    let mut spec = match alter::analyze(request.alters) {
        Ok(spec) => spec,
        Err(r) => {
            refusals.push(r);
            return Err(Refused(refusals).into());
        }
    };
    spec.backfills = match assignment::parse_all(request.backfills) {
        Ok(b) => b,
        Err(e) => {
            refusals.push(super::checks::projection::backfill_text(&e));
            return Err(Refused(refusals).into());
        }
    };
    if !refusals.is_empty() {
        return Err(Refused(refusals).into());
    }
    let measured = clauses::effects(client, &original, &spec)
        .await?
        .map_err(Refused::from)?;
    let forced = match (request.force_shadow, spec.backfills.is_empty()) {
        (true, _) => Some("--strategy shadow"),
        (false, false) => Some("--backfill fills a column during the copy"),
        (false, true) => None,
    };
    let mut clauses: Vec<Clause> = measured
        .effects
        .iter()
        .map(|e| {
            let (strategy, reason) = match forced {
                Some(why) => (Strategy::Shadow, why.to_string()),
                None if original.relkind == 'p' && !e.new_indexes.is_empty() => (
                    Strategy::Shadow,
                    "builds an index on a partitioned table, which CREATE INDEX CONCURRENTLY cannot do: the shadow builds it instead".into(),
                ),
                None => strategy::choose(e),
            };
            Clause {
                text: e.text.clone(),
                strategy,
                cost: e.cost,
                reason,
            }
        })
        .collect();
    refuse_dropped_in_use(&measured.effects, &clauses)?;
    let mut warnings = Vec::new();
    if forced.is_some() {
        warnings.extend(forced_warnings(&clauses));
    }
    let context = Context {
        original: &original,
        names: &names,
        measured: &measured,
        spec: &spec,
    };
    let (direct, shadow) = if clauses.iter().all(|c| c.strategy != Strategy::Shadow) {
        // (The shadow plan carries these warnings itself.)
        warnings.extend(transactions::check(client).await?);
        (Some(context.direct_only(client, &clauses).await?), None)
    } else {
        for c in clauses
            .iter_mut()
            .filter(|c| c.strategy != Strategy::Shadow)
        {
            c.strategy = Strategy::Shadow;
            c.reason = format!(
                "{}; rides in the shadow another clause needs (no lock on the table of its own)",
                c.reason
            );
        }
        let plan = super::shadow(
            client,
            request.table,
            request.alters,
            request.backfills,
            request.resuming,
        )
        .await?;
        (None, Some(Box::new(plan)))
    };
    Ok(Migration {
        server_version: server.version,
        original,
        clauses,
        direct,
        shadow,
        warnings,
    })
}

/// [`Check::Dependents`]: a direct or online clause that drops a column other objects use
/// (PostgreSQL refuses it without `CASCADE`, which would drop them).
fn refuse_dropped_in_use(effects: &[Effect], clauses: &[Clause]) -> Result<()> {
    let refusals: Vec<Refusal> = effects
        .iter()
        .zip(clauses)
        .filter(|(_, c)| c.strategy != Strategy::Shadow)
        .flat_map(|(e, c)| {
            e.drop_dependents.iter().map(move |(column, user)| {
                Refusal::new(
                    Check::Dependents,
                    format!("{:?} drops column {column:?}, which {user} uses", c.text),
                    "drop or change the dependent first (doppel does not drop dependents)",
                )
            })
        })
        .collect();
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(Refused(refusals).into())
    }
}

/// With the shadow forced: the clauses that would not have needed it.
fn forced_warnings(clauses: &[Clause]) -> Vec<String> {
    clauses
        .iter()
        .filter(|c| c.cost != Rewrite::Rewrite)
        .map(|c| {
            format!(
                "{:?} does not rewrite the table ({}): without --strategy shadow or --backfill it would run on the table itself",
                c.text,
                match c.cost {
                    Rewrite::MetadataOnly => "metadata-only",
                    _ => "a scan, done online by PostgreSQL's recipe",
                }
            )
        })
        .collect()
}

/// What the strategy steps share.
struct Context<'a> {
    original: &'a Table,
    names: &'a Names,
    measured: &'a Measured,
    spec: &'a crate::model::alter::AlterSpec,
}

impl Context<'_> {
    /// The target of the real table's steps, or of a rehearsal on the clone.
    fn target(&self, on_clone: bool) -> Target {
        Target {
            table: if on_clone {
                format!("pg_temp.{}", ident(&self.original.name))
            } else {
                self.original.qualified()
            },
            concurrently: !on_clone,
            clone_text: self.measured.clone_text.clone(),
        }
    }

    /// The direct steps for `clauses` against the clone, as rehearsal statements.
    fn rehearsal(&self, clauses: &[Clause], grouped: bool) -> Vec<Rehearsed> {
        let plan = strategy::steps(
            &self.measured.effects,
            clauses,
            &self.target(true),
            self.names,
            grouped,
        );
        plan.steps
            .iter()
            .flat_map(|s| match &s.action {
                Action::Brief(sql) => sql
                    .iter()
                    .map(|q| Rehearsed::Statement(q.clone()))
                    .collect(),
                Action::Validate { constraint, .. } => vec![Rehearsed::Statement(format!(
                    "ALTER TABLE {} VALIDATE CONSTRAINT {}",
                    self.target(true).table,
                    ident(constraint)
                ))],
                Action::BuildIndex { sql, .. } => vec![Rehearsed::Statement(sql.clone())],
            })
            .collect()
    }

    /// Every clause direct or online: the steps (grouped when the rehearsal agrees), after
    /// the checks they need: leftovers of a killed recipe, free index names.
    async fn direct_only(&self, client: &mut Client, clauses: &[Clause]) -> Result<DirectPlan> {
        let mut refusals = leftovers::recipes(client, self.original, self.names).await?;
        refusals.extend(alter::new_names(client, self.original, &self.measured.final_shape).await?);
        if !refusals.is_empty() {
            return Err(Refused(refusals).into());
        }
        let grouped = self.agrees(client, self.rehearsal(clauses, true)).await?;
        if !grouped {
            let sequential = self.rehearsal(clauses, false);
            if let Some(why) = self.disagreement(client, sequential).await? {
                anyhow::bail!("rehearsing the online recipes on the clone failed: {why}");
            }
        }
        Ok(strategy::steps(
            &self.measured.effects,
            clauses,
            &self.target(false),
            self.names,
            grouped,
        ))
    }

    /// True when `statements` on a fresh clone give the shape of the written order.
    async fn agrees(&self, client: &mut Client, statements: Vec<Rehearsed>) -> Result<bool> {
        Ok(self.disagreement(client, statements).await?.is_none())
    }

    /// What goes differently when `statements` run on a fresh clone.
    async fn disagreement(
        &self,
        client: &mut Client,
        statements: Vec<Rehearsed>,
    ) -> Result<Option<String>> {
        clauses::rehearse(
            client,
            self.original,
            self.spec,
            &statements,
            &self.measured.final_shape,
        )
        .await
    }
}

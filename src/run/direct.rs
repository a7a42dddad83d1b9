//! The direct and online steps of a run (docs/design.md §1.10), with the operator's side every
//! strategy has: the control socket (`status`, `throttle`, `lock-timeout=`, `abort`), the
//! throttles, the hooks (`on-startup`, `on-preflight-ok`, `on-throttled`, `on-status`,
//! `on-success`, `on-failure`), the status line.

use std::time::{Duration, Instant};

use anyhow::Result;
use tokio_postgres::Client;

use super::RunOptions;
use super::operator::{Operator, Place, Subject};
use super::tasks::AbortOnDrop;
use crate::cancel::Cancel;
use crate::model::catalog::Table;
use crate::model::names::Names;
use crate::ops::hooks::Hooks;
use crate::ops::progress::{self, Progress};
use crate::ops::throttle::Throttler;
use crate::phases::direct::{Direct, DirectOptions, DirectReport};
use crate::plan::{Clause, DirectPlan};

/// What a run of direct and online clauses only did.
#[derive(Debug, Clone)]
pub struct AlterReport {
    /// The table as it was before.
    pub original: Table,
    /// The clauses and their strategies.
    pub clauses: Vec<Clause>,
    /// The steps.
    pub direct: DirectReport,
    /// The table's OID afterwards (the direct strategies keep it).
    pub oid_after: u32,
    /// Whole run.
    pub total: Duration,
}

/// One run of the direct steps.
pub(super) struct DirectRun<'a> {
    pub(super) config: &'a crate::conninfo::ConnInfo,
    pub(super) options: &'a RunOptions,
    pub(super) table: &'a Table,
    pub(super) plan: &'a DirectPlan,
    pub(super) hooks: &'a Hooks,
    pub(super) cancel: &'a Cancel,
}

impl DirectRun<'_> {
    /// Starts the control socket, the throttles and the status line, runs the start-up hooks
    /// and the steps on `control`, then the success or failure hook.
    ///
    /// Errors: a failing start-up hook (exit 3), the control socket cannot be created, or the
    /// steps' errors ([`Direct::run`]).
    pub(super) async fn run(&self, control: &mut Client) -> Result<DirectReport> {
        let progress = Progress::new();
        let socket = self.options.control_socket.clone().unwrap_or_else(|| {
            crate::ops::control::default_path(&self.options.work_dir, self.table.oid)
        });
        let subject = Subject::table_only(self.table, &self.options.alters);
        let place = Place::of(control, self.config, Some(socket)).await?;
        let mut operator = Operator::start(
            subject,
            progress.clone(),
            self.hooks.clone(),
            place,
            self.options,
        )
        .await?;
        let (abort, internal) = Cancel::new();
        operator.drive_abort(abort.clone());
        let outer = self.cancel.clone();
        let _forward = AbortOnDrop(tokio::spawn(async move {
            outer.cancelled().await;
            abort.send_replace(true);
        }));
        let result = self
            .steps(control, &mut operator, &progress, internal)
            .await;
        match &result {
            Ok(_) => operator.hook("on-success").await.ok(),
            Err(_) => operator.hook("on-failure").await.ok(),
        };
        result
    }

    async fn steps(
        &self,
        control: &mut Client,
        operator: &mut Operator,
        progress: &std::sync::Arc<Progress>,
        cancel: Cancel,
    ) -> Result<DirectReport> {
        operator.hook("on-startup").await?;
        operator.hook("on-preflight-ok").await?;
        let _reporter = AbortOnDrop(progress::spawn_reporter(
            progress.clone(),
            self.options.display,
            self.options.status_interval,
        ));
        let names = Names::new(&self.table.schema, &self.table.name, self.table.oid);
        let mut throttler = Throttler::spawn(
            self.config,
            self.options.throttle.clone(),
            &names.slot,
            &names.message_prefix,
        )
        .await?;
        throttler.abort_on(cancel.clone());
        operator.drive_throttle(throttler.live());
        operator.drive_hooks(throttler.watch());
        let _throttle_feed =
            super::tasks::feed_throttle_progress(progress.clone(), throttler.watch());
        let direct = Direct {
            plan: self.plan,
            table: self.table,
            options: DirectOptions {
                lock_timeout: self.options.lock_timeout,
                retries: self.options.cutover_retries,
                controls: Some(&operator.controls),
                throttle: Some(&throttler),
                cancel,
                progress: Some(progress),
            },
        };
        let started = Instant::now();
        let report = direct.run(control).await?;
        tracing::info!(
            steps = report.steps.len(),
            secs = started.elapsed().as_secs_f64(),
            longest_blocking_hold_ms = report.longest_blocking_hold().as_secs_f64() * 1000.0,
            "direct steps done"
        );
        Ok(report)
    }
}

//! The ledger of the expand/contract walk-through: `transactions` with a legacy `status`
//! text column moving to a `state_id` foreign key on `transaction_state`, and a writer that
//! plays the application through the migration — writing `status` only (the old application),
//! both columns (dual write), then `state_id` only (after the contract) — mirroring every
//! change into the untouched twin `transactions_twin`, which keeps `status`. After any step,
//! the table equals the twin with `state_id` derived from `status` ([`mismatches`]).
//!
//! The writer measures every transaction's latency, overall and in windows
//! ([`LedgerWriter::window`]), so a test can say how long the application waited while one
//! step ran.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use super::WorkloadReport;

/// The states: `(id, name)`.
pub const STATES: [(i16, &str); 5] = [
    (1, "pending"),
    (2, "authorized"),
    (3, "settled"),
    (4, "refunded"),
    (5, "failed"),
];

/// The twin's columns, in order.
pub const TWIN_COLUMNS: &str = "id, account_id, amount, status, created_at, note";

/// Creates `transaction_state` (the five [`STATES`]), `transactions` (`id bigserial`,
/// `account_id`, `amount`, `status text NOT NULL`, `created_at`, `note`) with `rows` rows,
/// and its twin `transactions_twin` holding the same rows.
///
/// Errors: a statement fails (e.g. the tables exist).
pub async fn create(client: &Client, rows: i64) -> Result<()> {
    let states: Vec<String> = STATES
        .iter()
        .map(|(id, name)| format!("({id}, '{name}')"))
        .collect();
    client
        .batch_execute(&format!(
            "CREATE TABLE transaction_state (id smallint PRIMARY KEY, name text NOT NULL UNIQUE);
             INSERT INTO transaction_state VALUES {};
             CREATE TABLE transactions (
               id bigserial PRIMARY KEY,
               account_id int NOT NULL,
               amount numeric(12,2) NOT NULL,
               status text NOT NULL,
               created_at timestamptz NOT NULL DEFAULT now(),
               note text);
             CREATE INDEX transactions_account_idx ON transactions (account_id);
             INSERT INTO transactions (account_id, amount, status, created_at, note)
               SELECT i % 5000, (i % 100000) / 100.0,
                      (ARRAY['pending','authorized','settled','refunded','failed'])[1 + i % 5],
                      timestamptz '2026-01-01 00:00:00+00' + (i || ' seconds')::interval,
                      CASE WHEN i % 7 = 0 THEN NULL ELSE 'card ' || md5(i::text) END
               FROM generate_series(1, {rows}) AS i;
             CREATE TABLE transactions_twin (LIKE transactions);
             ALTER TABLE transactions_twin ADD PRIMARY KEY (id);
             INSERT INTO transactions_twin SELECT {TWIN_COLUMNS} FROM transactions;",
            states.join(", ")
        ))
        .await
        .context("creating the ledger")?;
    for table in ["transactions", "transactions_twin"] {
        client
            .batch_execute(&format!("VACUUM ANALYZE {table}"))
            .await
            .context("vacuuming the ledger")?;
    }
    Ok(())
}

/// Rows of `transactions` and of the twin (with `state_id` derived from its `status`) that
/// have no exact counterpart in the other, compared on `id, account_id, amount, created_at,
/// note, state_id`: 0 when the table holds exactly what the application wrote.
///
/// Errors: the query fails (e.g. `transactions` has no `state_id`).
pub async fn mismatches(client: &Client) -> Result<i64> {
    let twin = "SELECT w.id, w.account_id, w.amount, w.created_at, w.note,
                       (SELECT s.id FROM transaction_state s WHERE s.name = w.status) AS state_id
                FROM transactions_twin w";
    let table = "SELECT id, account_id, amount, created_at, note, state_id FROM transactions";
    Ok(client
        .query_one(
            &format!(
                "SELECT count(*) FROM (({twin} EXCEPT ALL {table}) UNION ALL ({table} EXCEPT ALL {twin})) d"
            ),
            &[],
        )
        .await
        .context("comparing transactions with the twin")?
        .get(0))
}

/// What the application writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The old application: `status` only.
    Old = 0,
    /// Dual write: `status` and `state_id`.
    Dual = 1,
    /// After the contract: `state_id` only (the twin still gets `status`).
    New = 2,
}

/// The running writer.
pub struct LedgerWriter {
    mode: Arc<AtomicU8>,
    done: Arc<AtomicU64>,
    window_max_us: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
    handle: JoinHandle<Result<WorkloadReport>>,
}

impl LedgerWriter {
    /// Starts the writer in `mode` on its own session, pausing `pause` between
    /// transactions; `seed` drives its random mix (40% inserts, 50% updates, 10% deletes).
    ///
    /// Errors: the session cannot be opened.
    pub async fn start(
        config: &tokio_postgres::Config,
        mode: Mode,
        seed: u64,
        pause: Duration,
    ) -> Result<LedgerWriter> {
        let client = crate::connect(config).await?;
        client
            .batch_execute("SET application_name = 'ledger application'")
            .await?;
        let max_id: i64 = client
            .query_one("SELECT coalesce(max(id), 0) FROM transactions", &[])
            .await?
            .get(0);
        let mode = Arc::new(AtomicU8::new(mode as u8));
        let done = Arc::new(AtomicU64::new(0));
        let window_max_us = Arc::new(AtomicU64::new(0));
        let (tx, rx) = watch::channel(false);
        let state = Loop {
            client,
            mode: mode.clone(),
            done: done.clone(),
            window_max_us: window_max_us.clone(),
            rng: StdRng::seed_from_u64(seed),
            max_id,
            pause,
        };
        let handle = tokio::spawn(state.run(rx));
        Ok(LedgerWriter {
            mode,
            done,
            window_max_us,
            stop: tx,
            handle,
        })
    }

    /// Switches what the next transactions write, and returns once two transactions have
    /// ended in the new mode (so none of the old mode is still in flight).
    pub async fn switch(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
        let from = self.done.load(Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.done.load(Ordering::SeqCst) < from + 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Starts a latency window: [`LedgerWriter::window`] reports the worst latency since.
    pub fn start_window(&self) {
        self.window_max_us.store(0, Ordering::SeqCst);
    }

    /// The worst transaction latency since [`LedgerWriter::start_window`].
    pub fn window(&self) -> Duration {
        Duration::from_micros(self.window_max_us.load(Ordering::SeqCst))
    }

    /// Stops the writer and returns what it saw.
    ///
    /// Errors: the writer's task failed.
    pub async fn stop(self) -> Result<WorkloadReport> {
        self.stop.send_replace(true);
        self.handle.await.context("the ledger writer panicked")?
    }
}

/// The writer's loop state.
struct Loop {
    client: Client,
    mode: Arc<AtomicU8>,
    done: Arc<AtomicU64>,
    window_max_us: Arc<AtomicU64>,
    rng: StdRng,
    max_id: i64,
    pause: Duration,
}

impl Loop {
    async fn run(mut self, stop: watch::Receiver<bool>) -> Result<WorkloadReport> {
        let mut report = WorkloadReport::default();
        let mut latencies = Vec::new();
        while !*stop.borrow() {
            let mode = match self.mode.load(Ordering::SeqCst) {
                0 => Mode::Old,
                1 => Mode::Dual,
                _ => Mode::New,
            };
            let sql = self.statement(mode);
            let started = Instant::now();
            let result = self.client.query_opt(&sql, &[]).await;
            let took = started.elapsed();
            latencies.push(took);
            report.max_latency = report.max_latency.max(took);
            self.window_max_us
                .fetch_max(took.as_micros() as u64, Ordering::SeqCst);
            match result {
                Ok(Some(row)) => {
                    report.transactions += 1;
                    self.max_id = self.max_id.max(row.get::<_, i64>(0));
                }
                Ok(None) => report.transactions += 1,
                Err(e) => {
                    report.errors += 1;
                    if report.first_errors.len() < 5 {
                        let why = e
                            .as_db_error()
                            .map(|d| d.message().to_string())
                            .unwrap_or_else(|| e.to_string());
                        report.first_errors.push(format!("{mode:?}: {why}"));
                    }
                }
            }
            self.done.fetch_add(1, Ordering::SeqCst);
            if !self.pause.is_zero() {
                tokio::time::sleep(self.pause).await;
            }
        }
        latencies.sort();
        if !latencies.is_empty() {
            report.p50 = latencies[latencies.len() / 2];
            report.p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
        }
        Ok(report)
    }

    /// One statement (a data-modifying CTE writing the table and its twin); an insert
    /// returns the new id.
    fn statement(&mut self, mode: Mode) -> String {
        let (_, status) = STATES[self.rng.random_range(0..STATES.len())];
        let state = format!("(SELECT id FROM transaction_state WHERE name = '{status}')");
        let id = self.rng.random_range(1..=self.max_id.max(1));
        let roll = self.rng.random_range(0..100);
        if roll < 40 {
            let account = self.rng.random_range(0..5000);
            let amount = self.rng.random_range(1..100_000) as f64 / 100.0;
            let (columns, values) = match mode {
                Mode::Old => ("status", format!("'{status}'")),
                Mode::Dual => ("status, state_id", format!("'{status}', {state}")),
                Mode::New => ("state_id", state.clone()),
            };
            return format!(
                "WITH i AS (INSERT INTO transactions (account_id, amount, {columns}, note)
                            VALUES ({account}, {amount}, {values}, 'card {account}')
                            RETURNING id, account_id, amount, created_at, note)
                 INSERT INTO transactions_twin ({TWIN_COLUMNS})
                 SELECT id, account_id, amount, '{status}', created_at, note FROM i RETURNING id"
            );
        }
        if roll < 90 {
            let sets = match mode {
                Mode::Old => format!("status = '{status}'"),
                Mode::Dual => format!("status = '{status}', state_id = {state}"),
                Mode::New => format!("state_id = {state}"),
            };
            return format!(
                "WITH u AS (UPDATE transactions SET {sets}, amount = amount + 1 WHERE id = {id}
                            RETURNING id, amount)
                 UPDATE transactions_twin w SET status = '{status}', amount = u.amount
                 FROM u WHERE w.id = u.id RETURNING 0::bigint"
            );
        }
        format!(
            "WITH d AS (DELETE FROM transactions WHERE id = {id} RETURNING id)
             DELETE FROM transactions_twin WHERE id IN (SELECT id FROM d) RETURNING 0::bigint"
        )
    }
}

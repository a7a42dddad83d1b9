//! A writer on a partitioned table mirrored into a plain twin table (the oracle of
//! docs/design.md §2.12), for the tree migrations of `partitioned_run`.
//!
//! The partitioned table and its twin have the columns `id bigint`, `k` (the partition key,
//! of any type), `amount numeric` and `customer_id int`; `id` alone identifies a row. Each
//! transaction runs one to three statements, every one on the table and then on the twin in
//! the same transaction, with the same number of rows affected: inserts of new ids, updates
//! of `amount`, deletes, and updates of the partition key `k` (a row moves to another
//! partition when its new key falls outside its partition's bound; the writer counts the
//! moves it made, read from the row's `tableoid` before and after). Rows whose `id` is a
//! multiple of [`PINNED_EVERY`] are never written (a test may reference them by foreign
//! key). The statements name every column and use no parameters, so they keep working on
//! the migrated tree after the cutover.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Transaction};

/// Rows whose `id` is a multiple of this are never updated or deleted by the writer.
pub const PINNED_EVERY: i64 = 50;

/// A new partition key value, as an SQL literal (random, from the writer's generator).
pub type KeyFn = fn(&mut StdRng) -> String;

/// What the writer did (counts of committed work) and the errors it met.
#[derive(Debug, Default)]
pub struct WriterReport {
    /// Transactions committed.
    pub transactions: u64,
    /// Rows moved to another partition by a committed update of the partition key.
    pub moves: u64,
    /// Rows inserted, updated (amount) and deleted by committed transactions.
    pub inserts: u64,
    pub updates: u64,
    pub deletes: u64,
    /// Errors (each stops the writer: the oracle is void after one).
    pub errors: Vec<String>,
}

#[derive(Default)]
struct Counters {
    transactions: AtomicU64,
    moves: AtomicU64,
    inserts: AtomicU64,
    updates: AtomicU64,
    deletes: AtomicU64,
}

/// A running writer ([`TreeWriter::start`]).
pub struct TreeWriter {
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    handle: JoinHandle<Option<String>>,
}

/// The work of one statement, committed with its transaction.
#[derive(Default)]
struct Done {
    moves: u64,
    inserts: u64,
    updates: u64,
    deletes: u64,
}

struct Loop {
    client: Client,
    table: String,
    twin: String,
    key: KeyFn,
    rng: StdRng,
    next_id: i64,
    pause: Duration,
}

impl TreeWriter {
    /// Starts writing `table` and `twin` (both already holding the same rows, ids below
    /// `first_id`) on a session of its own: new rows get ids from `first_id` up, new
    /// partition keys come from `key`, the choices from a generator seeded with `seed`;
    /// `pause` between transactions keeps the writer light (zero: as fast as it can).
    pub fn start(
        client: Client,
        table: &str,
        twin: &str,
        first_id: i64,
        key: KeyFn,
        seed: u64,
        pause: Duration,
    ) -> TreeWriter {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let mut writer = Loop {
            client,
            table: table.to_string(),
            twin: twin.to_string(),
            key,
            rng: StdRng::seed_from_u64(seed),
            next_id: first_id,
            pause,
        };
        let (s, c) = (stop.clone(), counters.clone());
        let handle = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                match writer.transaction().await {
                    Ok(done) => {
                        c.transactions.fetch_add(1, Ordering::Relaxed);
                        c.moves.fetch_add(done.moves, Ordering::Relaxed);
                        c.inserts.fetch_add(done.inserts, Ordering::Relaxed);
                        c.updates.fetch_add(done.updates, Ordering::Relaxed);
                        c.deletes.fetch_add(done.deletes, Ordering::Relaxed);
                    }
                    Err(e) => return Some(e),
                }
                if !writer.pause.is_zero() {
                    tokio::time::sleep(writer.pause).await;
                }
            }
            None
        });
        TreeWriter {
            stop,
            counters,
            handle,
        }
    }

    /// Transactions committed so far.
    pub fn transactions(&self) -> u64 {
        self.counters.transactions.load(Ordering::Relaxed)
    }

    /// Rows moved between partitions so far (committed).
    pub fn moves(&self) -> u64 {
        self.counters.moves.load(Ordering::Relaxed)
    }

    /// Whether the writer stopped on an error.
    pub fn failed(&self) -> bool {
        self.handle.is_finished()
    }

    /// Stops the writer after its current transaction; what it did.
    pub async fn stop(self) -> WriterReport {
        self.stop.store(true, Ordering::Relaxed);
        let error = self.handle.await.unwrap();
        let c = &self.counters;
        WriterReport {
            transactions: c.transactions.load(Ordering::Relaxed),
            moves: c.moves.load(Ordering::Relaxed),
            inserts: c.inserts.load(Ordering::Relaxed),
            updates: c.updates.load(Ordering::Relaxed),
            deletes: c.deletes.load(Ordering::Relaxed),
            errors: error.into_iter().collect(),
        }
    }
}

impl Loop {
    /// One transaction of one to three mirrored statements.
    async fn transaction(&mut self) -> Result<Done, String> {
        let statements = self.rng.random_range(1..=3);
        let ops: Vec<(u32, i64, String, String)> = (0..statements)
            .map(|_| {
                let op = self.rng.random_range(0..5u32);
                let id = self.existing_id();
                let key = (self.key)(&mut self.rng);
                let amount = format!(
                    "{}.{:02}",
                    self.rng.random_range(0..100_000),
                    self.rng.random_range(0..100)
                );
                (op, id, key, amount)
            })
            .collect();
        let (table, twin) = (self.table.clone(), self.twin.clone());
        let mut next_id = self.next_id;
        let tx = self.client.transaction().await.map_err(|e| e.to_string())?;
        let mut done = Done::default();
        for (op, id, key, amount) in ops {
            let result = match op {
                0 => {
                    next_id += 1;
                    let customer = 1 + next_id % 100;
                    let sql = |t: &str| {
                        format!(
                            "INSERT INTO {t} (id, k, amount, customer_id) VALUES ({next_id}, {key}, {amount}, {customer})"
                        )
                    };
                    mirrored(&tx, &sql(&table), &sql(&twin))
                        .await
                        .map(|n| done.inserts += n)
                }
                1 => {
                    let sql =
                        |t: &str| format!("UPDATE {t} SET amount = amount + 0.25 WHERE id = {id}");
                    mirrored(&tx, &sql(&table), &sql(&twin))
                        .await
                        .map(|n| done.updates += n)
                }
                2 => {
                    let sql = |t: &str| format!("DELETE FROM {t} WHERE id = {id}");
                    mirrored(&tx, &sql(&table), &sql(&twin))
                        .await
                        .map(|n| done.deletes += n)
                }
                _ => move_row(&tx, &table, &twin, id, &key)
                    .await
                    .map(|moved| done.moves += u64::from(moved)),
            };
            if let Err(e) = result {
                tx.rollback().await.ok();
                return Err(e);
            }
        }
        tx.commit().await.map_err(|e| format!("COMMIT: {e}"))?;
        self.next_id = next_id;
        Ok(done)
    }

    /// An id that may exist (deleted ones included), never a pinned one.
    fn existing_id(&mut self) -> i64 {
        let id = self.rng.random_range(1..self.next_id.max(2));
        if id % PINNED_EVERY == 0 { id + 1 } else { id }
    }
}

/// `on_table`, then `on_twin`, in `tx`; the rows affected (the same on both, or an error).
async fn mirrored(tx: &Transaction<'_>, on_table: &str, on_twin: &str) -> Result<u64, String> {
    let a = tx
        .execute(on_table, &[])
        .await
        .map_err(|e| format!("{on_table}: {e}"))?;
    let b = tx
        .execute(on_twin, &[])
        .await
        .map_err(|e| format!("{on_twin}: {e}"))?;
    if a != b {
        return Err(format!(
            "the twin diverged: {a} rows on the table, {b} on the twin: {on_table}"
        ));
    }
    Ok(a)
}

/// Sets the partition key of row `id` to `key` on the table and the twin; whether the row
/// changed partition (its `tableoid` before and after, on the table).
async fn move_row(
    tx: &Transaction<'_>,
    table: &str,
    twin: &str,
    id: i64,
    key: &str,
) -> Result<bool, String> {
    let partition = |t: &str| format!("SELECT tableoid::oid FROM {t} WHERE id = {id}");
    let before = tx
        .query_opt(&partition(table), &[])
        .await
        .map_err(|e| e.to_string())?
        .map(|r| r.get::<_, u32>(0));
    let sql = |t: &str| format!("UPDATE {t} SET k = {key} WHERE id = {id}");
    mirrored(tx, &sql(table), &sql(twin)).await?;
    let after = tx
        .query_opt(&partition(table), &[])
        .await
        .map_err(|e| e.to_string())?
        .map(|r| r.get::<_, u32>(0));
    Ok(before.is_some() && before != after)
}

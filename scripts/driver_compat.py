"""The driver compatibility matrix (scripts/driver-compat.sh runs this; see the README,
"What the application sees at the cutover").

Against one PostgreSQL server (DSN in $DC_DSN) and doppel ($DC_DOPPEL), for each ALTER kind:
recreates `orders`, runs typical statements of real drivers continuously from several
workers (asyncpg; psycopg 3 in autocommit and in transactions, with and without server-side
preparation; SQLAlchemy's ORM over psycopg; pgjdbc when its jar is given), performs the change
once through doppel's shadow and cutover (`--strategy shadow`: by default an ADD COLUMN or an
ADD CHECK would run on the table itself) and once as the plain ALTER TABLE, and records per worker the errors (SQLSTATE and count), how it
recovered (by itself, or only after reconnecting), its worst latency, and whether every
write that reported success is in the table afterwards. Prints a markdown table and writes it
to $DC_OUT.
"""

import asyncio
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import asyncpg
import psycopg
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

DSN = os.environ["DC_DSN"]
DOPPEL = os.environ["DC_DOPPEL"]
WORK = os.environ.get("DC_WORK", "/tmp")
OUT = os.environ.get("DC_OUT")
ROWS = int(os.environ.get("DC_ROWS", "20000"))
PAUSE = float(os.environ.get("DC_PAUSE", "0.01"))  # between two operations of a worker (s)
AFTER = float(os.environ.get("DC_AFTER", "3"))  # seconds of work after the change
GIVE_UP = 30  # consecutive errors after which a worker replaces its connection
JDBC_JAR = os.environ.get("DC_JDBC_JAR")  # pgjdbc's jar: pgjdbc workers only when set
HERE = os.path.dirname(os.path.abspath(__file__))
# Set from 1 s before the change until the workers stop: the window the worst latency is
# taken over (the warm-up, JVM start-up included, is left out).
MEASURING = threading.Event()
MEASURE_FILE = os.path.join(WORK, f"measuring-{os.getpid()}")

ALTERS = [
    ("ADD COLUMN", "ADD COLUMN note2 text"),
    ("type change", "ALTER COLUMN customer_id TYPE bigint"),
    ("ADD CHECK", "ADD CONSTRAINT amount_nonneg CHECK (amount >= 0)"),
]


@dataclass
class Outcome:
    ops: int = 0
    errors: dict = field(default_factory=dict)  # sqlstate -> count
    reconnects: int = 0
    errors_before_recovery: int = 0
    worst: float = 0.0
    written: set = field(default_factory=set)  # ids inserted (commit reported success)
    deleted: set = field(default_factory=set)
    updates: dict = field(default_factory=dict)  # id -> successful increments

    def recovery(self) -> str:
        if not self.errors:
            return "-"
        if self.reconnects:
            return "until reconnect"
        return "by itself"

    def describe_errors(self) -> str:
        if not self.errors:
            return "none"
        return ", ".join(f"{k} x{v}" for k, v in sorted(self.errors.items()))


def sqlstate(e: BaseException) -> str:
    for attr in ("sqlstate", "pgcode"):
        v = getattr(e, attr, None)
        if v:
            return str(v)
    orig = getattr(e, "orig", None)
    if orig is not None and orig is not e:
        return sqlstate(orig)
    return type(e).__name__


class Worker(threading.Thread):
    """One driver case: `op(conn, i)` in a loop on its own connection until stopped."""

    def __init__(self, name, stop):
        super().__init__(daemon=True)
        self.name_ = name
        self.stop = stop
        self.out = Outcome()
        self.streak = 0
        self.ready = threading.Event()
        self.ready.set()

    def record_error(self, e):
        code = sqlstate(e)
        self.out.errors[code] = self.out.errors.get(code, 0) + 1
        self.streak += 1

    def timed(self, fn):
        measured = MEASURING.is_set()
        started = time.monotonic()
        try:
            fn()
            self.streak = 0
        except Exception as e:  # noqa: BLE001 - every driver error is a result here
            self.record_error(e)
        finally:
            if measured:
                self.out.worst = max(self.out.worst, time.monotonic() - started)
            self.out.ops += 1


class PsycopgWorker(Worker):
    def __init__(self, name, stop, op, autocommit, prepare):
        super().__init__(name, stop)
        self.op, self.autocommit, self.prepare = op, autocommit, prepare

    def connect(self):
        return psycopg.connect(DSN, autocommit=self.autocommit)

    def run(self):
        conn = self.connect()
        i = 0
        while not self.stop.is_set():
            i += 1

            def once():
                if self.autocommit:
                    self.op(self, conn, i, self.prepare)
                else:
                    with conn.transaction():
                        self.op(self, conn, i, self.prepare)

            self.timed(once)
            if self.streak >= GIVE_UP:
                conn.close()
                conn = self.connect()
                self.out.reconnects += 1
                self.streak = 0
            time.sleep(PAUSE)
        conn.close()


def pg_select_star(w, conn, i, prepare):
    conn.execute("SELECT * FROM orders WHERE id = %s", (i % ROWS + 1,), prepare=prepare).fetchall()


def pg_whole_row(w, conn, i, prepare):
    conn.execute("SELECT o FROM orders o WHERE id = %s", (i % ROWS + 1,), prepare=prepare).fetchall()


def pg_insert(w, conn, i, prepare):
    new_id = 10_000_000 + i
    conn.execute(
        "INSERT INTO orders (id, customer_id, amount) VALUES (%s, %s, 0)",
        (new_id, i),
        prepare=prepare,
    )
    if conn.autocommit:
        w.out.written.add(new_id)
    else:
        w.pending = new_id


class PsycopgTxInsert(PsycopgWorker):
    """Inserts in explicit transactions: a row counts as written once COMMIT returned."""

    def run(self):
        conn = self.connect()
        i = 0
        while not self.stop.is_set():
            i += 1
            self.pending = None

            def once():
                with conn.transaction():
                    pg_insert(self, conn, i, self.prepare)
                if self.pending is not None:
                    self.out.written.add(self.pending)

            self.timed(once)
            time.sleep(PAUSE)
        conn.close()


class AsyncpgWorker(Worker):
    def __init__(self, name, stop, op):
        super().__init__(name, stop)
        self.op = op

    def run(self):
        asyncio.run(self.main())

    async def main(self):
        conn = await asyncpg.connect(DSN)
        i = 0
        while not self.stop.is_set():
            i += 1
            measured = MEASURING.is_set()
            started = time.monotonic()
            try:
                await self.op(self, conn, i)
                self.streak = 0
            except Exception as e:  # noqa: BLE001
                self.record_error(e)
            if measured:
                self.out.worst = max(self.out.worst, time.monotonic() - started)
            self.out.ops += 1
            if self.streak >= GIVE_UP:
                await conn.close()
                conn = await asyncpg.connect(DSN)
                self.out.reconnects += 1
                self.streak = 0
            await asyncio.sleep(PAUSE)
        await conn.close()


async def apg_select_star(w, conn, i):
    await conn.fetchrow("SELECT * FROM orders WHERE id = $1", i % ROWS + 1)


async def apg_whole_row(w, conn, i):
    await conn.fetchrow("SELECT o FROM orders o WHERE id = $1", i % ROWS + 1)


async def apg_update(w, conn, i):
    key = i % 1000 + 1
    await conn.execute("UPDATE orders SET amount = amount + 1 WHERE id = $1", key)
    w.out.updates[key] = w.out.updates.get(key, 0) + 1


class JdbcWorker(Worker):
    """A pgjdbc worker (scripts/DriverCompat.java) in its own JVM, `prepareThreshold=1`."""

    serial = 0

    def __init__(self, name, stop, kind):
        super().__init__(name, stop)
        self.kind = kind
        self.ready.clear()

    def run(self):
        JdbcWorker.serial += 1
        stopfile = os.path.join(WORK, f"jdbc-stop-{os.getpid()}-{JdbcWorker.serial}")
        host_port_db = DSN.split("@", 1)[1]
        url = f"jdbc:postgresql://{host_port_db}?user=postgres&prepareThreshold=1&sslmode=disable"
        proc = subprocess.Popen(
            ["java", "-cp", JDBC_JAR, os.path.join(HERE, "DriverCompat.java"), url, self.kind,
             stopfile, str(int(PAUSE * 1000)), str(ROWS), MEASURE_FILE],
            stdout=subprocess.PIPE, text=True,
        )
        first = proc.stdout.readline()  # `ready` once connected and one query ran
        self.ready.set()
        self.stop.wait()
        open(stopfile, "w").close()
        rest, _ = proc.communicate()
        os.remove(stopfile)
        for line in (first + rest).splitlines():
            if not line.startswith("ops="):
                continue
            fields = dict(f.split("=", 1) for f in line.split())
            self.out.ops = int(fields["ops"])
            self.out.worst = float(fields["worst_ms"]) / 1000
            self.out.reconnects = int(fields["reconnects"])
            for pair in filter(None, fields.get("errors", "").split(",")):
                code, count = pair.split(":")
                self.out.errors[code] = int(count)


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    customer_id: Mapped[int]
    amount: Mapped[int]
    note: Mapped[str | None]


class OrmWorker(Worker):
    """SQLAlchemy's ORM over psycopg: get, update, add and delete, each in a session."""

    def run(self):
        url = "postgresql+psycopg://" + DSN.split("://", 1)[1]
        engine = sa.create_engine(url, pool_size=1, max_overflow=0)
        i = 0
        while not self.stop.is_set():
            i += 1
            kind = i % 4

            def once():
                with Session(engine) as s, s.begin():
                    if kind == 0:
                        s.get(Order, 1001 + i % 1000)
                    elif kind == 1:
                        key = 1001 + i % 1000
                        s.get(Order, key).amount += 1
                        self.pending = ("update", key)
                    elif kind == 2:
                        s.add(Order(id=20_000_000 + i, customer_id=i, amount=0))
                        self.pending = ("add", 20_000_000 + i)
                    else:
                        victim = next(iter(self.out.written - self.out.deleted), None)
                        if victim is not None:
                            s.delete(s.get(Order, victim))
                            self.pending = ("delete", victim)
                done, key = self.pending or (None, None)
                if done == "update":
                    self.out.updates[key] = self.out.updates.get(key, 0) + 1
                elif done == "add":
                    self.out.written.add(key)
                elif done == "delete":
                    self.out.deleted.add(key)

            self.pending = None
            self.timed(once)
            if self.streak >= GIVE_UP:
                engine.dispose()
                self.out.reconnects += 1
                self.streak = 0
            time.sleep(PAUSE)
        engine.dispose()


def workers(stop):
    return [
        AsyncpgWorker("asyncpg: SELECT * (prepared)", stop, apg_select_star),
        AsyncpgWorker("asyncpg: SELECT o (whole row, prepared)", stop, apg_whole_row),
        AsyncpgWorker("asyncpg: UPDATE (prepared)", stop, apg_update),
        PsycopgWorker("psycopg autocommit: SELECT * prepared", stop, pg_select_star, True, True),
        PsycopgWorker("psycopg autocommit: SELECT o prepared", stop, pg_whole_row, True, True),
        PsycopgWorker("psycopg autocommit: SELECT * not prepared", stop, pg_select_star, True, False),
        PsycopgWorker("psycopg transaction: SELECT * prepared", stop, pg_select_star, False, True),
        PsycopgTxInsert("psycopg transaction: INSERT prepared", stop, None, False, True),
        OrmWorker("SQLAlchemy ORM (psycopg): get/update/add/delete", stop),
    ] + ([
        JdbcWorker("pgjdbc prepareThreshold=1: SELECT *", stop, "select-star"),
        JdbcWorker("pgjdbc prepareThreshold=1: SELECT o", stop, "whole-row"),
        JdbcWorker("pgjdbc prepareThreshold=1, in a transaction: SELECT *", stop, "select-star-tx"),
        JdbcWorker("pgjdbc prepareThreshold=1, in a transaction: SELECT o", stop, "whole-row-tx"),
    ] if JDBC_JAR else [])


def reset():
    with psycopg.connect(DSN, autocommit=True) as c:
        for (name,) in c.execute(
            "SELECT relname FROM pg_class WHERE relname LIKE '\\_doppel\\_%' AND relkind = 'r'"
        ).fetchall():
            c.execute(f'DROP TABLE IF EXISTS "{name}" CASCADE')
        c.execute("DROP TABLE IF EXISTS orders")
        c.execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int NOT NULL, amount int NOT NULL, note text)"
        )
        c.execute(
            f"INSERT INTO orders SELECT i, i, 0, 'n' || i FROM generate_series(1, {ROWS}) i"
        )
        c.execute("ANALYZE orders")


def change(mode, clause):
    """Performs the change; returns its wall time (s)."""
    started = time.monotonic()
    if mode == "doppel":
        out = subprocess.run(
            [DOPPEL, "run", "--dsn", DSN, "--table", "public.orders", "--alter", clause,
             "--strategy", "shadow", "--execute", "--progress", "lines", "--work-dir", WORK, "--rollback-dir", WORK],
            capture_output=True, text=True,
        )
        if out.returncode != 0:
            sys.exit(f"doppel failed ({out.returncode}): {out.stderr[-2000:]}")
    else:
        with psycopg.connect(DSN, autocommit=True) as c:
            c.execute(f"ALTER TABLE orders {clause}")
    return time.monotonic() - started


def lost_writes(ws):
    lost = 0
    with psycopg.connect(DSN, autocommit=True) as c:
        for w in ws:
            expected = list(w.out.written - w.out.deleted)
            if expected:
                n = c.execute("SELECT count(*) FROM orders WHERE id = ANY(%s)", (expected,)).fetchone()[0]
                lost += len(expected) - n
            for key, times in w.out.updates.items():
                amount = c.execute("SELECT amount FROM orders WHERE id = %s", (key,)).fetchone()[0]
                lost += max(0, times - amount)
    return lost


def main():
    rows = []
    for label, clause in ALTERS:
        for mode in ("doppel", "plain ALTER"):
            reset()
            stop = threading.Event()
            ws = workers(stop)
            for w in ws:
                w.start()
            for w in ws:
                w.ready.wait(60)
            time.sleep(1)
            MEASURING.set()
            open(MEASURE_FILE, "w").close()
            time.sleep(1)
            took = change(mode, clause)
            time.sleep(AFTER)
            stop.set()
            for w in ws:
                w.join()
            MEASURING.clear()
            os.remove(MEASURE_FILE)
            lost = lost_writes(ws)
            ops = sum(w.out.ops for w in ws)
            print(f"{label} via {mode}: {took:.1f} s, {ops} operations, lost writes: {lost}", flush=True)
            for w in ws:
                rows.append((w.name_, label, mode, w.out.describe_errors(), w.out.recovery(),
                             f"{w.out.worst * 1000:.0f}", lost))
    lines = [
        "| driver and statement | ALTER | through | errors (SQLSTATE x count) | recovery | worst latency (ms) | lost writes (run) |",
        "|---|---|---|---|---|---:|---:|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} | {e} | {f} | {g} |" for a, b, c, d, e, f, g in rows]
    versions = f"asyncpg {asyncpg.__version__}, psycopg {psycopg.__version__}, SQLAlchemy {sa.__version__}"
    if JDBC_JAR:
        versions += f", pgjdbc {os.path.basename(os.path.realpath(JDBC_JAR))}"
    text = f"Drivers: {versions}; {ROWS} rows; {len(workers(threading.Event()))} workers, one operation each every {PAUSE * 1000:.0f} ms; worst latency from 1 s before the change until {AFTER:.0f} s after it.\n\n" + "\n".join(lines) + "\n"
    print(text)
    if OUT:
        with open(OUT, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()

// One pgjdbc worker of the driver compatibility matrix (scripts/driver_compat.py starts it
// with `java -cp postgresql.jar scripts/DriverCompat.java URL KIND STOPFILE PAUSE_MS ROWS
// MEASURING`).
// KIND: `select-star` or `whole-row` (a PreparedStatement per execution, served from pgjdbc's
// per-connection statement cache, server-side prepared from the first execution with
// prepareThreshold=1 in URL), in autocommit; with `-tx` appended, each execution in its own
// transaction (autocommit off, COMMIT after it, ROLLBACK after an error). Runs until STOPFILE exists, replaces its connection
// after 30 errors in a row, then prints one line:
// `ops=N worst_ms=X reconnects=R errors=SQLSTATE:count,...`.
import java.nio.file.Files;
import java.nio.file.Path;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.util.Map;
import java.util.TreeMap;

public class DriverCompat {
    public static void main(String[] args) throws Exception {
        String url = args[0];
        boolean tx = args[1].endsWith("-tx");
        String sql = args[1].startsWith("whole-row")
                ? "SELECT o FROM orders o WHERE id = ?"
                : "SELECT * FROM orders WHERE id = ?";
        Path stop = Path.of(args[2]);
        long pause = Long.parseLong(args[3]);
        int rows = Integer.parseInt(args.length > 4 ? args[4] : "20000");
        // The worst latency counts only while this file exists (the window around the change).
        Path measuring = args.length > 5 ? Path.of(args[5]) : null;
        Map<String, Integer> errors = new TreeMap<>();
        long ops = 0, worstNanos = 0;
        int streak = 0, reconnects = 0;
        Connection conn = DriverManager.getConnection(url);
        conn.setAutoCommit(!tx);
        try (PreparedStatement ps = conn.prepareStatement(sql)) {
            ps.setLong(1, 1);
            ps.executeQuery().close();
        }
        if (tx) {
            conn.commit();
        }
        System.out.println("ready");
        System.out.flush();
        while (!Files.exists(stop)) {
            ops++;
            boolean measured = measuring == null || Files.exists(measuring);
            long started = System.nanoTime();
            try (PreparedStatement ps = conn.prepareStatement(sql)) {
                ps.setLong(1, ops % rows + 1);
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) {
                        rs.getObject(1);
                    }
                }
                if (tx) {
                    conn.commit();
                }
                streak = 0;
            } catch (SQLException e) {
                if (tx) {
                    conn.rollback();
                }
                String state = e.getSQLState() == null ? e.getClass().getSimpleName() : e.getSQLState();
                errors.merge(state, 1, Integer::sum);
                streak++;
            }
            if (measured) {
                worstNanos = Math.max(worstNanos, System.nanoTime() - started);
            }
            if (streak >= 30) {
                conn.close();
                conn = DriverManager.getConnection(url);
                conn.setAutoCommit(!tx);
                reconnects++;
                streak = 0;
            }
            Thread.sleep(pause);
        }
        conn.close();
        StringBuilder e = new StringBuilder();
        errors.forEach((k, v) -> e.append(e.length() == 0 ? "" : ",").append(k).append(':').append(v));
        System.out.printf("ops=%d worst_ms=%.0f reconnects=%d errors=%s%n", ops, worstNanos / 1e6, reconnects, e);
    }
}

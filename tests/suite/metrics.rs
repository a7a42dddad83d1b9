//! The Prometheus endpoint (`--metrics-listen`) scraped during a real run: its values agree
//! with `status --json` read at the same moment (a postponed cutover holds them still), the
//! throttle shows with its reason as a label, and after the cutover the endpoint stays up for
//! the scrape that sees the exit, the attempt and the lock hold. The Grafana dashboard in
//! `docker/` queries only metrics the endpoint exports, and the compose file scrapes it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use doppel::cancel::Cancel;
use doppel::ops::control;
use doppel::run::Outcome;
use doppel_testkit::workload;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{self, Tune};

/// `GET /metrics` on `addr`: the samples, `name{labels}` → value, and the content type.
async fn scrape(addr: SocketAddr) -> (HashMap<String, f64>, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: doppel\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_string();
    let mut samples = HashMap::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, value) = line.rsplit_once(' ').expect("name value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("a number: {line}"));
        samples.insert(name.to_string(), value);
    }
    (samples, content_type)
}

async fn status_json(socket: &Path) -> serde_json::Value {
    serde_json::from_str(&control::send(socket, "status --json").await.unwrap()).unwrap()
}

fn get(samples: &HashMap<String, f64>, name: &str) -> f64 {
    *samples
        .get(name)
        .unwrap_or_else(|| panic!("{name} is not exported: {samples:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_agrees_with_status_json_during_a_run_and_shows_the_exit() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    workload::create_id_v_table(&client, "t", 20_000)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ctl.sock");
    let flag = dir.path().join("hold");
    std::fs::write(&flag, b"").unwrap();
    let mut options = common::options(dir.path(), "t", &["ALTER COLUMN v TYPE bigint"])
        .control_socket(socket.clone());
    options.postpone_cutover_flag_file = Some(flag.clone());
    options.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let run =
        tokio::spawn(async move { common::run_paused(&config, &options, &Cancel::never()).await });
    let postponed = common::wait_until_async(Duration::from_secs(120), || async {
        control::send(&socket, "status --json")
            .await
            .is_ok_and(|r| r.contains("\"kind\":\"postponed\""))
    })
    .await;
    assert!(postponed, "the run reaches its postponed cutover");

    let json = status_json(&socket).await;
    let url = json["metrics"]
        .as_str()
        .expect("status --json names the endpoint");
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .parse()
        .unwrap();
    let (m, content_type) = scrape(addr).await;
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    assert_eq!(get(&m, "doppel_phase{phase=\"cutover\"}"), 1.0);
    assert_eq!(get(&m, "doppel_phase{phase=\"copying\"}"), 0.0);
    assert_eq!(get(&m, "doppel_waiting{what=\"postponed\"}"), 1.0);
    assert_eq!(get(&m, "doppel_waiting{what=\"lock\"}"), 0.0);
    for (metric, field) in [
        ("doppel_rows_copied", "rows_copied"),
        ("doppel_rows_estimate", "rows_estimate"),
        ("doppel_rows_verified", "rows_verified"),
        ("doppel_chunks_copied", "chunks"),
        ("doppel_changes_applied", "applied"),
        ("doppel_changes_received", "received"),
    ] {
        assert_eq!(
            get(&m, metric),
            json[field].as_f64().unwrap(),
            "{metric} against status --json {field}: {json}"
        );
    }
    assert_eq!(get(&m, "doppel_rows_copied"), 20_000.0);
    assert_eq!(get(&m, "doppel_rows_verified"), 20_000.0);
    // Values that move while postponed (each fence is spooled, the slot's retained WAL is
    // sampled every 100 ms): compared on a scrape between two equal `status --json` readings.
    for (metric, field) in [
        ("doppel_spool_bytes", "spool_bytes"),
        ("doppel_retained_wal_bytes", "retained_wal_bytes"),
    ] {
        let mut seen = Vec::new();
        let mut agreed = false;
        for _ in 0..100 {
            let before = status_json(&socket).await[field].as_f64().unwrap();
            let v = get(&scrape(addr).await.0, metric);
            let after = status_json(&socket).await[field].as_f64().unwrap();
            seen.push((before, v, after));
            if before == after {
                agreed = v == before;
                break;
            }
        }
        assert!(agreed, "{metric} against status --json {field}: {seen:?}");
    }
    assert!(get(&m, "doppel_retained_wal_bytes") > 0.0);
    assert_eq!(
        get(&m, "doppel_chunk_duration_seconds_count"),
        json["chunks"].as_f64().unwrap()
    );
    assert_eq!(get(&m, "doppel_exit_code"), -1.0);
    for kind in doppel::ops::throttle::REASON_KINDS {
        assert_eq!(
            get(&m, &format!("doppel_throttled{{reason=\"{kind}\"}}")),
            0.0
        );
    }

    // The operator's throttle shows with its reason.
    control::send(&socket, "throttle").await.unwrap();
    let throttled = common::wait_until_async(Duration::from_secs(10), || async {
        scrape(addr)
            .await
            .0
            .get("doppel_throttled{reason=\"operator\"}")
            == Some(&1.0)
    })
    .await;
    assert!(throttled, "doppel_throttled{{reason=\"operator\"}} 1");
    control::send(&socket, "no-throttle").await.unwrap();

    // The cutover: the endpoint stays up for a scrape that sees how the run ended.
    std::fs::remove_file(&flag).unwrap();
    let last = std::sync::Mutex::new(HashMap::new());
    let ended = common::wait_until_async(Duration::from_secs(60), || async {
        let samples = scrape(addr).await.0;
        let done = samples.get("doppel_exit_code") == Some(&0.0);
        *last.lock().unwrap() = samples;
        done
    })
    .await;
    let last = last.into_inner().unwrap();
    assert!(ended, "the exit is exported: {last:?}");
    assert_eq!(get(&last, "doppel_exit{class=\"migrated\"}"), 1.0);
    assert_eq!(get(&last, "doppel_phase{phase=\"done\"}"), 1.0);
    assert_eq!(
        get(&last, "doppel_cutover_attempts_total{outcome=\"granted\"}"),
        1.0
    );
    assert!(get(&last, "doppel_lock_hold_seconds_count") >= 1.0);
    assert!(get(&last, "doppel_lock_hold_seconds_sum") > 0.0);
    let outcome = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the run ends after that scrape")
        .unwrap()
        .unwrap();
    assert!(matches!(outcome, Outcome::Migrated(_)));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the endpoint is gone with the run"
    );
}

/// Every `doppel_*` metric the Grafana dashboard queries is one the endpoint exports (a
/// histogram's `_bucket`, `_sum` and `_count` included), and the compose file's Prometheus
/// scrapes doppel's endpoint.
#[test]
fn the_dashboard_queries_only_exported_metrics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana/dashboards/doppel.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let exported = doppel::ops::metrics::Metrics::new().names();
    let mut queried = Vec::new();
    collect_exprs(&dashboard, &mut queried);
    assert!(
        queried.len() >= 10,
        "the dashboard has its panels: {queried:?}"
    );
    let mut names = Vec::new();
    for expr in &queried {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("doppel_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            names.push(name);
        }
    }
    for name in &names {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|b| exported.iter().any(|e| e == b))
            .unwrap_or(name);
        assert!(
            exported.iter().any(|e| e == base),
            "the dashboard queries {name}, which is not exported ({exported:?})"
        );
    }
    for must in [
        "doppel_phase",
        "doppel_throttled",
        "doppel_lock_hold_seconds_bucket",
        "doppel_replication_lag_seconds",
        "doppel_revert_window_lossless",
    ] {
        assert!(
            names.iter().any(|n| n == must),
            "the dashboard shows {must}"
        );
    }
    let prometheus = std::fs::read_to_string(root.join("prometheus.yml")).unwrap();
    assert!(prometheus.contains("doppel:9187"), "{prometheus}");
    let compose = std::fs::read_to_string(root.join("compose.yaml")).unwrap();
    assert!(compose.contains("prometheus.yml"), "{compose}");
    assert!(compose.contains("--metrics-listen"), "{compose}");
}

/// Every `expr` string in the dashboard.
fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

//! The bench keeps working: `mf bench --quick` reports every system and
//! workload with sane numbers, `mf bench sweep --quick` writes its report,
//! and `mf serve` / `mf call` talk to each other. Figures are checked for
//! sanity only (never against a timing threshold: the machine is shared).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

const MF: &str = env!("CARGO_BIN_EXE_mf");

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mf-bench-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(args: &[&str]) -> String {
    let out = Command::new(MF).args(args).output().expect("run mf");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "mf {args:?} failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn bench_quick_reports_every_system_and_workload() {
    let dir = scratch("quick");
    let json = dir.join("bench.json");
    let plots = dir.join("plots");
    let out = run(&[
        "bench",
        "--quick",
        "--no-progress",
        "--json",
        json.to_str().unwrap(),
        "--plot",
        plots.to_str().unwrap(),
    ]);
    for heading in
        ["## W1 ping-pong", "## W2 pipeline", "## W3 short connections", "## W4 large", "## W5 fan-in"]
    {
        assert!(out.contains(heading), "no {heading:?} table in:\n{out}");
    }
    for s in ["raw-std", "raw-tokio", "mf-mio", "mf-tokio"] {
        assert!(out.contains(&format!("| {s} |")), "no {s} row in:\n{out}");
    }
    for p in ["P1", "P2", "P3", "P4", "P5", "P6", "P7"] {
        assert!(out.contains(&format!("| {p} |")), "no verdict for {p}");
    }
    assert!(
        out.contains("What does a message API cost") && out.contains("Which TCP socket parameters matter")
    );

    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let records = doc["records"].as_array().unwrap();
    for s in ["raw-std", "raw-tokio", "mf-mio", "mf-tokio"] {
        for w in ["W1", "W2", "W3", "W4", "W5"] {
            for pin in ["same", "split"] {
                let r = records
                    .iter()
                    .find(|r| {
                        r["system"] == s
                            && r["workload"] == w
                            && r["pin"] == pin
                            && r["knobs_name"] == "defaults"
                    })
                    .unwrap_or_else(|| panic!("no record for {s} {w} pin {pin}"));
                let f = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{s} {w}: {k} missing"));
                assert!(f("calls") >= 1.0, "{s} {w}: no calls");
                assert!(
                    f("p50_us") > 0.0 && f("p50_us") <= f("p99_us") && f("p99_us") <= f("p999_us"),
                    "{r}"
                );
                assert!(f("calls_per_s") > 0.0 && f("calls_per_s").is_finite(), "{r}");
                assert!(f("writes_per_msg") > 0.0 && f("reads_per_msg") > 0.0, "syscalls not counted: {r}");
                assert!(f("cpu_us_per_msg") > 0.0 && f("peak_rss_mib") > 0.0, "{r}");
                let floor = if w == "W5" { "raw-tokio" } else { "raw-std" };
                if s != floor {
                    let t = r["ratio"]["throughput"].as_f64().unwrap_or_else(|| panic!("{s} {w}: no ratio"));
                    assert!(t > 0.0 && t.is_finite(), "{r}");
                }
            }
        }
    }
    // Pipelining batches: far fewer writes than messages for the raw floor.
    let raw_w2 = records
        .iter()
        .find(|r| {
            r["system"] == "raw-std"
                && r["workload"] == "W2"
                && r["size_bytes"] == 64
                && r["knobs_name"] == "defaults"
        })
        .unwrap();
    assert!(raw_w2["writes_per_msg"].as_f64().unwrap() < 0.5, "{raw_w2}");
    assert!(doc["idle_session_client_bytes"].as_u64().unwrap() > 0);
    // P6's differential count divides by every call made, so a pipeline's
    // in-flight tail (up to 256 calls, here against a 400-call difference)
    // cannot skew it: one allocation per message (the received body) for the
    // drivers, none for the raw systems, for W1 and W2.
    let allocs = doc["allocations_per_msg"].as_array().unwrap();
    assert_eq!(allocs.len(), 8, "{allocs:?}");
    for a in allocs {
        let (s, w, n) = (a[0].as_str().unwrap(), a[1].as_str().unwrap(), a[2].as_f64().unwrap());
        let want = if s.starts_with("raw-") { 0.0 } else { 1.0 };
        assert!((n - want).abs() < 0.05, "{s} {w}: {n} allocations per message, expected {want}");
    }
    assert_eq!(
        doc["targets"].as_array().unwrap().len(),
        2 * (6 * 2 + 1),
        "P1-P5, P7 per pin, P6 once, per driver"
    );

    let svgs: Vec<_> = std::fs::read_dir(&plots).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(svgs.iter().any(|p| p.to_string_lossy().contains("latency-W1")), "{svgs:?}");
    assert!(svgs.iter().any(|p| p.to_string_lossy().contains("size-W2")), "{svgs:?}");
    for p in &svgs {
        let text = std::fs::read_to_string(p).unwrap();
        assert!(
            text.contains("<svg") && text.contains("mf-mio"),
            "{} is not a chart with a legend",
            p.display()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sweep_quick_writes_a_knob_report() {
    let dir = scratch("sweep");
    let report = dir.join("sweep.md");
    run(&[
        "bench",
        "sweep",
        "--quick",
        "--no-progress",
        "--pin",
        "same",
        "--systems",
        "raw-std,mf-mio",
        "--time-ms",
        "20",
        "--out",
        report.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&report).unwrap();
    for needle in [
        "overhead over the raw stream",
        "### nodelay off",
        "### quickack on",
        "### sndbuf 64 KiB rcvbuf 64 KiB",
        "### batching off",
        "W3 short connections 64 B",
    ] {
        assert!(text.contains(needle), "no {needle:?} in the sweep report:\n{text}");
    }
    assert!(!text.contains("## Failed runs"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Kills the server it holds when dropped, even if the test fails.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(system: &str) -> (Server, String) {
    let mut child = Command::new(MF)
        .args(["serve", "127.0.0.1:0", "--system", system, "--workers", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start mf serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().to_string();
    assert!(line.contains("listening on"), "unexpected first line {line:?}");
    (Server(child), addr)
}

#[test]
fn serve_and_call_talk_across_a_socket() {
    for (server, client) in
        [("mf-mio", "mf-mio"), ("mf-mio", "mf-tokio"), ("raw-std", "raw-std"), ("raw-tokio", "raw-std")]
    {
        let (_server, addr) = serve(server);
        let reply = run(&["call", &addr, "hello there", "--system", client]);
        assert_eq!(reply.trim_end(), "hello there", "{server} <- {client}");
        let load = run(&["call", &addr, "x", "--system", client, "--count", "300", "--size", "64"]);
        assert!(load.contains(" 300 calls") && load.contains("every reply checked"), "{load}");
        let pipe = run(&["call", &addr, "x", "--system", client, "--count", "500", "--mode", "pipeline"]);
        assert!(pipe.contains(" 500 calls"), "{pipe}");
    }
}

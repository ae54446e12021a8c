//! Plugins that stall, flood or lie, run through `fleetmeter plugin run|aggregate` as a plugin
//! author would: each class ends within its limit, costs the call, and leaves the output
//! readable. Every command runs under a watchdog: a hang fails the test instead of hanging
//! the suite.

use std::{
    io::Read,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::support::{cache_dir, fixture, repo_root};

/// What a run printed, and how long it took.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Far longer than any limit used here, far shorter than the hour the fixtures sleep.
const WATCHDOG: Duration = Duration::from_secs(60);

fn fleetmeter(args: &[&str], env: &[(&str, &str)]) -> Run {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleetmeter"))
        .args(args)
        .current_dir(repo_root())
        .env("FLEETMETER_CACHE_DIR", cache_dir())
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run fleetmeter");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = Vec::new();
        stderr.read_to_end(&mut s).unwrap();
        String::from_utf8_lossy(&s).into_owned()
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > WATCHDOG {
            let _ = child.kill();
            panic!(
                "fleetmeter {args:?} still running after {WATCHDOG:?}: a plugin stalled the host"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code: status.code(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        took: started.elapsed(),
    }
}

fn path(name: &str) -> String {
    fixture(name).display().to_string()
}

/// Exit 1, one `error:` line naming the problem, no panic.
fn assert_clean_failure(run: &Run, expected: &str) {
    assert_eq!(run.code, Some(1), "stderr: {}", run.stderr);
    assert!(!run.stderr.contains("panicked at"), "{}", run.stderr);
    let last = run.stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "{}", run.stderr);
    assert!(last.contains(expected), "expected {expected:?} in {last:?}");
}

#[test]
fn a_sensor_sleeping_in_sample_costs_each_call_its_limit_only() {
    let run = fleetmeter(
        &[
            "plugin",
            "run",
            &path("misbehaving-sensor"),
            "-c",
            "mode=sleep",
            "-n",
            "3",
            "--timeout-ms",
            "300",
        ],
        &[],
    );
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    for n in 1..=3 {
        assert!(
            run.stderr.contains(&format!(
                "sample {n}: plugin misbehaving-sensor exceeded its time limit of 300ms per call"
            )),
            "{}",
            run.stderr
        );
    }
    // Three calls of 300 ms plus load: seconds, not the hour the plugin asked for.
    assert!(run.took < Duration::from_secs(30), "took {:?}", run.took);
}

#[test]
fn a_sensor_blocked_in_a_host_read_is_cut_off_and_the_command_still_exits() {
    // A FIFO nobody writes to: opening it blocks inside the host, in a WASI call.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let grant = format!("{}:/data", dir.path().display());
    let run = fleetmeter(
        &[
            "plugin",
            "run",
            &path("misbehaving-sensor"),
            "-c",
            "mode=read",
            "-c",
            "path=/data/fifo",
            "--dir",
            &grant,
            "-n",
            "2",
            "--timeout-ms",
            "300",
        ],
        &[],
    );
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("sample 2: plugin misbehaving-sensor exceeded its time limit of 300ms"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_sensor_sleeping_in_init_or_describe_fails_its_start_within_the_limit() {
    let run = fleetmeter(
        &[
            "plugin",
            "run",
            &path("misbehaving-sensor"),
            "-c",
            "mode=sleep-init",
            "--timeout-ms",
            "300",
        ],
        &[],
    );
    assert_clean_failure(
        &run,
        "failed while starting: exceeded its time limit of 300ms",
    );

    let run = fleetmeter(
        &[
            "plugin",
            "run",
            &path("raw-sensor"),
            "--env",
            "FIXTURE_DESCRIBE=sleep",
            "--timeout-ms",
            "300",
        ],
        &[],
    );
    assert_clean_failure(
        &run,
        "failed while starting: exceeded its time limit of 300ms",
    );
}

#[test]
fn an_aggregator_cannot_spend_real_time_sleeping() {
    let aggregate = |mode: &str| {
        fleetmeter(
            &[
                "plugin",
                "aggregate",
                &path("misbehaving-aggregator"),
                "-c",
                &format!("mode={mode}"),
                "--timeout-ms",
                "300",
                "1",
                "2",
                "6",
            ],
            &[],
        )
    };
    // An hour's sleep in `aggregate` and in `init` is over at once: its clocks stand still.
    for mode in ["sleep", "sleep-init"] {
        let run = aggregate(mode);
        assert_eq!(run.code, Some(0), "{mode}: {}", run.stderr);
        assert_eq!(run.stdout.trim(), "3", "{mode}");
    }
    // Sleeping for ever is a loop like any other: the deadline ends it.
    let run = aggregate("sleep-forever");
    assert_clean_failure(
        &run,
        "plugin misbehaving-aggregator exceeded its time limit of 300ms per call",
    );
    let run = aggregate("spin");
    assert_clean_failure(&run, "exceeded its time limit of 300ms per call");

    let run = fleetmeter(
        &[
            "plugin",
            "aggregate",
            &path("stuck-describe"),
            "--timeout-ms",
            "300",
            "1",
        ],
        &[],
    );
    assert_clean_failure(
        &run,
        "failed while starting: exceeded its time limit of 300ms",
    );
}

#[test]
fn a_log_flood_is_cut_to_the_budget_and_summarised_once_per_call() {
    let run = fleetmeter(
        &[
            "plugin",
            "run",
            &path("misbehaving-sensor"),
            "-c",
            "mode=flood",
            "-c",
            "lines=20000",
            "-n",
            "3",
            "--timeout-ms",
            "20000",
        ],
        &[],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let flood = run
        .stderr
        .lines()
        .filter(|l| l.contains("flood line"))
        .count();
    // The first call's burst of 100, then 10 a second for the rest of the run.
    let allowed = 100 + (run.took.as_secs_f64() * 10.0).ceil() as usize;
    assert!(
        (100..=allowed).contains(&flood),
        "{flood} flood lines in {:?}, at most {allowed} allowed",
        run.took
    );
    let summaries: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("over the plugin's budget"))
        .collect();
    assert_eq!(summaries.len(), 3, "one summary per call: {summaries:?}");
    let suppressed: Vec<usize> = summaries
        .iter()
        .map(|l| {
            let after = l.split("suppressed ").nth(1).expect("a count");
            after[..after.find(' ').expect("a count")]
                .parse()
                .expect("a number")
        })
        .collect();
    // Init's "ready" line comes out of the same per-second bucket, so the first call may
    // get 99 of its 100 if it starts within 100 ms of init.
    assert!(
        (19_900..=19_901).contains(&suppressed[0]),
        "{}",
        summaries[0]
    );
    assert_eq!(
        suppressed.iter().sum::<usize>() + flood,
        60_000,
        "every line either written or counted: {summaries:?}"
    );
    assert!(
        run.stderr.len() < 100_000,
        "60,000 lines asked for, {} bytes written",
        run.stderr.len()
    );
}

#[test]
fn one_log_call_is_one_log_line() {
    let run = fleetmeter(
        &[
            "plugin",
            "run",
            &path("misbehaving-sensor"),
            "-c",
            "mode=forge",
            "-n",
            "1",
        ],
        &[],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        !run.stderr.lines().any(|l| l.starts_with("2026-01-01")),
        "a forged line got through: {}",
        run.stderr
    );
    assert!(
        !run.stderr.contains('\x1b'),
        "a terminal escape got through"
    );
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("innocent"))
        .expect("the plugin's message is logged");
    assert!(
        line.contains(
            r"innocent\n2026-01-01T00:00:00.000000Z ERROR fleetmeter: FORGED leader lost\r\u{1b}[2K"
        ),
        "{line}"
    );
}

#[test]
fn metadata_out_of_bounds_is_refused_at_load_naming_the_field() {
    let raw = path("raw-sensor");
    let run_with = |env: &[&str]| {
        let mut args = vec!["plugin", "run", raw.as_str(), "-n", "1"];
        for e in env {
            args.extend(["--env", e]);
        }
        fleetmeter(&args, &[])
    };
    // 17 characters: one more than the measurements API accepts.
    let run = run_with(&["FIXTURE_UNIT=°", "FIXTURE_REPEAT=17"]);
    assert_clean_failure(
        &run,
        "its metadata `unit` must be at most 16 printable characters",
    );
    let run = run_with(&["FIXTURE_NAME=x", "FIXTURE_REPEAT=65"]);
    assert_clean_failure(&run, "its metadata `name` must be 1 to 64");
    let run = run_with(&["FIXTURE_VERSION=1 ; rm"]);
    assert_clean_failure(&run, "its metadata `version`");
    let run = run_with(&["FIXTURE_DESCRIPTION=fine\n2026-01-01T00:00:00Z ERROR forged"]);
    assert_clean_failure(&run, r#"(got "fine\n2026-01-01T00:00:00Z ERROR forged")"#);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    // At the limits exactly, it loads.
    let run = run_with(&["FIXTURE_UNIT=°", "FIXTURE_REPEAT=16"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

#[test]
fn a_component_with_many_memories_is_refused_at_load() {
    let wat = repo_root().join("plugins/fixtures/many-memories.wat");
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("many-memories.wasm");
    std::fs::write(&wasm, wat::parse_file(&wat).unwrap()).unwrap();
    let run = fleetmeter(&["plugin", "run", wasm.to_str().unwrap(), "-n", "1"], &[]);
    assert_clean_failure(
        &run,
        "needs more than the sandbox allows one plugin: The component transitively contains 9 \
         Wasm linear memories, which exceeds the configured maximum of 2",
    );
}

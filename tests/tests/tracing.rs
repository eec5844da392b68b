//! Tracing end to end (issue 8): one `ctr run --rm … echo hi` with tracing on is one trace,
//! from the shim's Task API calls through the VM's boot to husk-init, the agent and its jail,
//! received by a real OTLP/HTTP endpoint and kept in husk's own store; `husk run` traces the
//! same way; with tracing off the guest runs no tracer at all.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use husk_e2e::containerd::{Containerd, IMAGE, RUNTIME};
use husk_e2e::otlp::{OtlpReceiver, ReceivedSpan};
use husk_e2e::{busybox_rootfs, Harness};

/// How long spans may take to arrive after the command that made them has returned.
const ARRIVAL: Duration = Duration::from_secs(60);
/// What the clock reconciliation may be off by (the readiness message's transit, TCG's clock).
const CLOCK_SLACK_NS: u64 = 250_000_000;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// husk's configuration with tracing on, exporting to `endpoint`.
fn tracing_config(h: &Harness, endpoint: &str) -> PathBuf {
    let path = h.scratch().join("husk-tracing.toml");
    std::fs::write(
        &path,
        format!("[tracing]\nenabled = true\notlp_endpoint = \"{endpoint}\"\n"),
    )
    .expect("writing husk's configuration");
    path
}

fn named<'a>(spans: &'a [ReceivedSpan], service: &str, name: &str) -> Option<&'a ReceivedSpan> {
    spans
        .iter()
        .find(|s| s.service == service && s.name == name)
}

fn by_id(spans: &[ReceivedSpan]) -> HashMap<&str, &ReceivedSpan> {
    spans.iter().map(|s| (s.span_id.as_str(), s)).collect()
}

/// Whether `span` descends from `ancestor` through parent links in `spans`.
fn descends(spans: &[ReceivedSpan], span: &ReceivedSpan, ancestor: &ReceivedSpan) -> bool {
    let index = by_id(spans);
    let mut at = span;
    for _ in 0..64 {
        if at.parent_span_id == ancestor.span_id {
            return true;
        }
        match index.get(at.parent_span_id.as_str()) {
            Some(p) => at = p,
            None => return false,
        }
    }
    false
}

fn describe(spans: &[ReceivedSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} {} {} <- {}",
                s.service, s.name, s.span_id, s.parent_span_id
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_containerd_run_is_one_trace_from_the_shim_down_to_the_jail() {
    let h = Harness::new();
    let otlp = OtlpReceiver::start();
    let config = tracing_config(&h, &otlp.endpoint());
    let cd = Containerd::start_with(&h, Some(&config));
    let out = cd.ok(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "traced",
        "echo",
        "hi",
    ]);
    assert_eq!(out, "hi\n");

    // The root span ends last, when the shim shuts down: once it is in, so is the trace,
    // and nothing of a VM that exited at once was lost on the way.
    let root_in = |spans: &[ReceivedSpan]| {
        named(spans, "containerd-shim-husk-v2", "sandbox traced").is_some()
            && named(spans, "husk-init", "husk-init shutdown").is_some()
    };
    assert!(
        otlp.wait_until(ARRIVAL, root_in),
        "the trace did not arrive whole:\n{}",
        describe(&otlp.spans())
    );
    let all = otlp.spans();
    let root = named(&all, "containerd-shim-husk-v2", "sandbox traced").expect("root");
    let spans: Vec<ReceivedSpan> = all
        .iter()
        .filter(|s| s.trace_id == root.trace_id)
        .cloned()
        .collect();
    let listing = describe(&spans);

    // Every husk process had its part in this one trace.
    let services: HashSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    for service in ["containerd-shim-husk-v2", "husk-init", "husk-agent"] {
        assert!(services.contains(service), "no {service} spans:\n{listing}");
    }
    for (service, name) in [
        ("containerd-shim-husk-v2", "task Create"),
        ("containerd-shim-husk-v2", "task Start"),
        ("containerd-shim-husk-v2", "task Delete"),
        ("containerd-shim-husk-v2", "task Shutdown"),
        ("containerd-shim-husk-v2", "vm boot"),
        // The hypervisor back end's.
        ("containerd-shim-husk-v2", "vm launch"),
        ("containerd-shim-husk-v2", "vm wait ready"),
        ("containerd-shim-husk-v2", "guest kernel"),
        ("containerd-shim-husk-v2", "vm shutdown"),
        ("husk-init", "husk-init boot"),
        ("husk-agent", "agent CreateContainer"),
        ("husk-agent", "agent StartContainer"),
        ("husk-agent", "container create"),
        // rustjail's.
        ("husk-agent", "jail spec"),
        ("husk-agent", "jail spawn"),
        ("husk-agent", "jail start"),
        ("husk-agent", "stdio Stdout"),
    ] {
        assert!(
            named(&spans, service, name).is_some(),
            "no {service} span {name:?}:\n{listing}"
        );
    }

    // Parent links: the agent's span of an RPC is the child of the shim's span that called it.
    for rpc in ["agent CreateContainer", "agent StartContainer"] {
        let client = named(&spans, "containerd-shim-husk-v2", rpc).expect("client span");
        let server = named(&spans, "husk-agent", rpc).expect("server span");
        assert_eq!(server.parent_span_id, client.span_id, "{rpc}:\n{listing}");
    }
    let create = named(&spans, "containerd-shim-husk-v2", "task Create").expect("task Create");
    assert_eq!(create.parent_span_id, root.span_id, "{listing}");
    let boot = named(&spans, "containerd-shim-husk-v2", "vm boot").expect("vm boot");
    let launch = named(&spans, "containerd-shim-husk-v2", "vm launch").expect("vm launch");
    assert_eq!(launch.parent_span_id, boot.span_id, "{listing}");
    assert!(descends(&spans, boot, create), "{listing}");
    let init = named(&spans, "husk-init", "husk-init boot").expect("init boot");
    assert_eq!(init.parent_span_id, boot.span_id, "{listing}");
    let agent_create = named(&spans, "husk-agent", "agent CreateContainer").expect("agent span");
    let spawn = named(&spans, "husk-agent", "jail spawn").expect("jail spawn");
    assert!(descends(&spans, spawn, agent_create), "{listing}");
    let shutdown = named(&spans, "husk-init", "husk-init shutdown").expect("init shutdown");
    let vm_shutdown = named(&spans, "containerd-shim-husk-v2", "vm shutdown").expect("vm shutdown");
    assert_eq!(shutdown.parent_span_id, vm_shutdown.span_id, "{listing}");

    // Spans end when their work does: the boot before the container is created in the guest,
    // the Task API's Create before its Start (a span held open would hold its parents open).
    let created = named(&spans, "containerd-shim-husk-v2", "agent CreateContainer").expect("rpc");
    assert!(boot.end_unix_nano <= created.start_unix_nano, "{listing}");
    let start = named(&spans, "containerd-shim-husk-v2", "task Start").expect("task Start");
    assert!(create.end_unix_nano <= start.start_unix_nano, "{listing}");

    // The waterfall is honest: the guest's boot, on its own clock reconciled with the host's,
    // lies within the host's `vm boot`.
    assert!(
        init.start_unix_nano + CLOCK_SLACK_NS >= boot.start_unix_nano
            && init.end_unix_nano <= boot.end_unix_nano + CLOCK_SLACK_NS,
        "husk-init boot [{}, {}] is not within vm boot [{}, {}]",
        init.start_unix_nano,
        init.end_unix_nano,
        boot.start_unix_nano,
        boot.end_unix_nano
    );

    // The local store holds the same trace: `husk trace show` prints its spans, and the Jaeger
    // export has the same spans with the same parents.
    let husk = |args: &[&str]| {
        let out = h
            .husk()
            .env(husk_config::CONFIG_ENV, &config)
            .args(args)
            .output()
            .expect("husk trace");
        assert!(out.status.success(), "husk {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let list = husk(&["trace", "list"]);
    assert!(list.contains(&root.trace_id[..12]), "{list}");
    let shown = husk(&["trace", "show", &root.trace_id]);
    for s in &spans {
        assert!(
            shown.contains(&s.name),
            "`husk trace show` lacks {:?}:\n{shown}",
            s.name
        );
    }
    let jaeger: serde_json::Value = serde_json::from_str(&husk(&[
        "trace",
        "export",
        "--format",
        "jaeger-json",
        &root.trace_id,
    ]))
    .expect("jaeger json");
    let stored: HashMap<String, String> = jaeger["data"][0]["spans"]
        .as_array()
        .expect("spans")
        .iter()
        .map(|s| {
            let parent = s["references"]
                .as_array()
                .and_then(|r| r.first())
                .and_then(|r| r["spanID"].as_str())
                .unwrap_or("")
                .to_owned();
            (s["spanID"].as_str().unwrap_or("").to_owned(), parent)
        })
        .collect();
    let received: HashMap<String, String> = spans
        .iter()
        .map(|s| (s.span_id.clone(), s.parent_span_id.clone()))
        .collect();
    assert_eq!(stored, received, "the store and the collector disagree");
    cd.assert_nothing_left(&["traced"]);
}

#[test]
fn husk_run_traces_its_sandbox_into_the_local_store() {
    let h = Harness::new();
    let otlp = OtlpReceiver::start();
    let config = tracing_config(&h, &otlp.endpoint());
    let rootfs = busybox_rootfs(&h.scratch().join("rootfs"));
    let out = h
        .husk()
        .env(husk_config::CONFIG_ENV, &config)
        .arg("run")
        .arg(&rootfs)
        .args(["--", "echo", "hi"])
        .output()
        .expect("husk run");
    assert_eq!(text(&out.stdout), "hi\n", "{}", text(&out.stderr));
    // `husk run` waits for its spans before it exits: they are all in already.
    let spans = otlp.spans();
    let root = named(&spans, "husk", "husk run").unwrap_or_else(|| panic!("{}", describe(&spans)));
    let listing = describe(&spans);
    for (service, name) in [
        ("husk", "vm boot"),
        ("husk-init", "husk-init boot"),
        ("husk-agent", "agent CreateContainer"),
        ("husk-agent", "jail spawn"),
        ("husk-init", "husk-init shutdown"),
    ] {
        let s = named(&spans, service, name).unwrap_or_else(|| panic!("no {name}:\n{listing}"));
        assert_eq!(s.trace_id, root.trace_id, "{name}:\n{listing}");
    }
    let out = h
        .husk()
        .env(husk_config::CONFIG_ENV, &config)
        .args(["trace", "list", "--json"])
        .output()
        .expect("husk trace list");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("trace list --json");
    let ours = list
        .as_array()
        .expect("a list")
        .iter()
        .find(|t| t["trace_id"] == root.trace_id.as_str())
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(ours["root"], "husk run", "{ours}");
}

fn guest_processes(h: &Harness, pod: &str, config: &std::path::Path) -> String {
    let out = h
        .husk()
        .env(husk_config::CONFIG_ENV, config)
        .args(["exec", pod, "--", "sh", "-c", "cat /proc/[0-9]*/comm"])
        .stdin(Stdio::null())
        .output()
        .expect("husk exec");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn with_tracing_off_the_guest_runs_no_tracer() {
    let h = Harness::new();
    let off = h.scratch().join("husk-untraced.toml");
    std::fs::write(&off, "[tracing]\nenabled = false\n").expect("writing husk's configuration");
    let cd = Containerd::start_with(&h, Some(&off));
    cd.ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--annotation",
        "io.husk.image=debug",
        IMAGE,
        "untraced",
        "sleep",
        "1000",
    ]);
    let processes = guest_processes(&h, "untraced", &off);
    assert!(processes.lines().any(|p| p == "husk-agent"), "{processes}");
    assert!(!processes.contains("husk-tracer"), "{processes}");
    // Nor does the host listen for spans, or keep any.
    assert!(!h.state_dir().join("traces").exists());
    cd.ok(&["task", "kill", "-s", "KILL", "untraced"]);
    cd.ok(&["task", "rm", "-f", "untraced"]);
    cd.ok(&["containers", "rm", "untraced"]);
    cd.assert_nothing_left(&["untraced"]);
}

#[test]
fn with_tracing_on_the_tracer_runs_and_husk_exec_joins_the_console_session_to_its_trace() {
    let h = Harness::new();
    let otlp = OtlpReceiver::start();
    let config = tracing_config(&h, &otlp.endpoint());
    let rootfs = busybox_rootfs(&h.scratch().join("rootfs"));
    let mut run = h
        .husk()
        .env(husk_config::CONFIG_ENV, &config)
        .args(["run", "--debug", "--name", "tp"])
        .arg(&rootfs)
        .args([
            "--",
            "sh",
            "-c",
            "trap 'exit 130' INT; echo ready; sleep 1000 & wait",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("husk run");
    // The container runs (so the sandbox is reachable) once it says so.
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(run.stdout.as_mut().expect("stdout")),
        &mut ready,
    )
    .expect("reading husk run's output");
    assert_eq!(ready, "ready\n");

    let processes = guest_processes(&h, "tp", &config);
    assert!(processes.lines().any(|p| p == "husk-tracer"), "{processes}");
    let joined = |spans: &[ReceivedSpan]| match (
        named(spans, "husk", "husk exec"),
        named(spans, "husk-console", "console session"),
    ) {
        (Some(exec), Some(session)) => session.parent_span_id == exec.span_id,
        _ => false,
    };
    assert!(
        otlp.wait_until(ARRIVAL, joined),
        "the console session did not join husk exec's trace:\n{}",
        describe(&otlp.spans())
    );

    // Ctrl-C ends the container, and `husk run` with it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let status = run.wait().expect("husk run");
    assert_eq!(status.code(), Some(130), "{status:?}");
}

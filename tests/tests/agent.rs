//! husk-agent in a real guest: handshake and version, health, guest details, and robustness
//! against malformed requests sent raw over vsock.

use std::io::Write;
use std::time::Duration;

use husk_agent_client::AgentClient;
use husk_e2e::{manifest_of, runtime, Harness, SHUTDOWN_TIMEOUT};
use husk_protocols::agent::{self, capability};
use husk_protocols::health::check_response::ServingStatus;
use husk_protocols::ports::AGENT_PORT;
use protobuf::Message;

const AGENT_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn agent_handshakes_and_answers_health_and_guest_details() {
    let h = Harness::new();
    let image = h.image("default");
    let (mut vm, report) = h.boot_ready(&h.config(&image));
    assert_eq!(report.init.services, ["agent"]);

    runtime().block_on(async {
        let client = AgentClient::connect(vm.vsock_path(), AGENT_TIMEOUT)
            .await
            .expect("agent");
        let hs = client.handshake();
        assert_eq!(
            (hs.protocol.as_str(), hs.major),
            (agent::PROTOCOL, agent::MAJOR)
        );
        assert!(client.has_capability(capability::GUEST_DETAILS));
        let health = client.check().await.expect("Check");
        assert_eq!(health.status.enum_value(), Ok(ServingStatus::SERVING));
        let d = client.guest_details().await.expect("GetGuestDetails");
        assert_eq!(d.build_id, manifest_of(&image).build_id);
        assert_eq!(d.hostname, "husk");
        assert_eq!(d.online_cpus, 1);
        assert!(d.kernel_release.starts_with("6.1"), "{}", d.kernel_release);
        assert!(d.mem_total_bytes > 200 << 20, "{}", d.mem_total_bytes);
        assert!(d.uptime_ns > report.guest_uptime.as_nanos() as u64);
        // How containers and the agent itself are confined.
        assert!(client.has_capability(capability::OCI_JAIL));
        assert!(
            d.seccomp.contains("libseccomp 2.") && d.seccomp.contains("default profile"),
            "{}",
            d.seccomp
        );
        assert_eq!(d.agent_seccomp, "enforce");
    });
    vm.shutdown(SHUTDOWN_TIMEOUT).expect("clean shutdown");
    h.finish(vm);
}

#[test]
fn an_agent_of_another_major_is_refused_naming_both() {
    let h = Harness::new();
    let mut config = h.config(&h.image("default"));
    config
        .extra_cmdline
        .push(format!("{}=2", husk_protocols::cmdline::AGENT_CLAIM_MAJOR));
    let (mut vm, _) = h.boot_ready(&config);
    let e = runtime()
        .block_on(AgentClient::connect(vm.vsock_path(), AGENT_TIMEOUT))
        .expect_err("an agent of major 2 must be refused");
    let msg = e.to_string();
    assert!(
        matches!(e, husk_agent_client::AgentError::Incompatible(_)),
        "{msg}"
    );
    assert!(msg.contains("major 2") && msg.contains("major 1"), "{msg}");
    assert!(msg.contains("husk image build"), "the fix is named: {msg}");
    vm.shutdown(SHUTDOWN_TIMEOUT).expect("clean shutdown");
    h.finish(vm);
}

/// A ttrpc frame: 10-byte header (length, stream id, type, flags) and a body.
fn frame(stream_id: u32, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(10 + body.len());
    f.extend_from_slice(&(body.len() as u32).to_be_bytes());
    f.extend_from_slice(&stream_id.to_be_bytes());
    f.extend_from_slice(&[1, 0]); // request, no flags
    f.extend_from_slice(body);
    f
}

fn request(service: &str, method: &str, payload: &[u8]) -> Vec<u8> {
    let req = ttrpc::Request {
        service: service.into(),
        method: method.into(),
        payload: payload.to_vec(),
        timeout_nano: 1_000_000_000,
        ..Default::default()
    };
    req.write_to_bytes().expect("encoding a ttrpc request")
}

#[test]
fn agent_survives_a_burst_of_malformed_requests() {
    let h = Harness::new();
    let (mut vm, _) = h.boot_ready(&h.config(&h.image("default")));
    let first = runtime()
        .block_on(AgentClient::connect(vm.vsock_path(), AGENT_TIMEOUT))
        .expect("agent");
    drop(first);

    let mut huge = frame(1, b"");
    huge[..4].copy_from_slice(&u32::MAX.to_be_bytes());
    let garbage: Vec<Vec<u8>> = vec![
        b"\x00\x01\x02 not ttrpc at all \xff\xfe".repeat(50),
        huge,
        frame(1, b"\x0a\xff\xff\xff\xff\x0f"), // truncated protobuf Request
        frame(2, &request("husk.agent.v1.Agent", "Handshake", b"\xff\xff")), // bad payload
        frame(3, &request("husk.agent.v1.Agent", "NoSuchMethod", b"")),
        frame(4, &request("no.such.Service", "Check", b"")),
        frame(
            6,
            &request("husk.agent.v1.Agent", "Handshake", &[b'x'; 8192]),
        ),
        frame(1, &[0u8; 64])[..30].to_vec(), // cut off mid-frame
        // Well-formed requests with hostile content.
        frame(
            7,
            &request(
                "husk.agent.v1.Agent",
                "ExecProcess",
                &agent::ExecProcessRequest {
                    container_id: "../../etc".into(),
                    exec_id: "\0".into(),
                    process_json: "{\"args\": [".into(),
                    ..Default::default()
                }
                .write_to_bytes()
                .expect("encoding"),
            ),
        ),
        frame(
            8,
            &request(
                "husk.agent.v1.Agent",
                "UpdateContainer",
                &agent::UpdateContainerRequest {
                    container_id: "x".repeat(5000),
                    resources_json: "{}".into(),
                    ..Default::default()
                }
                .write_to_bytes()
                .expect("encoding"),
            ),
        ),
        frame(
            9,
            &request(
                "husk.agent.v1.Agent",
                "ResizeTty",
                &agent::ResizeTtyRequest {
                    rows: u32::MAX,
                    columns: u32::MAX,
                    ..Default::default()
                }
                .write_to_bytes()
                .expect("encoding"),
            ),
        ),
        frame(
            10,
            &request(
                "husk.agent.v1.Agent",
                "CreateSandbox",
                &agent::CreateSandboxRequest {
                    sandbox_id: "s".into(),
                    dns: vec!["nameserver 1.1.1.1\noptions x".into(); 100],
                    ..Default::default()
                }
                .write_to_bytes()
                .expect("encoding"),
            ),
        ),
    ];
    for round in 0..5 {
        for (i, bytes) in garbage.iter().enumerate() {
            let mut s = vm
                .connect(AGENT_PORT, Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("round {round} case {i}: {e}"));
            // The agent may close the connection as soon as it sees garbage: that is fine.
            let _ = s.write_all(bytes);
        }
    }

    runtime().block_on(async {
        let client = AgentClient::connect(vm.vsock_path(), AGENT_TIMEOUT)
            .await
            .expect("agent after the burst");
        client.check().await.expect("Check after the burst");
    });
    let restarts = vm
        .serial()
        .last_lines(500)
        .into_iter()
        .filter(|l| l.contains("service exited"))
        .count();
    assert_eq!(
        restarts,
        0,
        "the agent died during the burst: {:?}",
        vm.serial().last_lines(30)
    );
    vm.shutdown(SHUTDOWN_TIMEOUT).expect("clean shutdown");
    h.finish(vm);
}

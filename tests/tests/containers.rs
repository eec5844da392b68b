//! Containers through husk-agent in a real guest: the basic jail, lossless stdio on dedicated
//! vsock streams, exit codes and signals, bad specs. The rootfs is a host directory shared with
//! virtio-fs, as `husk run` and the shim do.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use husk_agent_client::{open_stream, AgentClient};
use husk_e2e::{busybox_rootfs, runtime, spec_json, Harness, SHUTDOWN_TIMEOUT};
use husk_hypervisor::config::Share;
use husk_protocols::stdio::StreamKind;
use sha2::{Digest, Sha256};

const T: Duration = Duration::from_secs(60);

/// Reads a stream to its end on a thread of its own (so stdout and stderr drain together).
fn drain(mut s: UnixStream) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).expect("reading an output stream");
        buf
    })
}

struct Run {
    code: i32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Creates, starts and waits for one container; removes it afterwards.
async fn run(
    client: &AgentClient,
    vsock: &Path,
    id: &str,
    spec: &str,
    stdin: Option<&[u8]>,
) -> Run {
    client
        .create_container(id, spec, "rootfs")
        .await
        .expect("CreateContainer");
    let out = drain(open_stream(vsock, id, StreamKind::Stdout, T).expect("stdout stream"));
    let err = drain(open_stream(vsock, id, StreamKind::Stderr, T).expect("stderr stream"));
    let input = stdin.map(|_| open_stream(vsock, id, StreamKind::Stdin, T).expect("stdin stream"));
    client.start_container(id).await.expect("StartContainer");
    if let (Some(mut s), Some(bytes)) = (input, stdin) {
        s.write_all(bytes).expect("writing stdin");
        // Closing the stream ends stdin after the last byte.
        s.shutdown(std::net::Shutdown::Write).expect("ending stdin");
    }
    let code = client.wait_process(id).await.expect("WaitProcess");
    let run = Run {
        code,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    };
    client.remove_container(id).await.expect("RemoveContainer");
    run
}

#[test]
fn containers_run_in_a_jail_with_lossless_stdio_and_exit_codes() {
    let h = Harness::new();
    let rootfs = busybox_rootfs(&h.scratch().join("rootfs"));
    let mut config = h.config(&h.image("default"));
    config.shares.push(Share {
        tag: "rootfs".into(),
        host_dir: rootfs.clone(),
        read_only: true,
    });
    let (mut vm, _) = h.boot_ready(&config);
    let vsock = vm.vsock_path().to_owned();

    runtime().block_on(async {
        let client = AgentClient::connect(&vsock, T).await.expect("agent");

        // stdout and stderr are kept apart; the exit code comes through.
        let r = run(&client, &vsock, "c1", &spec_json(&["sh", "-c", "echo out; echo err >&2; exit 3"], |_| {}), None).await;
        assert_eq!((r.code, r.stdout.as_slice(), r.stderr.as_slice()), (3, &b"out\n"[..], &b"err\n"[..]));

        // The jail: PID 1 of its own namespace, its own hostname, its own root.
        let r = run(&client, &vsock, "c2", &spec_json(&["sh", "-c", "echo $$ $(hostname) $(ls /)"], |_| {}), None).await;
        let out = String::from_utf8_lossy(&r.stdout).into_owned();
        assert!(out.starts_with("1 box "), "{out}");
        assert!(out.contains("bin") && !out.contains("init"), "the guest's own root leaked in: {out}");

        // The root was pivoted, not chrooted: the guest's own mounts (the image share among
        // them) are gone from the container's mount table.
        let r = run(&client, &vsock, "c2b", &spec_json(&["cat", "/proc/self/mountinfo"], |_| {}), None).await;
        let table = String::from_utf8_lossy(&r.stdout).into_owned();
        let points: Vec<&str> = table.lines().filter_map(|l| l.split(' ').nth(4)).collect();
        assert_eq!(points.first(), Some(&"/"), "{table}");
        assert!(!table.contains(" - virtiofs "), "the image share is visible: {table}");
        assert!(!points.iter().any(|p| p.starts_with("/run/husk")), "the guest's mounts are visible: {table}");

        // stdin piped through cat.
        let r = run(&client, &vsock, "c3", &spec_json(&["cat"], |_| {}), Some(b"through the container\n")).await;
        assert_eq!((r.code, r.stdout.as_slice()), (0, &b"through the container\n"[..]));

        // 16 MiB of random output arrives whole and in order, even though the process exits
        // right after writing it (its checksum goes to stderr).
        let big = "dd if=/dev/urandom bs=65536 count=256 2>/dev/null | tee /tmp/out.bin; sha256sum /tmp/out.bin >&2";
        let r = run(&client, &vsock, "c4", &spec_json(&["sh", "-c", big], |_| {}), None).await;
        assert_eq!(r.code, 0, "{}", String::from_utf8_lossy(&r.stderr));
        assert_eq!(r.stdout.len(), 16 << 20);
        let want = String::from_utf8_lossy(&r.stderr).split_whitespace().next().unwrap_or_default().to_owned();
        let got: String = Sha256::digest(&r.stdout).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, want, "stdout differs from what the container wrote");

        // A signal ends the process: 128 + 9.
        let id = "c5";
        client.create_container(id, &spec_json(&["sleep", "1000"], |_| {}), "rootfs").await.unwrap();
        client.start_container(id).await.unwrap();
        client.signal_process(id, 9).await.unwrap();
        assert_eq!(client.wait_process(id).await.unwrap(), 137);
        client.remove_container(id).await.unwrap();

        // A missing command exits 127 (the shell) or is refused at create (no shell).
        let e = client.create_container("c6", &spec_json(&["no-such-cmd"], |_| {}), "rootfs").await.unwrap_err();
        assert_eq!(e.rpc_code(), Some(ttrpc::Code::INVALID_ARGUMENT), "{e}");
        assert!(e.to_string().contains("executable \"no-such-cmd\" not found in $PATH"), "{e}");

        // A relative cwd is refused with the OCI rule it breaks.
        let e = client
            .create_container("c7", &spec_json(&["true"], |v| v["process"]["cwd"] = "work".into()), "rootfs")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("process.cwd \"work\" must be an absolute path"), "{e}");

        // Hostile ids never reach the filesystem; unknown containers are NOT_FOUND.
        let e = client.create_container("../../etc", &spec_json(&["true"], |_| {}), "rootfs").await.unwrap_err();
        assert_eq!(e.rpc_code(), Some(ttrpc::Code::INVALID_ARGUMENT), "{e}");
        let e = client.start_container("nope").await.unwrap_err();
        assert_eq!(e.rpc_code(), Some(ttrpc::Code::NOT_FOUND), "{e}");

        // After all that the same id can be used again: remove cleaned up.
        let r = run(&client, &vsock, "c1", &spec_json(&["true"], |_| {}), None).await;
        assert_eq!(r.code, 0);
    });
    assert!(
        !rootfs.join("proc/1").exists(),
        "proc must not be mounted on the host's rootfs"
    );
    vm.shutdown(SHUTDOWN_TIMEOUT).expect("clean shutdown");
    h.finish(vm);
}

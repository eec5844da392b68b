//! `husk run` as a person uses it: a command from an image in a fresh VM, live output, the
//! container's exit code as husk's, stdin, Ctrl-C, `husk ps`, and nothing left afterwards.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use husk_e2e::{busybox_rootfs, Harness};
use sha2::{Digest, Sha256};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn rootfs(h: &Harness) -> PathBuf {
    busybox_rootfs(&h.scratch().join("rootfs"))
}

fn run(h: &Harness, image: &Path, cmd: &[&str]) -> std::process::Output {
    h.husk()
        .arg("run")
        .arg(image)
        .arg("--")
        .args(cmd)
        .output()
        .expect("husk run")
}

fn nothing_left(h: &Harness) {
    // The image is shared read-only and the container wrote to a copy-on-write layer in the VM.
    let written: Vec<_> = std::fs::read_dir(h.scratch().join("rootfs/tmp"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        written.is_empty(),
        "a container wrote into the image: {written:?}"
    );
    for dir in [h.run_root(), h.state_dir()] {
        let left: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "left in {}: {left:?}", dir.display());
    }
}

#[test]
fn exit_codes_and_separate_streams() {
    let h = Harness::new();
    let img = rootfs(&h);
    let out = run(
        &h,
        &img,
        &[
            "sh",
            "-c",
            "echo to-out; echo to-err >&2; echo x > /tmp/written",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "to-out\n");
    assert!(
        text(&out.stderr).ends_with("to-err\n"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(run(&h, &img, &["false"]).status.code(), Some(1));
    let killed = run(&h, &img, &["sh", "-c", "sleep 100 & kill -9 $!; wait $!"]);
    assert_eq!(killed.status.code(), Some(137));
    nothing_left(&h);
}

#[test]
fn stdin_is_piped_with_dash_i() {
    let h = Harness::new();
    let img = rootfs(&h);
    let mut child = h
        .husk()
        .args(["run", "-i"])
        .arg(&img)
        .args(["--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"line one\nline two\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "line one\nline two\n");
    nothing_left(&h);
}

#[test]
fn dash_t_runs_the_container_on_a_terminal() {
    let h = Harness::new();
    let img = rootfs(&h);
    let mut child = h
        .husk()
        .args(["run", "-t", "-i"])
        .arg(&img)
        .args([
            "--",
            "sh",
            "-c",
            "[ -t 0 ] && [ -t 1 ] && echo on-a-tty $TERM; read l; echo got $l >&2",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"typed\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // One terminal carries stdout and stderr, with its line discipline ("\r\n").
    let stdout = text(&out.stdout);
    assert!(stdout.contains("on-a-tty xterm\r\n"), "{stdout:?}");
    assert!(stdout.contains("got typed\r\n"), "{stdout:?}");
    assert_eq!(text(&out.stderr), "");
    nothing_left(&h);
}

#[test]
fn sixty_four_mib_of_stdout_arrive_whole_twenty_runs_in_a_row() {
    let h = Harness::new();
    let img = rootfs(&h);
    let mut data = vec![0u8; 64 << 20];
    // Deterministic, incompressible-looking content (xorshift).
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(img.join("data.bin"), &data).unwrap();
    let want = Sha256::digest(&data);
    for i in 0..20 {
        let out = run(&h, &img, &["dd", "if=/data.bin", "bs=1M"]);
        assert_eq!(out.status.code(), Some(0), "run {i}: {}", text(&out.stderr));
        assert_eq!(out.stdout.len(), data.len(), "run {i}: length");
        assert!(
            Sha256::digest(&out.stdout) == want,
            "run {i}: content differs"
        );
    }
    nothing_left(&h);
}

#[test]
fn a_container_that_exits_at_once_delivers_all_its_output() {
    let h = Harness::new();
    let img = rootfs(&h);
    let out = run(&h, &img, &["seq", "1", "200000"]);
    assert_eq!(out.status.code(), Some(0));
    let want: String = (1..=200000).map(|n| format!("{n}\n")).collect();
    assert!(
        text(&out.stdout) == want,
        "output cut or reordered ({} bytes)",
        out.stdout.len()
    );
}

#[test]
fn ctrl_c_is_forwarded_and_husk_ps_lists_the_sandbox() {
    let h = Harness::new();
    let img = rootfs(&h);
    let script = "trap 'echo got-int; exit 130' INT; echo ready; while :; do sleep 0.1; done";
    let mut child = h
        .husk()
        .args(["run", "--name", "waiter"])
        .arg(&img)
        .args(["--", "sh", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");

    let ps = h.husk().args(["ps", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&ps.stdout).expect("ps --json");
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v[0]["name"], "waiter");
    let table = text(&h.husk().arg("ps").output().unwrap().stdout);
    assert!(
        table.starts_with("ID") && table.contains("waiter"),
        "{table}"
    );

    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert_eq!(lines.next().unwrap().unwrap(), "got-int");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    nothing_left(&h);
}

#[test]
fn bad_images_and_commands_are_clear_errors() {
    let h = Harness::new();
    let img = rootfs(&h);
    let out = run(&h, &img, &["no-such-command"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(
        text(&out.stderr).contains("executable \"no-such-command\" not found in $PATH"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&h, &h.scratch().join("no-image"), &["true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("give a root filesystem directory, an OCI image layout"),
        "{}",
        text(&out.stderr)
    );
    let out = h.husk().arg("run").arg(&img).output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("no command"),
        "{}",
        text(&out.stderr)
    );
    nothing_left(&h);
}

fn tar_dir(dir: &Path, out: &Path) {
    let st = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .arg(".")
        .status()
        .expect("tar");
    assert!(st.success());
}

#[test]
fn oci_layouts_and_docker_archives_run_with_their_image_config() {
    let h = Harness::new();
    let rootfs = rootfs(&h);
    let config = husk_oci::RunConfig {
        cmd: Some(vec![
            "sh".into(),
            "-c".into(),
            "echo cfg:$GREETING:$(pwd):$(id -u):$(id -g)".into(),
        ]),
        env: Some(vec!["PATH=/bin".into(), "GREETING=hi".into()]),
        working_dir: Some("/tmp".into()),
        user: Some("1000:1001".into()),
        ..Default::default()
    };
    let layout = h.scratch().join("layout");
    husk_oci::write_layout(&rootfs, &config, &layout).unwrap();

    // The image's own command, environment, working directory and user.
    let out = h.husk().arg("run").arg(&layout).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "cfg:hi:/tmp:1000:1001\n");

    // The same layout as a tar; a given command replaces the image's cmd; -e overrides.
    let tarball = h.scratch().join("layout.tar");
    tar_dir(&layout, &tarball);
    // With --rm, the layers unpacked for the run are gone afterwards.
    let child = h
        .husk()
        .args(["run", "--rm", "-e", "GREETING=there"])
        .arg(&tarball)
        .args(["--", "sh", "-c", "echo $GREETING"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let husk_pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "there\n");
    let sandboxes = husk_hypervisor::artifacts::home().join("sandboxes");
    let left: Vec<_> = std::fs::read_dir(&sandboxes)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        !left
            .iter()
            .any(|n| husk_hypervisor::config::creator_pid(&n.to_string_lossy()) == Some(husk_pid)),
        "--rm left its unpacked image in {}: {left:?}",
        sandboxes.display()
    );
    nothing_left(&h);

    // A docker archive (`docker save` layout) with an uncompressed layer.
    let docker = h.scratch().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    tar_dir(&rootfs, &docker.join("layer.tar"));
    let diff_id: String = Sha256::digest(std::fs::read(docker.join("layer.tar")).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let cfg = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Cmd": ["sh", "-c", "echo docker-ok"], "Env": ["PATH=/bin"] },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] }
    });
    std::fs::write(docker.join("config.json"), cfg.to_string()).unwrap();
    let manifest = serde_json::json!([{ "Config": "config.json", "RepoTags": ["t:latest"], "Layers": ["layer.tar"] }]);
    std::fs::write(docker.join("manifest.json"), manifest.to_string()).unwrap();
    let docker_tar = h.scratch().join("docker.tar");
    tar_dir(&docker, &docker_tar);
    let out = h.husk().arg("run").arg(&docker_tar).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "docker-ok\n");

    // A tampered layer is refused before any VM starts.
    let mut layer = std::fs::read(docker.join("layer.tar")).unwrap();
    let n = layer.len() / 2;
    layer[n] ^= 0x55;
    std::fs::write(docker.join("layer.tar"), layer).unwrap();
    tar_dir(&docker, &docker_tar);
    let out = h.husk().arg("run").arg(&docker_tar).output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("does not match"),
        "{}",
        text(&out.stderr)
    );
    nothing_left(&h);
    let work: Vec<_> = std::fs::read_dir(husk_hypervisor::artifacts::home().join("sandboxes"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(work.is_empty(), "unpacked images left behind: {work:?}");
}

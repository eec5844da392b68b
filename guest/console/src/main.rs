//! husk-console: serves `husk.console.v1` sessions on vsock port 1026 (ARCHITECTURE.md §5).
//!
//! Started by husk-init only where the console is enabled. This file owns argument parsing and
//! the accept loop; it must never run a session's process itself.

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("husk-console {}", env!("CARGO_PKG_VERSION"));
    }
}

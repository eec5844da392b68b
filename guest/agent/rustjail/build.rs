//! Links what a static libselinux needs: when selinux-sys links libselinux statically
//! (`SELINUX_STATIC=1`, as scripts/lib.sh builds the guest agent), Debian's libselinux.a
//! calls into PCRE2 (its file-label regexes), whose static library selinux-sys does not name.
//! The library comes from libpcre2-dev; it is left to the final link (not bundled here), where
//! the linker finds it on the system's library path.
//!
//! Owns that one link line. Must never change anything for a dynamic build.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    // The variables selinux-sys reads, most specific first.
    let names = [
        format!("SELINUX_STATIC_{target}"),
        format!("SELINUX_STATIC_{}", target.replace('-', "_")),
        "TARGET_SELINUX_STATIC".to_owned(),
        "SELINUX_STATIC".to_owned(),
    ];
    for n in &names {
        println!("cargo:rerun-if-env-changed={n}");
    }
    let static_selinux = names
        .iter()
        .find_map(|n| std::env::var(n).ok())
        .is_some_and(|v| v == "1" || v == "true");
    if static_selinux {
        println!("cargo:rustc-link-lib=static:-bundle=pcre2-8");
    }
}

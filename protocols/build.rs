//! Generates the ttrpc and protobuf code for husk's `.proto` packages into `OUT_DIR`.
//!
//! ttrpc-codegen parses the `.proto` files in pure Rust, so no `protoc` is needed. The
//! generated files start with inner attributes and inner doc comments, which `include!`
//! cannot take; they are stripped here and src/generated.rs sets the `allow`s instead.

use std::path::Path;

const PROTOS: &[&str] = &[
    "proto/agent.proto",
    "proto/health.proto",
    "proto/console.proto",
    "proto/containerd_cgroups_v2.proto",
];

fn main() {
    let out = std::env::var("OUT_DIR").expect("OUT_DIR");
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    ttrpc_codegen::Codegen::new()
        .out_dir(&out)
        .inputs(PROTOS)
        .include("proto")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("generating ttrpc code from proto/");
    for entry in std::fs::read_dir(&out).expect("OUT_DIR") {
        let path = entry.expect("OUT_DIR entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            strip_inner_attributes(&path);
        }
    }
}

fn strip_inner_attributes(path: &Path) {
    let text = std::fs::read_to_string(path).expect("generated file");
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("#![") && !l.trim_start().starts_with("//!"))
        .collect();
    std::fs::write(path, kept.join("\n")).expect("rewriting generated file");
}

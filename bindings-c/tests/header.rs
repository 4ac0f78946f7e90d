//! The committed header must be exactly what cbindgen generates from the
//! sources: C users read the header, so a stale one is a broken API.

use std::path::Path;

const REGENERATE: &str =
    "run `make c-header` (or `DREAMOS_WRITE_HEADER=1 cargo test -p dreamos-bridge-c --test header`)";

fn generate() -> Vec<u8> {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml parses");
    let bindings = cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header");
    let mut out = Vec::new();
    bindings.write(&mut out);
    out
}

#[test]
fn committed_header_is_fresh() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("include/dreamos_bridge.h");
    let generated = generate();
    if std::env::var_os("DREAMOS_WRITE_HEADER").is_some() {
        std::fs::write(&path, &generated).expect("write the header");
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(committed == generated, "{} is stale (the C API in bindings-c/src changed): {REGENERATE}", path.display());
}

#[test]
fn header_has_the_contract_names() {
    let text = String::from_utf8(generate()).expect("UTF-8 header");
    for name in [
        "DREAMOS_OK = 0",
        "DREAMOS_CONFIG",
        "DREAMOS_INTERNAL",
        "DREAMOS_NULL_PARAMETER",
        "DREAMOS_PANIC",
        "typedef struct dreamos_bridge dreamos_bridge;",
        "dreamos_status dreamos_bridge_route(",
        "dreamos_status dreamos_bridge_route_async(",
        "void dreamos_string_free(char *s);",
        "#ifndef DREAMOS_BRIDGE_H",
    ] {
        assert!(text.contains(name), "the header lacks {name:?}");
    }
}

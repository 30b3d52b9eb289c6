//! The committed header is what cbindgen makes of the code: a change to the
//! ABI that forgets the header fails here, in CI.

use std::path::Path;

#[test]
fn committed_header_matches_the_code() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        // The one file that defines the ABI; no `cargo metadata` from a test.
        .with_src(crate_dir.join("src/lib.rs"))
        .generate()
        .unwrap()
        .write(&mut generated);
    let committed_path = crate_dir.join("include/medguard.h");
    if std::env::var_os("MEDGUARD_BLESS").is_some() {
        std::fs::write(&committed_path, &generated).unwrap();
    }
    let committed = std::fs::read(&committed_path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is not what cbindgen makes of src/lib.rs; regenerate it with \
         MEDGUARD_BLESS=1 cargo test -p medguard-embed --test abi header, and review the ABI change",
        committed_path.display()
    );
}

//! The compiled-guest cache loads only artifacts it wrote itself.

use std::fs;

use medguard::sandbox::{CacheUse, Limits, Runtime};
use medguard_tests::bundled_model;

#[test]
fn a_tampered_cache_entry_is_never_deserialised() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    let cache = medguard::sandbox::CompiledCache::open(&dir).unwrap();
    let runtime = Runtime::new(Limits::default()).unwrap();
    let guest = medguard::guest::bundled().unwrap();
    let (_, first) = runtime.load_guest(&guest, Some(&cache)).unwrap();
    assert_eq!(first.cache, CacheUse::Miss);
    let (_, second) = runtime.load_guest(&guest, Some(&cache)).unwrap();
    assert_eq!(second.cache, CacheUse::Hit);

    // Flip one byte of the stored artifact: the MAC fails, the guest is
    // compiled afresh, and the fresh program still works.
    let entry = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .expect("an artifact was stored");
    let mut bytes = fs::read(&entry).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x55;
    fs::write(&entry, &bytes).unwrap();
    let (program, third) = runtime.load_guest(&guest, Some(&cache)).unwrap();
    assert!(
        matches!(third.cache, CacheUse::Rejected(ref why) if why.contains("integrity")),
        "{third:?}"
    );
    assert!(program.session(&bundled_model()).is_ok());
    // The rejected entry was replaced by a good one.
    assert_eq!(
        runtime.load_guest(&guest, Some(&cache)).unwrap().1.cache,
        CacheUse::Hit
    );
}

#[test]
fn a_cache_directory_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let err = medguard::sandbox::CompiledCache::open(&dir)
        .err()
        .expect("must refuse");
    assert!(
        err.to_string().contains("writable by group or others"),
        "{err}"
    );
}

#[test]
fn a_cache_directory_or_key_planted_by_another_user_is_refused() {
    use medguard::sandbox::{CacheError, CompiledCache};
    use std::os::unix::fs::{PermissionsExt, chown};
    let tmp = tempfile::tempdir().unwrap();
    // Another local user's directory, with their own key: private modes, a
    // key that would make their artifacts pass the MAC.
    let dir = tmp.path().join("cache");
    CompiledCache::open(&dir).unwrap();
    let other = 4242;
    if let Err(e) = chown(&dir, Some(other), None) {
        // chown needs root (as CI runs); without it there is no other uid to be.
        panic!("this test needs to run as root to plant another uid's files: {e}");
    }
    let err = CompiledCache::open(&dir).err().expect("must refuse");
    assert!(
        matches!(err, CacheError::Owner { owner: 4242, .. }),
        "{err}"
    );

    // Our directory, their key file.
    chown(&dir, Some(my_uid()), None).unwrap();
    chown(dir.join("cache.key"), Some(other), None).unwrap();
    let err = CompiledCache::open(&dir).err().expect("must refuse");
    assert!(
        matches!(err, CacheError::Owner { owner: 4242, .. }),
        "{err}"
    );

    // Our key, readable by the group: refused too.
    chown(dir.join("cache.key"), Some(my_uid()), None).unwrap();
    fs::set_permissions(dir.join("cache.key"), fs::Permissions::from_mode(0o640)).unwrap();
    let err = CompiledCache::open(&dir).err().expect("must refuse");
    assert!(matches!(err, CacheError::Permissions { .. }), "{err}");

    // A key that is a link to a file elsewhere.
    fs::remove_file(dir.join("cache.key")).unwrap();
    let elsewhere = tmp.path().join("their.key");
    fs::write(&elsewhere, [7u8; 32]).unwrap();
    std::os::unix::fs::symlink(&elsewhere, dir.join("cache.key")).unwrap();
    let err = CompiledCache::open(&dir).err().expect("must refuse");
    assert!(matches!(err, CacheError::NotAFile(_)), "{err}");
}

/// The effective uid, read from a file this process just created.
fn my_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    let f = tempfile::tempfile().unwrap();
    f.metadata().unwrap().uid()
}

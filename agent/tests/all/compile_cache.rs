//! The compile cache uses only entries it can prove it wrote: tampered, swapped, linked or
//! foreign entries and untrustworthy directories are refused (said in a warning), the plugin
//! is compiled again, and the entry replaced. Run through `fleetmeter plugin` as a user would.

use std::{
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
    process::{Command, Output},
};

use crate::support::{plugin, repo_root};

fn fleetmeter(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetmeter"))
        .args(args)
        .current_dir(repo_root())
        .env("FLEETMETER_CACHE_DIR", cache)
        // The compile and cache decisions are logged at debug/warn.
        .env("RUST_LOG", "warn,fleetmeter::plugin=debug")
        .output()
        .expect("run fleetmeter")
}

/// `plugin aggregate NAME 1 2 9`: mean 4, median 2.
fn aggregate(cache: &Path, name: &str) -> (String, String) {
    let out = fleetmeter(cache, &["plugin", "aggregate", name, "1", "2", "9"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    (
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        stderr,
    )
}

fn entries(cache: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    found.sort();
    found
}

/// The entry of the plugin whose sha256 names it.
fn entry_of(cache: &Path, name: &str) -> PathBuf {
    let bytes = std::fs::read(plugin(name)).unwrap();
    let sha = sha256_hex(&bytes);
    entries(cache)
        .into_iter()
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&sha))
        .unwrap_or_else(|| panic!("no cache entry for {name}"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

const FROM_CACHE: &str = "plugin loaded from the compile cache";
const REFUSED: &str = "refusing a compile cache entry";

#[test]
fn a_restart_loads_from_a_private_cache() {
    let base = tempfile::tempdir().unwrap();
    let cache = base.path().join("cache");
    let (value, first) = aggregate(&cache, "median");
    assert_eq!(value, "2");
    assert!(first.contains("compiled plugin"), "{first}");
    let (value, second) = aggregate(&cache, "median");
    assert_eq!(value, "2");
    assert!(second.contains(FROM_CACHE), "{second}");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cache), 0o700);
    assert_eq!(mode(&cache.join("key")), 0o600);
    assert_eq!(mode(&entry_of(&cache, "median")), 0o600);
}

#[test]
fn a_tampered_entry_is_refused_recompiled_and_replaced() {
    let cache = tempfile::tempdir().unwrap();
    aggregate(cache.path(), "median");
    let entry = entry_of(cache.path(), "median");
    let mut bytes = std::fs::read(&entry).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40; // one bit of native code, same size
    std::fs::write(&entry, &bytes).unwrap();

    let (value, stderr) = aggregate(cache.path(), "median");
    assert_eq!(value, "2");
    assert!(stderr.contains(REFUSED), "{stderr}");
    assert!(stderr.contains("bad tag"), "{stderr}");
    assert!(!stderr.contains(FROM_CACHE), "{stderr}");
    // Replaced: the next start uses it again.
    let (_, stderr) = aggregate(cache.path(), "median");
    assert!(stderr.contains(FROM_CACHE), "{stderr}");
}

#[test]
fn swapped_entries_never_run_the_wrong_plugin() {
    let cache = tempfile::tempdir().unwrap();
    assert_eq!(aggregate(cache.path(), "mean").0, "4");
    assert_eq!(aggregate(cache.path(), "median").0, "2");
    let (mean, median) = (
        entry_of(cache.path(), "mean"),
        entry_of(cache.path(), "median"),
    );
    let tmp = cache.path().join("swap");
    std::fs::rename(&mean, &tmp).unwrap();
    std::fs::rename(&median, &mean).unwrap();
    std::fs::rename(&tmp, &median).unwrap();

    let (value, stderr) = aggregate(cache.path(), "median");
    assert_eq!(value, "2", "median must compute the median: {stderr}");
    assert!(stderr.contains(REFUSED), "{stderr}");
    let (value, stderr) = aggregate(cache.path(), "mean");
    assert_eq!(value, "4", "{stderr}");
    assert!(stderr.contains(REFUSED), "{stderr}");
}

#[test]
fn an_entry_that_is_a_symlink_is_refused_and_replaced_by_a_file() {
    let cache = tempfile::tempdir().unwrap();
    aggregate(cache.path(), "mean");
    aggregate(cache.path(), "median");
    let (mean, median) = (
        entry_of(cache.path(), "mean"),
        entry_of(cache.path(), "median"),
    );
    std::fs::remove_file(&median).unwrap();
    symlink(&mean, &median).unwrap();

    let (value, stderr) = aggregate(cache.path(), "median");
    assert_eq!(value, "2", "{stderr}");
    assert!(stderr.contains("it is a symbolic link"), "{stderr}");
    let meta = std::fs::symlink_metadata(&median).unwrap();
    assert!(
        meta.file_type().is_file(),
        "the link is replaced by a real entry"
    );
    assert!(
        std::fs::symlink_metadata(&mean).unwrap().is_file(),
        "the target is untouched"
    );
}

#[test]
fn an_untrustworthy_directory_is_not_used_at_all() {
    let base = tempfile::tempdir().unwrap();

    // Writable by others: anyone could plant code there.
    let open = base.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (value, stderr) = aggregate(&open, "median");
    assert_eq!(value, "2");
    assert!(
        stderr.contains("not using the plugin compile cache"),
        "{stderr}"
    );
    assert!(stderr.contains("chmod go-w"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(&open).unwrap().count(),
        0,
        "nothing written there"
    );

    // A symlink to a good directory: not followed.
    let real = base.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = base.path().join("link");
    symlink(&real, &link).unwrap();
    let (_, stderr) = aggregate(&link, "median");
    assert!(stderr.contains("is a symbolic link"), "{stderr}");
    assert_eq!(std::fs::read_dir(&real).unwrap().count(), 0);

    // Owned by another user (only root can make one to test with; CI runs as root).
    if is_root() {
        let foreign = base.path().join("foreign");
        std::fs::create_dir(&foreign).unwrap();
        std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o755)).unwrap();
        let chowned = Command::new("chown")
            .arg("65534")
            .arg(&foreign)
            .status()
            .unwrap();
        assert!(chowned.success());
        let (value, stderr) = aggregate(&foreign, "median");
        assert_eq!(value, "2");
        assert!(stderr.contains("belongs to uid 65534"), "{stderr}");
        assert_eq!(std::fs::read_dir(&foreign).unwrap().count(), 0);
    } else {
        eprintln!("not root: the foreign-owner case needs chown and is covered in CI");
    }
}

#[test]
fn no_cache_compiles_every_time() {
    let cache = tempfile::tempdir().unwrap();
    let out = fleetmeter(
        cache.path(),
        &["plugin", "aggregate", "--no-cache", "median", "1", "2", "9"],
    );
    assert!(out.status.success());
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 0);
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("id -u");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

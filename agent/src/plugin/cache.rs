//! The compile cache: native code compiled from plugins, kept on disk so that an agent starts
//! in milliseconds instead of compiling. Native code runs outside the sandbox, so an entry is
//! used only when it is proven to be one this agent's user wrote for this exact component and
//! engine:
//!
//! - **The directory** must be a real directory (not a symlink), owned by the agent's user and
//!   not writable by group or others; otherwise the cache is not used at all (plugins are
//!   compiled in memory) and a warning says how to fix it. It is opened once, and every file
//!   in it is opened relative to that handle without following symlinks, so nobody can swap
//!   a path component underneath.
//! - **The key**: `key`, 32 random bytes made on first use, owned by the user, mode 0600. A
//!   key with other permissions or owner is replaced (which invalidates every entry).
//! - **Each entry** (`SHA256-ENGINE.cwasm`) starts with a tag: HMAC-SHA256 under the key of
//!   the component's sha256, the engine's compatibility hash and the compiled bytes. An entry
//!   whose tag does not verify (tampered, truncated, copied from another host, renamed to
//!   another component's name) is refused with a warning, recompiled and replaced.
//!
//! What each part stops: ownership and permissions stop other users (they cannot write
//! entries or read the key); the tag stops swapped, corrupted or foreign entries, and a
//! forged entry from anyone who cannot read the key. Nothing here stops the agent's own user
//! or root, who can replace the agent's binary anyway.

use std::{
    fs,
    io::{Read, Write},
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

use hmac::{Hmac, Mac};
use rustix::{
    fs::{AtFlags, FileType, Mode, OFlags, fstat, linkat, openat, renameat, unlinkat},
    io::Errno,
};
use sha2::Sha256;
use wasmtime::{Engine, component::Component};

/// First bytes of every entry (format version 1).
const MAGIC: &[u8; 8] = b"FLEETMC1";
const TAG_LEN: usize = 32;
const KEY_FILE: &str = "key";
const KEY_LEN: usize = 32;
/// Larger entries are refused unread: compiled plugins are a few MiB at most.
const MAX_ENTRY: u64 = 256 << 20;

/// Why the cache directory cannot be used; the message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DirRefused {
    #[error("{dir} is a symbolic link; point the cache at the real directory")]
    Symlink { dir: PathBuf },
    #[error("{dir} is not a directory")]
    NotDir { dir: PathBuf },
    #[error(
        "{dir} belongs to uid {owner}, not to this agent's user (uid {user}); `chown {user} {}` \
         or choose another cache directory",
        .dir.display()
    )]
    Owner { dir: PathBuf, owner: u32, user: u32 },
    #[error(
        "{dir} is writable by group or others (mode {mode:04o}): anyone who can write there could \
         plant native code; `chmod go-w {}`",
        .dir.display()
    )]
    Writable { dir: PathBuf, mode: u32 },
    #[error("cannot open {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// Why one entry was not used.
#[derive(Debug, thiserror::Error)]
pub enum EntryRefused {
    #[error("it is a symbolic link")]
    Symlink,
    #[error("it is not a regular file")]
    NotFile,
    #[error("it belongs to uid {owner}, not to this agent's user")]
    Owner { owner: u32 },
    #[error("it is {0} bytes, more than any compiled plugin")]
    TooLarge(u64),
    #[error("it was not written by this agent for this component and engine (bad tag)")]
    BadTag,
    #[error("wasmtime refused it: {0}")]
    Wasmtime(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// An opened, checked cache directory and its key.
pub(super) struct CacheDir {
    path: PathBuf,
    fd: OwnedFd,
    key: [u8; KEY_LEN],
}

impl std::fmt::Debug for CacheDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheDir")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// What a lookup found.
pub(super) enum Lookup {
    Hit(Component),
    Miss,
    /// There was an entry, and it was refused: recompile and replace it.
    Refused(EntryRefused),
}

impl CacheDir {
    /// Creates the directory if needed (mode 0700), checks it and reads (or makes) the key.
    pub fn open(path: &Path) -> Result<Self, DirRefused> {
        let io = |source: std::io::Error| DirRefused::Io {
            dir: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(io)?;
        }
        match rustix::fs::mkdir(path, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(io(e.into())),
        }
        let fd = match openat(
            rustix::fs::CWD,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::LOOP) => {
                return Err(DirRefused::Symlink {
                    dir: path.to_owned(),
                });
            }
            Err(Errno::NOTDIR) => {
                // O_NOFOLLOW on a symlink to a file also lands here; say which it is.
                let is_link = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
                return Err(if is_link {
                    DirRefused::Symlink {
                        dir: path.to_owned(),
                    }
                } else {
                    DirRefused::NotDir {
                        dir: path.to_owned(),
                    }
                });
            }
            Err(e) => return Err(io(e.into())),
        };
        let stat = fstat(&fd).map_err(|e| io(e.into()))?;
        let user = rustix::process::geteuid().as_raw();
        if stat.st_uid != user {
            return Err(DirRefused::Owner {
                dir: path.to_owned(),
                owner: stat.st_uid,
                user,
            });
        }
        let mode = stat.st_mode & 0o7777;
        if mode & 0o022 != 0 {
            return Err(DirRefused::Writable {
                dir: path.to_owned(),
                mode,
            });
        }
        let key = read_or_make_key(&fd).map_err(io)?;
        Ok(Self {
            path: path.to_owned(),
            fd,
            key,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The entry's file name for a component and engine.
    pub fn entry_name(sha256: &str, compat: &str) -> String {
        format!("{sha256}-{compat}.cwasm")
    }

    pub fn lookup(&self, engine: &Engine, sha256: &str, compat: &str) -> Lookup {
        let name = Self::entry_name(sha256, compat);
        let bytes = match self.read_entry(&name) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Lookup::Miss,
            Err(refused) => return Lookup::Refused(refused),
        };
        let Some(artifact) = self.verified(&bytes, sha256, compat) else {
            return Lookup::Refused(EntryRefused::BadTag);
        };
        // SAFETY: `artifact` is exactly what `store` below serialized with an engine of this
        // compatibility hash for this component: its tag, under a key only this user can
        // read, verifies over these very bytes (read into memory first, so nothing can
        // change them between the check and the use). wasmtime checks the header and the
        // engine settings again and refuses a mismatch.
        match unsafe { Component::deserialize(engine, artifact) } {
            Ok(component) => Lookup::Hit(component),
            Err(err) => Lookup::Refused(EntryRefused::Wasmtime(format!("{err:#}"))),
        }
    }

    /// Writes (or replaces) the entry, atomically: a temporary file, then a rename that
    /// replaces whatever had the name (a symlink itself, never its target).
    pub fn store(&self, component: &Component, sha256: &str, compat: &str) -> std::io::Result<()> {
        let artifact = component.serialize().map_err(std::io::Error::other)?;
        let tag = self.tag(&artifact, sha256, compat);
        let name = Self::entry_name(sha256, compat);
        let (tmp_name, fd) = self.create_temp()?;
        let written = (|| {
            let mut file = fs::File::from(fd);
            file.write_all(MAGIC)?;
            file.write_all(&tag)?;
            file.write_all(&artifact)?;
            file.sync_all()?;
            renameat(&self.fd, &tmp_name, &self.fd, &name)?;
            Ok(())
        })();
        if written.is_err() {
            let _ = unlinkat(&self.fd, &tmp_name, AtFlags::empty());
        }
        written
    }

    /// The entry's bytes, `None` when there is none.
    fn read_entry(&self, name: &str) -> Result<Option<Vec<u8>>, EntryRefused> {
        let fd = match openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP) => return Err(EntryRefused::Symlink),
            Err(e) => return Err(EntryRefused::Io(e.into())),
        };
        let stat = fstat(&fd).map_err(std::io::Error::from)?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(EntryRefused::NotFile);
        }
        if stat.st_uid != rustix::process::geteuid().as_raw() {
            return Err(EntryRefused::Owner { owner: stat.st_uid });
        }
        let size = u64::try_from(stat.st_size).unwrap_or(0);
        if size > MAX_ENTRY {
            return Err(EntryRefused::TooLarge(size));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        fs::File::from(fd).take(MAX_ENTRY).read_to_end(&mut bytes)?;
        Ok(Some(bytes))
    }

    /// The compiled bytes of an entry whose tag verifies.
    fn verified<'a>(&self, entry: &'a [u8], sha256: &str, compat: &str) -> Option<&'a [u8]> {
        let rest = entry.strip_prefix(MAGIC.as_slice())?;
        if rest.len() < TAG_LEN {
            return None;
        }
        let (tag, artifact) = rest.split_at(TAG_LEN);
        self.mac(artifact, sha256, compat)
            .verify_slice(tag)
            .ok()
            .map(|()| artifact)
    }

    fn tag(&self, artifact: &[u8], sha256: &str, compat: &str) -> [u8; TAG_LEN] {
        self.mac(artifact, sha256, compat)
            .finalize()
            .into_bytes()
            .into()
    }

    fn mac(&self, artifact: &[u8], sha256: &str, compat: &str) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(b"fleetmeter compile cache v1\0");
        mac.update(sha256.as_bytes());
        mac.update(b"\0");
        mac.update(compat.as_bytes());
        mac.update(b"\0");
        mac.update(artifact);
        mac
    }

    fn create_temp(&self) -> std::io::Result<(String, OwnedFd)> {
        create_temp_in(&self.fd)
    }
}

/// A new, empty, 0600 file with a random name in `dir`.
fn create_temp_in(dir: &OwnedFd) -> std::io::Result<(String, OwnedFd)> {
    for _ in 0..16 {
        let name = format!(".tmp-{}", hex::encode(rand::random::<[u8; 8]>()));
        match openat(
            dir,
            &name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => return Ok((name, fd)),
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(std::io::Error::other("cannot create a temporary file"))
}

/// The directory's key; made when missing, replaced when it is not a private regular file of
/// this user of the right size. Two agents starting at once agree on one key: the new key is
/// linked into place, which fails if another got there first, and then that one is read.
fn read_or_make_key(dir: &OwnedFd) -> std::io::Result<[u8; KEY_LEN]> {
    for _ in 0..4 {
        match read_key(dir)? {
            KeyFile::Good(key) => return Ok(key),
            KeyFile::Bad(why) => {
                tracing::warn!(
                    problem = why,
                    "replacing the compile cache's key: every cached plugin will be recompiled"
                );
                match unlinkat(dir, KEY_FILE, AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            KeyFile::Missing => {}
        }
        let key: [u8; KEY_LEN] = rand::random();
        let (tmp, fd) = create_temp_in(dir)?;
        let mut file = fs::File::from(fd);
        let linked = file
            .write_all(&key)
            .and_then(|()| file.sync_all())
            .and_then(|()| {
                linkat(dir, &tmp, dir, KEY_FILE, AtFlags::empty()).map_err(std::io::Error::from)
            });
        let _ = unlinkat(dir, &tmp, AtFlags::empty());
        match linked {
            Ok(()) => return Ok(key),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other(
        "the key file keeps changing under this agent",
    ))
}

enum KeyFile {
    Good([u8; KEY_LEN]),
    Missing,
    Bad(&'static str),
}

fn read_key(dir: &OwnedFd) -> std::io::Result<KeyFile> {
    let fd = match openat(
        dir,
        KEY_FILE,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(KeyFile::Missing),
        Err(Errno::LOOP) => return Ok(KeyFile::Bad("the key is a symbolic link")),
        Err(e) => return Err(e.into()),
    };
    let stat = fstat(&fd)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Ok(KeyFile::Bad("the key is not a regular file"));
    }
    if stat.st_uid != rustix::process::geteuid().as_raw() {
        return Ok(KeyFile::Bad("the key belongs to another user"));
    }
    if stat.st_mode & 0o077 != 0 {
        return Ok(KeyFile::Bad(
            "the key is readable or writable by group or others",
        ));
    }
    let mut key = [0_u8; KEY_LEN];
    let mut file = fs::File::from(fd);
    let mut extra = [0_u8; 1];
    if file.read_exact(&mut key).is_err() || file.read(&mut extra)? != 0 {
        return Ok(KeyFile::Bad("the key is not 32 bytes long"));
    }
    Ok(KeyFile::Good(key))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;

    #[test]
    fn a_new_directory_is_private_and_gets_a_private_key() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("a/b/cache");
        let cache = CacheDir::open(&dir).unwrap();
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let key = fs::metadata(dir.join(KEY_FILE)).unwrap();
        assert_eq!(key.permissions().mode() & 0o777, 0o600);
        assert_eq!(key.len(), KEY_LEN as u64);
        // The same key next time.
        let again = CacheDir::open(&dir).unwrap();
        assert_eq!(cache.key, again.key);
    }

    #[test]
    fn a_writable_or_linked_directory_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("cache");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let err = CacheDir::open(&dir).unwrap_err();
        assert!(
            matches!(err, DirRefused::Writable { mode: 0o777, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod go-w"), "{err}");

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        let link = base.path().join("link");
        symlink(&dir, &link).unwrap();
        let err = CacheDir::open(&link).unwrap_err();
        assert!(matches!(err, DirRefused::Symlink { .. }), "{err}");
    }

    #[test]
    fn a_key_others_can_read_is_replaced() {
        let base = tempfile::tempdir().unwrap();
        let first = CacheDir::open(base.path()).unwrap();
        let key = base.path().join(KEY_FILE);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let second = CacheDir::open(base.path()).unwrap();
        assert_ne!(first.key, second.key);
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn tags_bind_the_component_and_the_engine() {
        let base = tempfile::tempdir().unwrap();
        let cache = CacheDir::open(base.path()).unwrap();
        let tag = cache.tag(b"code", "aa", "e1");
        let mut entry = MAGIC.to_vec();
        entry.extend_from_slice(&tag);
        entry.extend_from_slice(b"code");
        assert_eq!(cache.verified(&entry, "aa", "e1"), Some(&b"code"[..]));
        assert_eq!(
            cache.verified(&entry, "bb", "e1"),
            None,
            "another component"
        );
        assert_eq!(cache.verified(&entry, "aa", "e2"), None, "another engine");
        let last = entry.len() - 1;
        entry[last] ^= 1;
        assert_eq!(cache.verified(&entry, "aa", "e1"), None, "a flipped bit");
        assert_eq!(cache.verified(&entry[..10], "aa", "e1"), None, "truncated");
        let other = CacheDir::open(tempfile::tempdir().unwrap().path()).unwrap();
        entry[last] ^= 1;
        assert_eq!(
            other.verified(&entry, "aa", "e1"),
            None,
            "another host's key"
        );
    }
}

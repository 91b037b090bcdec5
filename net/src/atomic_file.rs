//! Replacing files so that a crash never leaves half of one: a temporary file beside the target
//! (`tempfile`), synced, renamed over the target, and the directory synced so that the rename
//! itself is durable.
//!
//! Every file Cohort replaces in place goes through [`write_atomically`]: the coordinator's
//! checkpoints, strategy states, OPAQUE server key and TLS identity, and a device's credentials,
//! secrets and verified round-log heads. It lives here because `cohort-net` is the lowest crate
//! that the coordinator and the edge client both depend on (and it writes the TLS identity
//! itself); `cohort-protocol`, below it, does no I/O.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// The marker in every temporary file's name: what a crash left behind is recognised by it and
/// removed at start-up (the coordinator's `Checkpoints::open` does so).
pub const TEMP_MARKER: &str = ".tmp-";

/// Writes `bytes` to `path` atomically and durably. With `secret`, the file is created with mode
/// 0600 (Unix), so that keys are never readable by other users, not even briefly; otherwise
/// 0644. A failed sync of the file or of its directory is an error: the caller must not record
/// the file as durable. The directory must exist.
///
/// A crash can leave a temporary file (its name holds [`TEMP_MARKER`]) beside `path`; `path`
/// itself always holds either the old bytes or the new ones.
pub fn write_atomically(path: &Path, bytes: &[u8], secret: bool) -> io::Result<()> {
    write(path, bytes, secret, Existing::Replace)
}

/// [`write_atomically`] for a file that must not exist yet: when `path` exists (even if it
/// appeared while the bytes were written), it is left alone and the error is
/// [`io::ErrorKind::AlreadyExists`].
pub fn create_atomically(path: &Path, bytes: &[u8], secret: bool) -> io::Result<()> {
    write(path, bytes, secret, Existing::Keep)
}

/// What to do with a file already at the target path.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Existing {
    Replace,
    Keep,
}

fn write(path: &Path, bytes: &[u8], secret: bool, existing: Existing) -> io::Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let prefix = format!(".{}{TEMP_MARKER}", file_name.to_string_lossy());
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(if secret {
            0o600
        } else {
            0o644
        }));
    }
    #[cfg(not(unix))]
    let _ = secret;
    // The temporary file is removed if anything below fails before `persist`.
    let mut tmp = builder.tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    match existing {
        Existing::Replace => tmp.persist(path).map_err(|e| e.error)?,
        Existing::Keep => tmp.persist_noclobber(path).map_err(|e| e.error)?,
    };
    sync_directory(dir)
}

/// Makes a rename inside `dir` durable. Only Unix can open a directory to sync it; elsewhere
/// the rename is as durable as the platform makes it.
fn sync_directory(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.f32le");
        write_atomically(&path, b"first", false).unwrap();
        write_atomically(&path, b"second", false).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["weights.f32le".to_string()]);
    }

    #[cfg(unix)]
    #[test]
    fn secrets_are_private_and_other_files_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("server.key");
        let public = dir.path().join("checkpoint");
        write_atomically(&key, b"k", true).unwrap();
        write_atomically(&public, b"c", false).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&public), 0o644);
    }

    #[test]
    fn create_leaves_an_existing_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("owner-token");
        create_atomically(&path, b"first", true).unwrap();
        let err = create_atomically(&path, b"second", true).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent").join("file");
        assert!(write_atomically(&path, b"x", false).is_err());
        assert!(!path.exists());
    }
}

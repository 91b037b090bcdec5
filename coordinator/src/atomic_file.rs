//! Writing files so that a crash never leaves half of one: a temporary file beside the target
//! (`tempfile`), synced, renamed over the target, and the directory synced so that the rename
//! itself is durable. Every durable file of the coordinator (checkpoints, strategy states, the
//! OPAQUE server key) is written here.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// The marker in every temporary file's name: what a crash left behind is recognised by it and
/// removed at start-up ([`crate::checkpoints::Checkpoints::open`]).
pub const TEMP_MARKER: &str = ".tmp-";

/// Writes `bytes` to `path` atomically and durably. With `secret`, the file is created with mode
/// 0600 (Unix), so that keys are never readable by other users, not even briefly; otherwise
/// 0644. A failed sync of the file or of its directory is an error: the caller must not record
/// the file as durable.
pub fn write_atomically(path: &Path, bytes: &[u8], secret: bool) -> io::Result<()> {
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
    tmp.persist(path).map_err(|e| e.error)?;
    fs::File::open(dir)?.sync_all()
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
    fn a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent").join("file");
        assert!(write_atomically(&path, b"x", false).is_err());
        assert!(!path.exists());
    }
}

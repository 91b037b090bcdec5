//! Writing files so that a crash never leaves half of one: write a temporary file beside the
//! target, sync it, rename it over the target, sync the directory.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// Writes `bytes` to `path` atomically and durably. With `secret`, the file is created with mode
/// 0600 (Unix), so that keys are never readable by other users, not even briefly.
pub fn write_atomically(path: &Path, bytes: &[u8], secret: bool) -> io::Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let result = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    if let Some(dir) = path.parent()
        && let Ok(d) = fs::File::open(dir)
    {
        // Makes the rename itself durable.
        d.sync_all()?;
    }
    Ok(())
}

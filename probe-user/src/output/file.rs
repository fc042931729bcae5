//! Opening the files probe writes (`-o`, `--trace`) as root, where other
//! users may have planted something: a symlink in /tmp that points at a
//! root-owned file, a FIFO, a file in /proc or /sys.

use std::{
    fs::{self, File, OpenOptions},
    io,
    os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt},
    path::Path,
};

use anyhow::{bail, Context, Result};

/// Filesystems whose files are the kernel's knobs, never reports.
const PROC_SUPER_MAGIC: i64 = 0x9fa0;
const SYSFS_MAGIC: i64 = 0x6265_6572;

/// Creates or truncates `path` for writing, refusing what a careful root
/// would not write to: a symlink in a sticky, world-writable directory
/// (such as /tmp) unless root owns it (what `fs.protected_symlinks`
/// enforces, done here whatever the sysctl says), and anything but a
/// regular file, a FIFO or a character device, or a file of /proc or /sys.
pub fn create(path: &Path) -> Result<File> {
    if let Ok(link) = fs::symlink_metadata(path) {
        if link.file_type().is_symlink() {
            check_symlink(path, &link)?;
        }
    }
    // Not truncated before it is known to be a file to write over.
    let file =
        OpenOptions::new().write(true).create(true).mode(0o644).custom_flags(libc::O_CLOEXEC).open(path)?;
    let meta = file.metadata()?;
    let kind = meta.file_type();
    if !(kind.is_file() || kind.is_fifo() || kind.is_char_device()) {
        bail!("{} is not a regular file, a FIFO or a character device: not writing to it", path.display());
    }
    if kind.is_file() {
        if on_kernel_filesystem(&file)? {
            bail!("{} is a file of /proc or /sys, not a report: not writing to it", path.display());
        }
        file.set_len(0).with_context(|| format!("cannot truncate {}", path.display()))?;
    }
    Ok(file)
}

/// Refuses a symlink another user could have planted.
fn check_symlink(path: &Path, link: &fs::Metadata) -> Result<()> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let dir = fs::metadata(parent).with_context(|| format!("cannot look at {}", parent.display()))?;
    let sticky_and_world_writable = dir.mode() & 0o1002 == 0o1002;
    if sticky_and_world_writable && link.uid() != 0 && link.uid() != dir.uid() {
        bail!(
            "{} is a symlink owned by uid {} in a world-writable sticky directory: not following it (write to another path)",
            path.display(),
            link.uid()
        );
    }
    Ok(())
}

fn on_kernel_filesystem(file: &File) -> Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: fstatfs fills the zeroed struct for an open fd.
    let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut stats) } != 0 {
        return Err(io::Error::last_os_error()).context("cannot look at the output's filesystem");
    }
    let kind = stats.f_type as i64;
    Ok(kind == PROC_SUPER_MAGIC || kind == SYSFS_MAGIC)
}

/// Whether two paths name the same file: the same path, or both existing
/// and one file (links and `..` included).
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_files_and_directories_are_refused() {
        let err = create(Path::new("/proc/sys/kernel/pid_max")).unwrap_err().to_string();
        assert!(err.contains("/proc or /sys"), "{err}");
        assert!(create(Path::new("/tmp")).is_err());
        let path = std::env::temp_dir().join(format!("probe-file-test-{}", std::process::id()));
        std::fs::write(&path, b"old contents").unwrap();
        drop(create(&path).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        assert!(same_file(&path, &std::env::temp_dir().join(".").join(path.file_name().unwrap())));
        std::fs::remove_file(&path).unwrap();
    }
}

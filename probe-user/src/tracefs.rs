//! Classic tracepoints' record layouts, from their format files in tracefs:
//! the io_uring tracepoints' fields move between kernels.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

/// Where tracefs is mounted, mounting it at /sys/kernel/tracing first if it
/// is not (it is not at boot on some systems); says so on stderr.
pub fn mount_point() -> Result<PathBuf> {
    for path in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        match fs::metadata(Path::new(path).join("events")) {
            Ok(events) if events.is_dir() => return Ok(PathBuf::from(path)),
            // There but unreadable (a security module, a container's
            // mount): mounting again would only fail, and say the wrong thing.
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                bail!("tracefs at {path} cannot be read: {err}")
            }
            _ => {}
        }
    }
    // SAFETY: NUL-terminated static strings; no data.
    let mounted = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if mounted != 0 {
        let err = std::io::Error::last_os_error();
        bail!("tracefs is not mounted and mounting it at /sys/kernel/tracing failed: {err}");
    }
    eprintln!("probe: mounted tracefs at /sys/kernel/tracing, for the io_uring tracepoints");
    Ok(PathBuf::from("/sys/kernel/tracing"))
}

/// A tracepoint's record layout.
pub struct Format {
    event: String,
    text: String,
}

impl Format {
    /// Reads `events/CATEGORY/EVENT/format`.
    pub fn read(tracefs: &Path, category: &str, event: &str) -> Result<Self> {
        let path = tracefs.join("events").join(category).join(event).join("format");
        let text = fs::read_to_string(&path).with_context(|| {
            format!("this kernel has no tracepoint {category}:{event} ({})", path.display())
        })?;
        Ok(Self { event: format!("{category}:{event}"), text })
    }

    /// The byte offset of `field` in the record.
    pub fn offset(&self, field: &str) -> Result<u32> {
        self.text
            .lines()
            .filter_map(|line| line.trim().strip_prefix("field:"))
            .find_map(|line| {
                let mut parts = line.split(';');
                let declaration = parts.next()?.trim();
                let name = declaration.rsplit(|c: char| c.is_whitespace() || c == '*').next()?;
                let name = name.split('[').next()?;
                if name != field {
                    return None;
                }
                parts.next()?.trim().strip_prefix("offset:")?.parse().ok()
            })
            .with_context(|| format!("the tracepoint {} has no field {field} on this kernel", self.event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBMIT: &str = "name: io_uring_submit_req
ID: 1234
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:void * req;\toffset:16;\tsize:8;\tsigned:0;
\tfield:u8 opcode;\toffset:32;\tsize:1;\tsigned:0;
\tfield:__data_loc char[] op_str;\toffset:52;\tsize:4;\tsigned:0;
";

    #[test]
    fn offsets_come_from_the_format_and_missing_fields_are_named() {
        let format = Format { event: "io_uring:io_uring_submit_req".into(), text: SUBMIT.into() };
        assert_eq!(format.offset("req").unwrap(), 16);
        assert_eq!(format.offset("opcode").unwrap(), 32);
        assert_eq!(format.offset("op_str").unwrap(), 52);
        let err = format.offset("user_data").unwrap_err().to_string();
        assert_eq!(err, "the tracepoint io_uring:io_uring_submit_req has no field user_data on this kernel");
    }
}

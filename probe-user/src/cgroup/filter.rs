//! `--cgroup`: the cgroup v2 directories whose threads are traced, opened
//! beneath the unified hierarchy's mount without following links, and the
//! threads already in them.

use std::{
    collections::VecDeque,
    ffi::OsStr,
    fs::File,
    io::Read,
    os::{fd::OwnedFd, unix::ffi::OsStrExt},
    path::{Component, Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use nix::{
    dir::{Dir, Type},
    errno::Errno,
    fcntl::{open, openat, openat2, OFlag, OpenHow, ResolveFlag},
    sys::{
        stat::Mode,
        statfs::{fstatfs, CGROUP2_SUPER_MAGIC},
    },
};
use probe_common::MAX_CGROUPS;

use crate::escape;

/// The given cgroups, open, and where the unified hierarchy is mounted.
pub struct Filter {
    /// The unified hierarchy's mount, open.
    mount: OwnedFd,
    /// Each cgroup's path relative to the mount.
    relative: Vec<PathBuf>,
    /// Each cgroup's directory, for the kernel's cgroup array.
    pub dirs: Vec<OwnedFd>,
}

impl Filter {
    /// Opens each of `paths` (absolute under the cgroup2 mount, or relative
    /// to it): a directory of the unified hierarchy, reached without a
    /// symbolic link or another mount on the way.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        if paths.len() > MAX_CGROUPS as usize {
            bail!("--cgroup takes at most {MAX_CGROUPS} cgroups, {} were given", paths.len());
        }
        let mount_point = unified_mount()?;
        let shown_mount = escape::visible(&mount_point.to_string_lossy());
        let mount = open_mount(&mount_point)
            .with_context(|| format!("cannot open the cgroup v2 mount {shown_mount}"))?;
        let mut relative = Vec::new();
        let mut dirs = Vec::new();
        for path in paths {
            let shown = escape::visible(&path.to_string_lossy());
            let inside = match path.strip_prefix(&mount_point) {
                Ok(inside) => inside,
                Err(_) if path.is_absolute() => {
                    bail!("--cgroup {shown} is not under the cgroup v2 mount {shown_mount}")
                }
                Err(_) => path.as_path(),
            };
            if inside.components().any(|part| part == Component::ParentDir) {
                bail!("--cgroup {shown}: give the path without '..'");
            }
            let dir = beneath(&mount, inside).map_err(|err| match err {
                Errno::ENOENT => anyhow::anyhow!("--cgroup {shown}: no such cgroup under {shown_mount}"),
                Errno::ENOTDIR => anyhow::anyhow!("--cgroup {shown} is not a cgroup directory"),
                Errno::ELOOP => {
                    anyhow::anyhow!("--cgroup {shown} goes through a symbolic link: give the real path")
                }
                Errno::EXDEV => anyhow::anyhow!("--cgroup {shown} leaves the cgroup v2 mount {shown_mount}"),
                other => anyhow::anyhow!("cannot open --cgroup {shown}: {}", other.desc()),
            })?;
            relative.push(inside.to_path_buf());
            dirs.push(dir);
        }
        Ok(Self { mount, relative, dirs })
    }

    /// The threads in the cgroups and their descendants now (`cgroup.threads`
    /// of each). A cgroup removed meanwhile has none.
    pub fn threads(&self) -> Vec<u32> {
        let mut tids = Vec::new();
        let mut pending: VecDeque<PathBuf> = self.relative.iter().cloned().collect();
        while let Some(cgroup) = pending.pop_front() {
            let Ok(dir) = beneath(&self.mount, &cgroup) else {
                continue;
            };
            let Ok(mut listing) = Dir::from_fd(dir) else {
                continue;
            };
            for entry in listing.iter().flatten() {
                let name = OsStr::from_bytes(entry.file_name().to_bytes());
                if entry.file_type() == Some(Type::Directory) && name != "." && name != ".." {
                    pending.push_back(cgroup.join(name));
                }
            }
            let mut text = String::new();
            let threads = openat(
                &listing,
                "cgroup.threads",
                OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
                Mode::empty(),
            );
            if threads.map(File::from).is_ok_and(|mut file| file.read_to_string(&mut text).is_ok()) {
                tids.extend(text.lines().filter_map(|line| line.trim().parse::<u32>().ok()));
            }
        }
        tids
    }
}

/// Where the unified (v2) cgroup hierarchy is mounted, from
/// `/proc/self/mountinfo`.
fn unified_mount() -> Result<PathBuf> {
    let mounts = procfs::process::Process::myself()
        .and_then(|process| process.mountinfo())
        .context("cannot read /proc/self/mountinfo")?;
    match mounts.into_iter().find(|mount| mount.fs_type == "cgroup2") {
        Some(mount) => Ok(mount.mount_point),
        None => bail!("--cgroup needs the cgroup v2 hierarchy, and none is mounted (mount -t cgroup2 none /sys/fs/cgroup/unified)"),
    }
}

/// Opens a directory for `beneath` to resolve from, refusing a symbolic
/// link at its end (its path is the kernel's, from mountinfo).
fn open_mount(path: &Path) -> Result<OwnedFd, Errno> {
    let dir = open(path, DIRECTORY | OFlag::O_NOFOLLOW, Mode::empty())?;
    cgroup2(dir)
}

/// The cgroup v2 directory at `path` beneath `mount`, reached without a
/// symbolic link, a `..` out of it or another mount on the way.
fn beneath(mount: &OwnedFd, path: &Path) -> Result<OwnedFd, Errno> {
    let path = if path.as_os_str().is_empty() { Path::new(".") } else { path };
    let resolve =
        ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_XDEV;
    cgroup2(openat2(mount, path, OpenHow::new().flags(DIRECTORY).resolve(resolve))?)
}

/// `dir`, if it is on a cgroup v2 file system.
fn cgroup2(dir: OwnedFd) -> Result<OwnedFd, Errno> {
    match fstatfs(&dir)?.filesystem_type() == CGROUP2_SUPER_MAGIC {
        true => Ok(dir),
        false => Err(Errno::ENOTDIR),
    }
}

const DIRECTORY: OFlag = OFlag::O_RDONLY.union(OFlag::O_DIRECTORY).union(OFlag::O_CLOEXEC);

//! Cgroups the tests make: under the unified hierarchy or a v1 controller's,
//! emptied and removed when dropped.

use std::{
    fs,
    path::{Path, PathBuf},
};

/// The mount of a cgroup hierarchy, from `/proc/self/mountinfo`: the
/// unified one (`cgroup2`), or the v1 one with controller `controller`.
pub fn mount_of(fs_type: &str, controller: Option<&str>) -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        let mut fs = fs.split(' ');
        let super_options = {
            let kind = fs.next()?;
            if kind != fs_type {
                return None;
            }
            fs.nth(1)?
        };
        if let Some(controller) = controller {
            super_options.split(',').find(|option| *option == controller)?;
        }
        Some(PathBuf::from(mount.split(' ').nth(4)?))
    })
}

/// A cgroup this test made, with the parents it had to make: emptied
/// (its processes moved to the root) and removed when dropped.
pub struct TestCgroup {
    mount: PathBuf,
    /// From the mount, the cgroup's own path last.
    made: Vec<PathBuf>,
    pub path: String,
}

impl TestCgroup {
    pub fn make(mount: &Path, path: &str) -> Self {
        let mut made = Vec::new();
        let mut dir = mount.to_path_buf();
        for part in path.split('/').filter(|part| !part.is_empty()) {
            dir.push(part);
            if !dir.exists() {
                fs::create_dir(&dir).unwrap_or_else(|e| panic!("cannot make cgroup {}: {e}", dir.display()));
                made.push(dir.clone());
            }
        }
        Self { mount: mount.to_path_buf(), made, path: format!("/{}", path.trim_matches('/')) }
    }

    pub fn dir(&self) -> PathBuf {
        self.mount.join(self.path.trim_start_matches('/'))
    }

    pub fn enter(&self, pid: u32) {
        fs::write(self.dir().join("cgroup.procs"), pid.to_string()).unwrap();
    }

    pub fn file(&self, name: &str) -> String {
        fs::read_to_string(self.dir().join(name)).unwrap()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for dir in self.made.iter().rev() {
            let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines() {
                let _ = fs::write(self.mount.join("cgroup.procs"), pid);
            }
            let _ = fs::remove_dir(dir);
        }
    }
}

/// Where the unified (v2) hierarchy is mounted: /sys/fs/cgroup/unified on
/// a hybrid layout.
pub fn unified_mount() -> PathBuf {
    mount_of("cgroup2", None).expect("no cgroup2 mount: the cgroup tests need the unified hierarchy")
}

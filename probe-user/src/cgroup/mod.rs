//! Where a process runs: its cgroup (v2), what that cgroup's name says by
//! the common conventions (a container and its runtime, a Kubernetes pod
//! and its QoS class, a systemd service), and how the CFS bandwidth limit
//! of its cpu cgroup throttles it.
//!
//! A process's cgroup is read from `/proc/PID/cgroup` when a report shows
//! the process, at most once per interval (see [`Cgroups`]): never per
//! syscall or per thread. A move (rare: a runtime puts a process in its
//! container once) shows at the next report. Following the moves in the
//! kernel (`cgroup:cgroup_attach_task`) would cost a program, a record and
//! a tracepoint on every attach in the system to spare one small read per
//! shown process and interval, and would still need `/proc` for where a
//! process was before the trace began.
//!
//! Cgroup names are chosen by whoever creates the cgroup (a container's
//! root may): they are escaped for every output, a `/proc/PID/cgroup`
//! whose lines a name with a newline could have forged is not believed,
//! and the files under a cgroup are opened beneath the cgroup mount with
//! no symlink followed.

use std::{
    cell::RefCell,
    collections::VecDeque,
    fs::File,
    io::{self, Read},
    os::fd::OwnedFd,
    sync::{Arc, OnceLock},
};

use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::Serialize;

use crate::{escape, procfs};

pub mod filter;

/// Processes whose cgroup is remembered after they are gone, for the
/// summary; the oldest gone are forgotten first.
const GONE_KEPT: usize = 1024;

/// The container runtimes whose scope names are known: the scope's prefix
/// (`docker-<id>.scope`) and the runtime's name.
const RUNTIMES: [(&str, &str); 4] =
    [("docker-", "docker"), ("cri-containerd-", "containerd"), ("libpod-", "podman"), ("crio-", "cri-o")];

/// Hex digits of a container id as runtimes show it (`docker ps`).
const SHORT_ID: usize = 12;

/// What a process's cgroup says about it (README, "Containers and
/// cgroups"). Every string is escaped.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Labels {
    /// Its cgroup v2 path, from the root of the unified hierarchy.
    pub cgroup: String,
    /// The container it runs in, by the innermost container scope.
    pub container: Option<Container>,
    /// The Kubernetes pod, with `_` in the cgroup name turned back to `-`.
    pub pod_uid: Option<String>,
    /// The pod's QoS class: `guaranteed`, `burstable` or `besteffort`.
    pub pod_qos: Option<&'static str>,
    /// The innermost systemd service (`*.service`) it runs under.
    pub unit: Option<String>,
}

/// A container, as its runtime names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Container {
    /// `docker`, `containerd`, `podman` or `cri-o`.
    pub runtime: &'static str,
    /// The first 12 hex digits of its id.
    pub id: String,
}

impl Labels {
    /// The labels of cgroup v2 path `path` (raw, as `/proc` has it).
    pub fn of_path(path: &str) -> Self {
        let mut labels =
            Self { cgroup: escape::visible(path), container: None, pod_uid: None, pod_qos: None, unit: None };
        let components: Vec<&str> = path.split('/').filter(|part| !part.is_empty()).collect();
        for (i, part) in components.iter().enumerate() {
            if let Some(container) = container_of(part) {
                labels.container = Some(container);
            }
            if let Some((uid, qos)) = pod_of(part, &components[..i]) {
                (labels.pod_uid, labels.pod_qos) = (Some(uid), Some(qos));
            }
            if part.len() > ".service".len() && part.ends_with(".service") {
                labels.unit = Some(escape::visible(part));
            }
        }
        labels
    }

    /// One line for the text report's group header and the live view:
    /// `container docker 3f2a1b4c5d6e, pod …, unit …, cgroup /…`.
    pub fn brief(&self) -> String {
        let mut words = Vec::new();
        if let Some(container) = &self.container {
            words.push(format!("container {} {}", container.runtime, container.id));
        }
        if let (Some(uid), Some(qos)) = (&self.pod_uid, self.pod_qos) {
            words.push(format!("pod {uid} ({qos})"));
        }
        if let Some(unit) = &self.unit {
            words.push(format!("unit {unit}"));
        }
        words.push(format!("cgroup {}", self.cgroup));
        words.join(", ")
    }
}

/// `docker-<64 hex>.scope` and its kin.
fn container_of(part: &str) -> Option<Container> {
    let scope = part.strip_suffix(".scope")?;
    RUNTIMES.iter().find_map(|&(prefix, runtime)| {
        let id = scope.strip_prefix(prefix)?;
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Container { runtime, id: id[..SHORT_ID].to_ascii_lowercase() })
    })
}

/// A pod's slice: `kubepods-pod<uid>.slice` (guaranteed) or
/// `kubepods-<qos>-pod<uid>.slice` under `kubepods.slice` (the systemd
/// driver), or `pod<uid>` under `kubepods[/<qos>]` (the cgroupfs driver).
fn pod_of(part: &str, parents: &[&str]) -> Option<(String, &'static str)> {
    let (qos, uid) = if let Some(rest) = part.strip_prefix("kubepods-").and_then(|p| p.strip_suffix(".slice"))
    {
        let (qos, uid) = match rest.split_once("-pod") {
            Some((qos, uid)) => (Some(qos), uid),
            None => (None, rest.strip_prefix("pod")?),
        };
        (qos, uid)
    } else if parents.first() == Some(&"kubepods") {
        let uid = part.strip_prefix("pod")?;
        (parents.get(1).copied().filter(|_| parents.len() == 2), uid)
    } else {
        return None;
    };
    let qos = match qos {
        None => "guaranteed",
        Some("burstable") => "burstable",
        Some("besteffort") => "besteffort",
        Some(_) => return None,
    };
    let valid = !uid.is_empty()
        && uid.len() <= 64
        && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'_' || b == b'-');
    valid.then(|| (uid.replace('_', "-"), qos))
}

/// The cgroup mounts probe reads under, found once.
struct Mounts {
    /// The unified (v2) hierarchy: `/sys/fs/cgroup` on a v2 host,
    /// `/sys/fs/cgroup/unified` on a hybrid one.
    unified: Option<OwnedFd>,
    /// The v1 hierarchy with the cpu controller, on a hybrid host.
    cpu_v1: Option<OwnedFd>,
}

fn mounts() -> &'static Mounts {
    static MOUNTS: OnceLock<Mounts> = OnceLock::new();
    MOUNTS.get_or_init(|| {
        let mut found = Mounts { unified: None, cpu_v1: None };
        let open = |path: &std::path::Path| {
            nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).ok()
        };
        for info in procfs::mounts() {
            match info.fs_type.as_str() {
                "cgroup2" if found.unified.is_none() => found.unified = open(&info.mount_point),
                "cgroup" if found.cpu_v1.is_none() && info.super_options.contains_key("cpu") => {
                    found.cpu_v1 = open(&info.mount_point)
                }
                _ => {}
            }
        }
        found
    })
}

/// File `file` of cgroup `path` (raw, from `/proc`) under `mount`, read
/// without leaving the mount or following a symlink.
fn read_cgroup_file(mount: &OwnedFd, path: &str, file: &str) -> io::Result<String> {
    let relative = format!("{}/{file}", path.trim_matches('/'));
    let how = OpenHow::new().flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW).resolve(
        ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS,
    );
    let fd = openat2(mount, relative.trim_start_matches('/'), how)?;
    let mut text = String::new();
    // Control files are small; a bound all the same.
    File::from(fd).take(64 * 1024).read_to_string(&mut text)?;
    Ok(text)
}

/// Where a process runs, as its `/proc/PID/cgroup` said.
#[derive(Clone, Debug)]
struct Placement {
    labels: Arc<Labels>,
    /// Its cgroup in the hierarchy with the cpu controller, raw.
    cpu: Option<CpuCgroup>,
}

/// A cgroup whose `cpu.stat` tells its throttling.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CpuCgroup {
    v1: bool,
    /// Raw, from `/proc`.
    path: String,
}

/// Reads process `pid`'s cgroups. `None` when it is gone, has no cgroup
/// v2 line, or its lines are not all well-formed and distinct (a cgroup
/// name with a newline can forge a line).
fn placement_of(pid: u32) -> Option<Placement> {
    mounts().unified.as_ref()?;
    let groups = procfs::cgroups(pid)?;
    let mut hierarchies = FxHashSet::default();
    let (mut unified, mut cpu_v1) = (None, None);
    for group in &groups {
        if !hierarchies.insert(group.hierarchy) || !group.pathname.starts_with('/') {
            return None;
        }
        if group.hierarchy == 0 {
            unified = Some(group.pathname.as_str());
        } else if group.controllers.iter().any(|controller| controller == "cpu") {
            cpu_v1 = Some(group.pathname.as_str());
        }
    }
    let unified = unified?;
    let cpu = match (cpu_v1, &mounts().cpu_v1) {
        (Some(path), Some(_)) => Some(CpuCgroup { v1: true, path: path.to_owned() }),
        (Some(_), None) => None,
        (None, _) => Some(CpuCgroup { v1: false, path: unified.to_owned() }),
    };
    Some(Placement { labels: Arc::new(Labels::of_path(unified)), cpu })
}

/// What a process's cgroup says about it, read now from `/proc` (no
/// cache): for features that label a process once, such as a filter or a
/// blame; `None` if the process is gone or its cgroup unknown.
pub fn labels_of_pid(pid: u32) -> Option<Labels> {
    placement_of(pid).map(|placement| Arc::unwrap_or_clone(placement.labels))
}

/// How the CFS bandwidth limit of a cgroup throttled it, from its
/// `cpu.stat` (the kernel's counters, since the cgroup was made).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Throttling {
    /// The cgroup the counters are of, in the cpu controller's hierarchy.
    pub cgroup: String,
    /// That hierarchy: `"v1"` or `"v2"`.
    pub hierarchy: &'static str,
    /// Enforcement periods in which the cgroup had runnable threads.
    pub periods: u64,
    /// Of them, periods in which it used up its quota and was throttled.
    pub throttled_periods: u64,
    /// Time its threads spent throttled, in all.
    pub throttled_ns: u64,
    /// Its CPU time per period; `null`: no limit of its own (a parent's
    /// may still throttle it, counted in the parent's counters).
    pub quota_us: Option<u64>,
    /// The enforcement period.
    pub period_us: Option<u64>,
}

impl Throttling {
    fn read(cpu: &CpuCgroup) -> Option<Self> {
        let mount = match cpu.v1 {
            true => mounts().cpu_v1.as_ref()?,
            false => mounts().unified.as_ref()?,
        };
        let stat = read_cgroup_file(mount, &cpu.path, "cpu.stat").ok()?;
        let field = |name: &str| {
            stat.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<u64>().ok())
        };
        let (quota_us, period_us, throttled_ns) = if cpu.v1 {
            let read = |file| read_cgroup_file(mount, &cpu.path, file).ok();
            // -1: no quota.
            let quota = read("cpu.cfs_quota_us").and_then(|quota| quota.trim().parse::<u64>().ok());
            let period = read("cpu.cfs_period_us").and_then(|period| period.trim().parse().ok());
            (quota, period, field("throttled_time")?)
        } else {
            // `max 100000` or `50000 100000`.
            let max = read_cgroup_file(mount, &cpu.path, "cpu.max").ok();
            let mut words = max.as_deref().unwrap_or_default().split_whitespace();
            let quota = words.next().and_then(|quota| quota.parse().ok());
            let period = words.next().and_then(|period| period.parse().ok());
            (quota, period, field("throttled_usec")?.saturating_mul(1000))
        };
        Some(Self {
            cgroup: escape::visible(&cpu.path),
            hierarchy: if cpu.v1 { "v1" } else { "v2" },
            // Absent without the cpu controller (v2): nothing to say then.
            periods: field("nr_periods")?,
            throttled_periods: field("nr_throttled")?,
            throttled_ns,
            quota_us,
            period_us,
        })
    }
}

/// The cgroups of the processes the reports show, read at most once per
/// interval each, and their throttling, read once per interval per cgroup.
/// The event loop owns it and starts each interval; the outputs ask.
#[derive(Default)]
pub struct Cgroups {
    state: RefCell<State>,
}

#[derive(Default)]
struct State {
    /// Counts intervals.
    interval: u64,
    processes: FxHashMap<u32, Known>,
    /// Processes found gone, oldest first.
    gone: VecDeque<u32>,
    /// This interval's throttling reads.
    throttling: FxHashMap<CpuCgroup, Option<Throttling>>,
}

struct Known {
    placement: Placement,
    /// The interval it was read in.
    read_in: u64,
    gone: bool,
}

impl Cgroups {
    /// A new interval: what is asked next is read again.
    pub fn next_interval(&self) {
        let mut state = self.state.borrow_mut();
        state.interval += 1;
        state.throttling.clear();
    }

    /// Process `pid`'s placement: read in this interval, or as last read
    /// before it was gone.
    fn placement(&self, pid: u32) -> Option<Placement> {
        let mut state = self.state.borrow_mut();
        let interval = state.interval;
        if let Some(known) = state.processes.get(&pid).filter(|known| known.read_in == interval || known.gone)
        {
            return Some(known.placement.clone());
        }
        match placement_of(pid) {
            Some(placement) => {
                let known = Known { placement: placement.clone(), read_in: interval, gone: false };
                state.processes.insert(pid, known);
                Some(placement)
            }
            None => {
                let known = state.processes.get_mut(&pid)?;
                known.gone = true;
                let placement = known.placement.clone();
                state.gone.push_back(pid);
                if state.gone.len() > GONE_KEPT {
                    let forgotten = state.gone.pop_front().expect("a process gone");
                    state.processes.remove(&forgotten);
                }
                Some(placement)
            }
        }
    }

    /// What process `pid`'s cgroup says; `None` if it was never read (the
    /// process was gone before a report showed it).
    pub fn labels(&self, pid: u32) -> Option<Arc<Labels>> {
        self.placement(pid).map(|placement| placement.labels)
    }

    /// The throttling of process `pid`'s cpu cgroup, read in this interval;
    /// `None` without a cpu controller or a readable `cpu.stat`.
    pub fn throttling(&self, pid: u32) -> Option<Throttling> {
        let cpu = self.placement(pid)?.cpu?;
        let mut state = self.state.borrow_mut();
        state.throttling.entry(cpu).or_insert_with_key(Throttling::read).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a1b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f703";

    #[test]
    fn names_say_container_pod_and_unit() {
        let docker = Labels::of_path(&format!("/system.slice/docker-{ID}.scope"));
        assert_eq!(docker.container, Some(Container { runtime: "docker", id: "3f2a1b4c5d6e".into() }));
        assert_eq!((docker.pod_uid, docker.unit), (None, None));
        let pod = Labels::of_path(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b3c4d_5e6f_7a8b_9c0d_112233445566.slice/cri-containerd-{ID}.scope"
        ));
        assert_eq!(pod.container.unwrap().runtime, "containerd");
        assert_eq!(pod.pod_uid.as_deref(), Some("1a2b3c4d-5e6f-7a8b-9c0d-112233445566"));
        assert_eq!(pod.pod_qos, Some("burstable"));
        let guaranteed = Labels::of_path("/kubepods.slice/kubepods-podabc_1.slice");
        assert_eq!((guaranteed.pod_uid.as_deref(), guaranteed.pod_qos), (Some("abc-1"), Some("guaranteed")));
        let cgroupfs = Labels::of_path(&format!("/kubepods/besteffort/podabc/{ID}"));
        assert_eq!((cgroupfs.pod_uid.as_deref(), cgroupfs.pod_qos), (Some("abc"), Some("besteffort")));
        let unit = Labels::of_path("/system.slice/nginx.service");
        assert_eq!((unit.unit.as_deref(), &unit.container), (Some("nginx.service"), &None));
        assert_eq!(unit.brief(), "unit nginx.service, cgroup /system.slice/nginx.service");
        let podman = Labels::of_path(&format!("/machine.slice/libpod-{ID}.scope/container"));
        assert_eq!(podman.container.unwrap().runtime, "podman");
    }

    #[test]
    fn hostile_names_label_nothing_and_show_escaped() {
        let short = Labels::of_path("/system.slice/docker-abc.scope");
        assert_eq!(short.container, None);
        let odd = Labels::of_path("/kubepods.slice/kubepods-weird-podabc.slice/\x1b[2J.service");
        assert_eq!((odd.pod_uid, odd.pod_qos), (None, None));
        assert_eq!(odd.unit.as_deref(), Some("\\x1b[2J.service"));
        assert!(!odd.cgroup.contains('\x1b'));
    }

    #[test]
    fn this_process_has_a_cgroup() {
        let Some(unified) = mounts().unified.as_ref() else {
            return;
        };
        let labels = labels_of_pid(std::process::id()).expect("our own cgroup");
        assert!(labels.cgroup.starts_with('/'));
        assert!(read_cgroup_file(unified, "/", "cgroup.procs").is_ok());
        // Nothing outside the mount.
        assert!(read_cgroup_file(unified, "/../../../../etc", "passwd").is_err());
    }
}

//! Containers and cgroups: workloads moved into cgroups named the way
//! docker, a Kubernetes pod's containerd and systemd name theirs are
//! labelled so in the JSON report and the Prometheus scrape; a busy
//! workload under a CPU quota shows the throttling the kernel's own
//! `cpu.stat` counts. Needs root: the tests make cgroups.

mod common;

use std::{
    fs,
    io::Read,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{cgroup::*, metrics::*, *};
use serde_json::Value;

/// Hex digits unique to this test run, `len` of them.
fn hex(seed: u64, len: usize) -> String {
    let mut digits = String::new();
    let mut x = seed ^ u64::from(std::process::id()) << 20;
    while digits.len() < len {
        // splitmix64: distinct runs, distinct ids.
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        digits.push_str(&format!("{:016x}", z ^ (z >> 31)));
    }
    digits.truncate(len);
    digits
}

fn signal(pid: u32) {
    assert!(Command::new("kill").args(["-USR1", &pid.to_string()]).status().unwrap().success());
}

/// The summary's entry for process `pid`.
fn process(summary: &Value, pid: u32) -> &Value {
    let processes = summary["processes"].as_array().expect("processes in the summary");
    processes
        .iter()
        .find(|process| process["pid"] == pid)
        .unwrap_or_else(|| panic!("no process {pid}: {summary}"))
}

#[test]
fn containers_pods_and_units_are_labelled_in_json_and_prometheus() {
    let unified = mount_of("cgroup2", None).expect("a cgroup2 mount");
    let run = std::process::id();
    let (docker_id, containerd_id) = (hex(1, 64), hex(2, 64));
    let uid = format!("{}-{}-{}-{}-{}", hex(3, 8), hex(4, 4), hex(5, 4), hex(6, 4), hex(7, 12));
    let docker = TestCgroup::make(&unified, &format!("system.slice/docker-{docker_id}.scope"));
    let pod = TestCgroup::make(
        &unified,
        &format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{containerd_id}.scope",
            uid.replace('-', "_")
        ),
    );
    let unit_name = format!("probe-test-{run}.service");
    let service = TestCgroup::make(&unified, &format!("system.slice/{unit_name}"));

    // Each lives past the first interval after its calls, for its report
    // to read its cgroup; the last one keeps probe (and its endpoint) up
    // until the scrape is done.
    let args = ["--wait-signal", "--getppid", "300", "--sleep", "1x600"];
    let mut workloads: Vec<_> = (0..3).map(|_| start_workload(&args, "{\"ready\"")).collect();
    let (mut keeper, _keeper_out) = start_workload(&["--wait-signal"], "{\"ready\"");
    let pids: Vec<u32> = workloads.iter().map(|(workload, _)| workload.id()).collect();
    for (cgroup, &pid) in [&docker, &pod, &service].into_iter().zip(&pids) {
        cgroup.enter(pid);
    }
    let port = free_port();
    let report = report_path("cgroup-labels");
    let targets: Vec<String> = pids.iter().chain([&keeper.id()]).map(u32::to_string).collect();
    let mut probe = Running::spawn(
        Command::new(PROBE)
            .args(["--json", "-o"])
            .arg(&report)
            .args(["-i", "200ms", "--prometheus", &format!("127.0.0.1:{port}"), "--prometheus-pids"])
            .args(["-p", &targets.join(",")])
            .stderr(Stdio::piped()),
    );
    let mut probe_stderr = wait_until_tracing(&mut probe);
    for &pid in &pids {
        signal(pid);
    }
    for (workload, _) in &mut workloads {
        assert!(workload.wait().unwrap().success());
    }

    // Every process's series, with its labels, once an interval has them.
    let deadline = Instant::now() + Duration::from_secs(10);
    let expected = |pid: u32| -> Vec<(&str, String)> {
        match pids.iter().position(|&p| p == pid) {
            Some(0) => vec![("container", docker_id[..12].to_owned())],
            Some(1) => vec![("container", containerd_id[..12].to_owned()), ("pod_uid", uid.clone())],
            _ => vec![("unit", unit_name.clone())],
        }
    };
    loop {
        let samples = scrape(port);
        let labelled = pids.iter().all(|&pid| {
            samples.iter().any(|sample| {
                sample.metric == "probe_syscalls_total"
                    && sample.labels.get("pid") == Some(&pid.to_string())
                    && sample.labels.get("syscall") == Some("getppid")
            })
        });
        if labelled {
            for &pid in &pids {
                let series: Vec<_> = samples
                    .iter()
                    .filter(|s| {
                        s.metric == "probe_syscalls_total" && s.labels.get("pid") == Some(&pid.to_string())
                    })
                    .collect();
                for sample in series {
                    for (label, value) in expected(pid) {
                        assert_eq!(
                            sample.labels.get(label),
                            Some(value.as_str()),
                            "{label} of {pid}: {sample:?}"
                        );
                    }
                    let absent = ["container", "pod_uid", "unit"]
                        .into_iter()
                        .filter(|label| !expected(pid).iter().any(|(expected, _)| expected == label));
                    for label in absent {
                        assert_eq!(sample.labels.get(label), None, "{label} of {pid}: {sample:?}");
                    }
                }
            }
            break;
        }
        assert!(Instant::now() < deadline, "no labelled series after 10 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(keeper.id());
    assert!(keeper.wait().unwrap().success());
    let status = wait_with_timeout(&mut probe, Duration::from_secs(10));
    let mut errors = String::new();
    probe_stderr.read_to_string(&mut errors).unwrap();
    assert!(status.success(), "probe failed: {errors}");
    let trace = Trace::read(&report);
    fs::remove_file(&report).unwrap();

    let summary = &trace.summary;
    let docker_process = process(summary, pids[0]);
    assert_eq!(docker_process["cgroup"], docker.path, "{docker_process}");
    assert_eq!(docker_process["container"]["runtime"], "docker");
    assert_eq!(docker_process["container"]["id"], &docker_id[..12]);
    assert_eq!((&docker_process["pod_uid"], &docker_process["unit"]), (&Value::Null, &Value::Null));
    let pod_process = process(summary, pids[1]);
    assert_eq!(pod_process["cgroup"], pod.path, "{pod_process}");
    assert_eq!(pod_process["container"]["runtime"], "containerd");
    assert_eq!(pod_process["container"]["id"], &containerd_id[..12]);
    assert_eq!(pod_process["pod_uid"], uid);
    assert_eq!(pod_process["pod_qos"], "burstable");
    let unit_process = process(summary, pids[2]);
    assert_eq!(unit_process["cgroup"], service.path, "{unit_process}");
    assert_eq!(unit_process["unit"], unit_name);
    assert_eq!(unit_process["container"], Value::Null);
    // The keeper stayed where the test runs.
    let own = fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own.lines().find_map(|line| line.strip_prefix("0::")).unwrap();
    assert_eq!(process(summary, keeper.id())["cgroup"], own);
}

#[test]
fn a_cpu_quota_throttles_and_probe_counts_what_the_kernel_counts() {
    let run = std::process::id();
    let name = format!("probe-test-throttle-{run}");
    // Where the cpu controller is: a v1 hierarchy of its own, or the
    // unified one (then enabled for the test's cgroup).
    let (cgroup, v1) = match mount_of("cgroup", Some("cpu")) {
        Some(mount) => {
            let cgroup = TestCgroup::make(&mount, &name);
            fs::write(cgroup.dir().join("cpu.cfs_period_us"), "100000").unwrap();
            fs::write(cgroup.dir().join("cpu.cfs_quota_us"), "10000").unwrap();
            (cgroup, true)
        }
        None => {
            let unified = mount_of("cgroup2", None).expect("a cgroup2 mount");
            fs::write(unified.join("cgroup.subtree_control"), "+cpu").unwrap();
            let cgroup = TestCgroup::make(&unified, &name);
            fs::write(cgroup.dir().join("cpu.max"), "10000 100000").unwrap();
            (cgroup, false)
        }
    };
    // A tenth of a CPU for 600 ms of spinning: throttled in most periods,
    // however busy the machine.
    let (mut workload, stdout) = start_workload(&["--wait-signal", "--spin", "600"], "{\"ready\"");
    let pid = workload.id();
    cgroup.enter(pid);
    let (trace, _) = trace_pid("throttle", &["-i", "200ms"], &mut workload, stdout, || signal(pid));

    let stat = cgroup.file("cpu.stat");
    let field = |name: &str| -> u64 {
        stat.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {stat}"))
    };
    let throttled_ns = if v1 { field("throttled_time ") } else { field("throttled_usec ") * 1000 };
    let process = process(&trace.summary, pid);
    let throttling = &process["throttling"];
    assert!(field("nr_throttled ") > 0, "the quota did not throttle: {stat}");
    // Read after the workload exited: nothing counts since.
    assert_eq!(throttling["throttled_periods"], field("nr_throttled "), "{throttling} vs {stat}");
    // The period timer may count a period or two after the last thread
    // left, when nothing runs to throttle.
    let periods = throttling["periods"].as_u64().unwrap();
    assert!(periods <= field("nr_periods ") && periods >= field("nr_throttled "), "{throttling} vs {stat}");
    assert_eq!(throttling["throttled_ns"], throttled_ns, "{throttling} vs {stat}");
    assert_eq!(throttling["quota_us"], 10000);
    assert_eq!(throttling["period_us"], 100000);
    assert_eq!(throttling["hierarchy"], if v1 { "v1" } else { "v2" });
    assert_eq!(throttling["cgroup"], cgroup.path);
    // A throttled thread waits runnable: its run-queue wait holds that time.
    let runq = process["runq_wait_ns"].as_u64().unwrap();
    assert!(runq >= throttled_ns / 2, "run-queue wait {runq} ns, throttled {throttled_ns} ns");
    // An interval report said so while it ran.
    assert!(
        trace.intervals.iter().any(|interval| interval["processes"].as_array().is_some_and(|processes| {
            processes
                .iter()
                .any(|p| p["pid"] == pid && p["throttling"]["throttled_periods"].as_u64() > Some(0))
        })),
        "no interval showed the throttling"
    );
}

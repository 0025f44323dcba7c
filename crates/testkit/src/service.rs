//! Runs a service binary the way an operator would: a config file, environment, an admin
//! port; waits for `/readyz`; stops it with SIGTERM or `kill -9`.
//!
//! Binaries are taken from the cargo target directory of the running test (`make test`
//! builds them first with `cargo build --workspace --bins`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

/// The cargo profile directory the running test binary was built into (`target/debug`).
pub fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test>-<hash>
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// The path of a workspace binary, or a panic that says how to build it.
pub fn binary(name: &str) -> PathBuf {
    let path = target_profile_dir().join(name);
    assert!(
        path.is_file(),
        "binary `{name}` not found at {}: run `cargo build --workspace --bins` first (`make test` does)",
        path.display()
    );
    path
}

/// Runs a one-shot command (a CLI subcommand) to its end: its exit code (-1 when a signal
/// ended it), stdout and stderr.
pub async fn run_to_end(command: &mut Command) -> (i32, String, String) {
    let output = command
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The ports [`free_port`] hands out: none of the fixed ports the Makefile, the demo and the
/// benchmarks use, and below Linux's default range for outgoing connections' ports.
const SERVICE_PORTS: std::ops::Range<u32> = 20_001..29_000;

/// A free loopback port for a service to bind: checked free by binding it, then let go.
///
/// A port from the kernel (`bind` to port 0) is one it also hands to outgoing connections (the
/// range in `/proc/sys/net/ipv4/ip_local_port_range`, 32768–60999 by default), so between its
/// release and the service's bind any client's connection, or another test's listener, could
/// take it, and the service would stop, unable to listen. So the ports come from
/// [`SERVICE_PORTS`], in turn, starting at an offset of this process's id: no two calls in a
/// process get the same one. Where the kernel's range overlaps them, from the kernel.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    static KERNEL_RANGE_CLEAR: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let bind = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).ok();
    let clear = *KERNEL_RANGE_CLEAR.get_or_init(|| {
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range");
        let first = range
            .ok()
            .and_then(|r| r.split_whitespace().next()?.parse().ok());
        first.is_some_and(|first: u32| first >= SERVICE_PORTS.end)
    });
    if clear {
        let span = SERVICE_PORTS.end - SERVICE_PORTS.start;
        let offset = std::process::id() % span;
        for _ in 0..span {
            let turn = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let port = SERVICE_PORTS.start + (offset + turn) % span;
            let port = u16::try_from(port).expect("SERVICE_PORTS are ports");
            if bind(port).is_some() {
                return port;
            }
        }
    }
    let listener = bind(0).expect("a loopback port to bind");
    listener.local_addr().unwrap().port()
}

/// How to start a service.
#[derive(Debug)]
pub struct ServiceBuilder {
    name: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
}

impl ServiceBuilder {
    pub fn new(binary_name: &str) -> Self {
        let mut env = BTreeMap::new();
        env.insert("LOG_FORMAT".to_owned(), "pretty".to_owned());
        env.insert("RUST_LOG".to_owned(), "info".to_owned());
        if let Ok(brokers) = std::env::var("KAFKA_BROKERS") {
            env.insert("KAFKA_BROKERS".to_owned(), brokers);
        }
        Self {
            name: binary_name.to_owned(),
            args: Vec::new(),
            env,
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.insert(key.to_owned(), value.into());
        self
    }

    /// Starts the process with `ADMIN_ADDR` on a free port; output goes to a log file.
    pub fn spawn(self) -> Service {
        let admin_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let log_dir = target_profile_dir().join("test-logs");
        std::fs::create_dir_all(&log_dir).unwrap();
        let log_path = log_dir.join(format!("{}.log", crate::unique_name(&self.name)));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(binary(&self.name))
            .args(&self.args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&self.env)
            .env("ADMIN_ADDR", admin_addr.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.name));
        Service {
            name: self.name,
            child,
            admin_addr,
            log_path,
        }
    }
}

/// A running service process; killed when dropped.
#[derive(Debug)]
pub struct Service {
    name: String,
    child: Child,
    admin_addr: SocketAddr,
    log_path: PathBuf,
}

impl Service {
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    /// What the process wrote so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until `/readyz` answers 200; panics with the process's log if it exits first or
    /// the timeout passes.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let client = reqwest::Client::new();
        let url = self.admin_url("/readyz");
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "{} exited with {status} before it was ready; its log:\n{}",
                    self.name,
                    self.log()
                );
            }
            let answer = client
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if answer.is_ok_and(|response| response.status().is_success()) {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "{} was not ready within {timeout:?}; its log:\n{}",
                    self.name,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The Prometheus text from `/metrics`.
    pub async fn metrics(&self) -> String {
        let response = reqwest::get(self.admin_url("/metrics")).await.unwrap();
        assert!(
            response.status().is_success(),
            "GET /metrics: {}",
            response.status()
        );
        response.text().await.unwrap()
    }

    /// The process id, while the process has not been reaped (e.g. to read `/proc/<pid>`).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The stacks of the process's threads whose frames mention `matching` (e.g.
    /// `qualifier::processor`), as `gdb` prints them: where a hung process hangs, for the
    /// report of a test that found it stuck. Says why when there are none (no `gdb`, the
    /// process gone, no thread matched).
    pub fn stacks(&self, matching: &str) -> String {
        let Some(pid) = self.child.id() else {
            return "no stacks: the process has exited".to_owned();
        };
        let output = std::process::Command::new("timeout")
            .args(["60", "gdb", "--batch", "-p", &pid.to_string()])
            .args(["-ex", "set pagination off", "-ex", "thread apply all bt 40"])
            .output();
        let (text, errors) = match output {
            Ok(output) => (
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            ),
            Err(error) => return format!("no stacks: cannot run gdb: {error}"),
        };
        let threads: Vec<&str> = text
            .split("\nThread ")
            .skip(1)
            .filter(|thread| thread.contains(matching))
            .collect();
        if threads.is_empty() {
            return format!(
                "no stacks: no thread of {} (pid {pid}) has a frame matching `{matching}` ({} bytes from gdb; its errors: {})",
                self.name,
                text.len(),
                errors.trim()
            );
        }
        threads
            .iter()
            .map(|thread| format!("Thread {}", thread.trim_end()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// How the process ended, or `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Sends SIGTERM (what Kubernetes does to stop a pod).
    pub fn terminate(&self) {
        let pid = self.child.id().expect("process already reaped");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM {pid} failed");
    }

    /// `kill -9`: no chance to flush or commit.
    pub async fn kill9(&mut self) {
        self.child.kill().await.unwrap();
    }

    /// Waits for the process to exit; panics with its log after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!(
                "{} did not exit within {timeout:?}; its log:\n{}",
                self.name,
                self.log()
            ),
        }
    }
}

/// The sum of the samples `selector` matches in Prometheus text, e.g.
/// `metric_value(text, "delivery_events_total{destination=\"423\",outcome=\"delivered\"}")`,
/// or `None` when none does (the semantics: [`crate::scrape`]). Panics on text or a selector
/// it cannot read: a bug in the service or the test, never a missing value.
pub fn metric_value(metrics_text: &str, selector: &str) -> Option<f64> {
    let selector = crate::scrape::Selector::parse(selector).unwrap_or_else(|e| panic!("{e}"));
    let scrape = crate::scrape::Scrape::parse(metrics_text).unwrap_or_else(|e| panic!("{e}"));
    scrape.sum(&selector).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ports come from outside the kernel's range for outgoing connections, and never twice.
    /// Fails for a port from the kernel (the race the range avoids).
    #[test]
    fn free_ports_are_out_of_the_kernels_way_and_unique() {
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
        let first: u32 = range.split_whitespace().next().unwrap().parse().unwrap();
        assert!(first >= SERVICE_PORTS.end, "this machine's range: {range}");
        let ports: Vec<u16> = (0..100).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        assert!(
            ports.iter().all(|&p| SERVICE_PORTS.contains(&u32::from(p))),
            "{ports:?}"
        );
    }
}

//! A real API process (the `engine-api` binary) started as a child of the test, so a test
//! can read its memory from `/proc` and see whether it is still the same process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::client::ApiClient;
use crate::wait::wait_until;
use crate::worker_process::{binary, free_loopback_address};

/// `engine-api serve` with a settings file and overrides, killed on drop.
pub struct ApiProcess {
    child: Child,
    pub address: SocketAddr,
    pub log: PathBuf,
}

impl ApiProcess {
    /// Starts it on a free loopback port with `config` and `env` on top, and waits until
    /// `/healthz` answers.
    pub async fn spawn(config: &Path, env: &[(&str, &str)]) -> Self {
        let address = free_loopback_address();
        let log = std::env::temp_dir().join(format!("api-{}.log", rand::random::<u32>()));
        let child = Command::new(binary("engine-api"))
            .arg("--config")
            .arg(config)
            .arg("serve")
            .env_remove("DATABASE_URL")
            .env_remove("AMQP_URL")
            .env("ENGINE__API__LISTEN", address.to_string())
            .env("RUST_LOG", "info,sqlx=warn,lapin=warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting engine-api");
        let mut process = Self {
            child,
            address,
            log,
        };
        let health = ApiClient::new(address, None);
        wait_until(
            "engine-api to answer /healthz",
            Duration::from_secs(30),
            || {
                let health = health.clone();
                let exited = process.exited();
                async move {
                    assert!(!exited, "engine-api exited at start-up");
                    let answered = tokio::time::timeout(Duration::from_secs(1), async {
                        reqwest::get(format!("http://{}/healthz", health.address())).await
                    })
                    .await;
                    matches!(answered, Ok(Ok(response)) if response.status().is_success())
                        .then_some(())
                }
            },
        )
        .await;
        process
    }

    /// The process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has ended (crashed, killed, OOM-killed).
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// Its resident memory now (`VmRSS`) and at its peak so far (`VmHWM`), in bytes.
    pub fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("reading the API process's /proc status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().strip_suffix("kB"))
                .and_then(|kib| kib.trim().parse::<u64>().ok())
                .map(|kib| kib * 1024)
                .unwrap_or_else(|| panic!("no {name} in /proc/{}/status", self.pid()))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

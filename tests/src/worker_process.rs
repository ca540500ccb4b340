//! A real worker process (the `engine-worker` binary, or the test build with its test kinds)
//! started as a child of the test, so a test can signal, kill and read it like an operator.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use engine_shared::Namespace;

/// A real worker process (the `engine-worker` binary), killed on drop.
pub struct WorkerProcess {
    child: Child,
    pub log: PathBuf,
}

/// The path of one of the workspace's binaries (`engine-worker`, `engine-api`), built
/// beside the test executable.
pub fn binary(name: &str) -> PathBuf {
    // target/<profile>/deps/e2e-<hash> → target/<profile>/<name>
    let exe = std::env::current_exe().unwrap();
    let binary = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (bin/test does)",
        binary.display()
    );
    binary
}

impl WorkerProcess {
    pub fn spawn(
        config: &std::path::Path,
        namespace: &Namespace,
        concurrency: u16,
        grace_secs: u64,
    ) -> Self {
        Self::spawn_binary(
            "engine-worker",
            config,
            namespace,
            concurrency,
            grace_secs,
            &[],
        )
    }

    /// Starts the workspace binary `name` as a worker with these settings, and `env` set on
    /// top of them.
    pub fn spawn_binary(
        name: &str,
        config: &std::path::Path,
        namespace: &Namespace,
        concurrency: u16,
        grace_secs: u64,
        env: &[(&str, &str)],
    ) -> Self {
        let log =
            std::env::temp_dir().join(format!("{namespace}-worker-{}.log", rand::random::<u32>()));
        let child = Command::new(binary(name))
            .arg("--config")
            .arg(config)
            .env_remove("DATABASE_URL")
            .env_remove("AMQP_URL")
            .env("ENGINE__WORKER__CONCURRENCY", concurrency.to_string())
            .env("ENGINE__WORKER__GRACE_PERIOD_SECS", grace_secs.to_string())
            .env("RUST_LOG", "info,sqlx=warn,lapin=warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self { child, log }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    fn signal(&self, signal: i32) {
        let result = unsafe_kill(self.pid(), signal);
        assert_eq!(result, 0, "kill({}, {signal}) failed", self.pid());
    }

    /// SIGKILL: the process dies at once, mid-job, without any cleanup.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// SIGTERM: asks for a graceful drain.
    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits for the process to exit, up to `deadline`.
    pub async fn wait(&mut self, deadline: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < deadline,
                "worker did not exit within {deadline:?}; log: {}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A loopback address with a port free right now, for a child process to listen on (e.g.
/// a worker's `ENGINE__WORKER__HEALTH_LISTEN`). Another process could take the port before
/// the child binds it: the child would then exit at start-up, and the test fail.
pub fn free_loopback_address() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
}

#[allow(unsafe_code)]
fn unsafe_kill(pid: i32, signal: i32) -> i32 {
    // SAFETY: kill(2) has no memory-safety preconditions; pid is our own child.
    unsafe { libc::kill(pid, signal) }
}

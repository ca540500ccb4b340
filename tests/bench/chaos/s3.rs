//! The chaos run's own S3-compatible server: an `s3s-fs` process (the one
//! `infra/local/prepare.sh` installs) on a free loopback port, serving a folder under the
//! run directory with the local credentials, so that killing and restarting it harms no
//! one else's storage. The machine's shared server on port 9100 is never touched.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::process::{Child, Command};

use super::{files, ports, wait};

/// How long the server may take to answer after a start.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A running `s3s-fs`; killed if dropped.
pub struct S3Server {
    binary: PathBuf,
    /// Fixed for the run's life, so a restarted server is where the fleet's settings say.
    port: u16,
    /// The served folder: each of its folders is a bucket. It outlives restarts, as a real
    /// server's disk would.
    root: PathBuf,
    /// Appended to by every start, so the log of a killed server is kept.
    log: PathBuf,
    access_key: String,
    secret_key: String,
    http: reqwest::Client,
    child: Child,
}

impl S3Server {
    /// Starts `s3s-fs` on a free loopback port serving `<run_dir>/s3`, with `bucket` in it,
    /// and waits until it answers HTTP.
    pub async fn start(
        run_dir: &Path,
        bucket: &str,
        (access_key, secret_key): (&str, &str),
        http: reqwest::Client,
    ) -> anyhow::Result<Self> {
        let binary = find_binary()?;
        let root = run_dir.join("s3");
        std::fs::create_dir_all(root.join(bucket))
            .with_context(|| format!("creating {}", root.join(bucket).display()))?;
        let port = ports::free_port()?;
        let log = run_dir.join("s3s-fs.log");
        let child = spawn(&binary, port, &root, &log, (access_key, secret_key))?;
        let server = Self {
            binary,
            port,
            root,
            log,
            access_key: access_key.to_owned(),
            secret_key: secret_key.to_owned(),
            http,
            child,
        };
        server.wait_answering().await?;
        Ok(server)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the server with SIGKILL, starts it again on the same port and folder, and waits
    /// until it answers; returns how long it was away.
    pub async fn restart(&mut self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.child.kill().await.context("killing s3s-fs")?;
        self.child = spawn(
            &self.binary,
            self.port,
            &self.root,
            &self.log,
            (&self.access_key, &self.secret_key),
        )?;
        self.wait_answering().await?;
        Ok(started.elapsed())
    }

    /// Objects of the served folder whose key ends with `suffix` (each object is a file of
    /// that name; s3s-fs keeps its metadata beside it under other names).
    pub fn objects_ending_with(&self, suffix: &str) -> usize {
        files::count(&self.root, suffix)
    }

    /// Stops the server (SIGKILL: it keeps nothing in memory that its folder lacks).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.child.kill().await.context("stopping s3s-fs")
    }

    /// Any HTTP answer counts: without credentials it refuses, but it is serving.
    async fn wait_answering(&self) -> anyhow::Result<Duration> {
        let url = self.endpoint();
        let what = format!(
            "the run's s3s-fs to answer on {url} (log {})",
            self.log.display()
        );
        wait::until(&what, START_DEADLINE, || async {
            let answer = self
                .http
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            answer.is_ok()
        })
        .await
    }
}

fn spawn(
    binary: &Path,
    port: u16,
    root: &Path,
    log: &Path,
    (access_key, secret_key): (&str, &str),
) -> anyhow::Result<Child> {
    let output = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let errors = output
        .try_clone()
        .with_context(|| format!("opening {}", log.display()))?;
    Command::new(binary)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", access_key, "--secret-key", secret_key])
        .arg(root)
        .stdin(Stdio::null())
        .stdout(Stdio::from(output))
        .stderr(Stdio::from(errors))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

/// `s3s-fs` on the PATH, else in `~/.cargo/bin` (where the prepare script's
/// `cargo install` puts it).
fn find_binary() -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    let cargo_bin = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo/bin"));
    on_path
        .into_iter()
        .chain(cargo_bin)
        .map(|dir| dir.join("s3s-fs"))
        .find(|candidate| candidate.is_file())
        .context("s3s-fs is not installed (infra/local/prepare.sh installs it with cargo)")
}

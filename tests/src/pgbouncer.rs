//! A PgBouncer of the test's own in transaction mode in front of the test database (or, for
//! the benchmark's `--pooler` mode, any database on a server it can reach): the kind of
//! pooler Neon puts behind its `-pooler` endpoint, so a test can run the fleet (or the store)
//! through one. Debian's PgBouncer (1.18) keeps no prepared statements in this mode, the
//! strictest a client can meet.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::Url;

use crate::services;

/// A running PgBouncer; stopped when dropped.
pub struct PgBouncer {
    child: Child,
    port: u16,
    folder: PathBuf,
    /// The database it forwards to: its URL through PgBouncer is this one with PgBouncer's
    /// port, and `SHOW STATS` is read for this database.
    backend: Url,
}

/// How the test's PgBouncer is set up.
#[derive(Clone, Copy, Debug)]
pub struct PgBouncerOptions {
    /// Server connections per database/user pair (`default_pool_size`): fewer than the
    /// clients, so clients really take turns on them.
    pub server_connections: u16,
    /// Accept the start-up parameters a direct-connection client sends (`options`,
    /// `extra_float_digits`) instead of refusing the connection, so a test can show what
    /// goes wrong after the start-up.
    pub ignore_startup_parameters: bool,
}

impl PgBouncer {
    /// Starts PgBouncer on a free loopback port, forwarding to the test database's server.
    /// Panics with the reason if `pgbouncer` is not installed (the prepare script installs
    /// Debian's package) or does not come up.
    pub fn start(options: PgBouncerOptions) -> Self {
        Self::start_in_front_of(&services::database_url(), options)
            .unwrap_or_else(|error| panic!("{error:#}"))
    }

    /// Starts PgBouncer on a free loopback port, forwarding to the server of `backend` (a
    /// PostgreSQL URL whose user needs no password, as on the local servers); fails with
    /// the reason if `pgbouncer` is not installed or does not come up within 10 s.
    pub fn start_in_front_of(backend: &str, options: PgBouncerOptions) -> anyhow::Result<Self> {
        let backend = Url::parse(backend).with_context(|| format!("{backend:?} is not a URL"))?;
        let folder = std::env::temp_dir().join(format!("pgbouncer-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&folder)
            .with_context(|| format!("creating {}", folder.display()))?;
        let port = free_port()?;
        let user = backend.username();
        let ignored = if options.ignore_startup_parameters {
            "ignore_startup_parameters = extra_float_digits, options\n"
        } else {
            ""
        };
        std::fs::write(folder.join("users.txt"), format!("\"{user}\" \"\"\n"))
            .context("writing PgBouncer's users.txt")?;
        std::fs::write(
            folder.join("pgbouncer.ini"),
            format!(
                "[databases]\n* = host={host} port={backend_port}\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
                 unix_socket_dir =\nauth_type = trust\nauth_file = {users}\n\
                 pool_mode = transaction\ndefault_pool_size = {servers}\n\
                 max_client_conn = 500\nadmin_users = {user}\n{ignored}",
                host = backend.host_str().unwrap_or("127.0.0.1"),
                backend_port = backend.port().unwrap_or(5432),
                users = folder.join("users.txt").display(),
                servers = options.server_connections,
            ),
        )
        .context("writing pgbouncer.ini")?;
        let log = std::fs::File::create(folder.join("pgbouncer.log"))
            .context("creating pgbouncer.log")?;
        let mut command = Command::new("pgbouncer");
        // PgBouncer refuses to run as root; as root, it is told which user to become.
        if unsafe_getuid() == 0 {
            command.arg("-u").arg("postgres");
        }
        let child = command
            .arg(folder.join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting pgbouncer (bin/prepare installs Debian's package)")?;
        let bouncer = Self {
            child,
            port,
            folder,
            backend,
        };
        bouncer.wait_until_listening()?;
        Ok(bouncer)
    }

    /// The database's URL through this PgBouncer.
    pub fn database_url(&self) -> String {
        let mut url = self.backend.clone();
        url.set_port(Some(self.port))
            .expect("a PostgreSQL URL has a host, so it takes a port");
        url.to_string()
    }

    /// PgBouncer's version line (`PgBouncer 1.18.0`), or why it is unknown.
    pub fn version() -> String {
        match Command::new("pgbouncer").arg("--version").output() {
            Ok(output) => String::from_utf8_lossy(&output.stdout)
                .lines()
                .next()
                .unwrap_or("pgbouncer printed no version")
                .to_owned(),
            Err(error) => format!("pgbouncer --version failed: {error}"),
        }
    }

    /// One figure of `SHOW STATS` for the database (e.g. `total_xact_count`), read through
    /// PgBouncer's admin console with `psql` (the console speaks only the simple protocol).
    /// Panics with the reason if it cannot be read.
    pub fn stat(&self, column: &str) -> i64 {
        self.read_stat(column)
            .unwrap_or_else(|error| panic!("{error:#}"))
    }

    /// [`PgBouncer::stat`], failing instead of panicking.
    pub fn read_stat(&self, column: &str) -> anyhow::Result<i64> {
        let database = self.backend.path().trim_start_matches('/');
        let output = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U"])
            .arg(self.backend.username())
            .args(["-d", "pgbouncer", "-A", "-F", "\t", "-c", "SHOW STATS"])
            .output()
            .context("running psql")?;
        anyhow::ensure!(
            output.status.success(),
            "SHOW STATS failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8(output.stdout).context("SHOW STATS is not UTF-8")?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
        let index = header
            .iter()
            .position(|name| *name == column)
            .with_context(|| format!("SHOW STATS has no column {column}: {header:?}"))?;
        let Some(fields) = lines
            .map(|line| line.split('\t').collect::<Vec<_>>())
            .find(|fields| fields.first() == Some(&database))
        else {
            // No client has used the database yet.
            return Ok(0);
        };
        let field = fields.get(index).copied().unwrap_or_default();
        field
            .parse()
            .with_context(|| format!("SHOW STATS {column} is {field:?}, not a number"))
    }

    /// What PgBouncer logged, for a failing test's message.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.folder.join("pgbouncer.log")).unwrap_or_default()
    }

    fn wait_until_listening(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "pgbouncer did not listen on {} within 10 s: {}",
                self.port,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.folder);
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr().context("finding a free port")?.port())
}

#[allow(unsafe_code)]
fn unsafe_getuid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

//! A PgBouncer of the test's own in transaction mode in front of the test database: the
//! kind of pooler Neon puts behind its `-pooler` endpoint, so a test can run the fleet (or
//! the store) through one. Debian's PgBouncer (1.18) keeps no prepared statements in this
//! mode, the strictest a client can meet.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Url;

use crate::services;

/// A running PgBouncer; stopped when dropped.
pub struct PgBouncer {
    child: Child,
    port: u16,
    folder: PathBuf,
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
        let backend = Url::parse(&services::database_url()).expect("TEST_DATABASE_URL is a URL");
        let folder = std::env::temp_dir().join(format!("pgbouncer-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&folder).unwrap();
        let port = free_port();
        let user = backend.username();
        let ignored = if options.ignore_startup_parameters {
            "ignore_startup_parameters = extra_float_digits, options\n"
        } else {
            ""
        };
        std::fs::write(folder.join("users.txt"), format!("\"{user}\" \"\"\n")).unwrap();
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
        .unwrap();
        let log = std::fs::File::create(folder.join("pgbouncer.log")).unwrap();
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
            .unwrap_or_else(|e| {
                panic!("starting pgbouncer (bin/prepare installs Debian's package): {e}")
            });
        let bouncer = Self {
            child,
            port,
            folder,
        };
        bouncer.wait_until_listening();
        bouncer
    }

    /// The test database's URL through this PgBouncer.
    pub fn database_url(&self) -> String {
        let mut url = Url::parse(&services::database_url()).unwrap();
        url.set_port(Some(self.port)).unwrap();
        url.to_string()
    }

    /// One figure of `SHOW STATS` for the test database (e.g. `total_xact_count`), read
    /// through PgBouncer's admin console with `psql` (the console speaks only the simple
    /// protocol).
    pub fn stat(&self, column: &str) -> i64 {
        let database = Url::parse(&services::database_url())
            .unwrap()
            .path()
            .trim_start_matches('/')
            .to_owned();
        let output = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U"])
            .arg(Url::parse(&services::database_url()).unwrap().username())
            .args(["-d", "pgbouncer", "-A", "-F", "\t", "-c", "SHOW STATS"])
            .output()
            .expect("running psql");
        assert!(
            output.status.success(),
            "SHOW STATS failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8(output.stdout).unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
        let index = header
            .iter()
            .position(|name| *name == column)
            .unwrap_or_else(|| panic!("SHOW STATS has no column {column}: {header:?}"));
        lines
            .map(|line| line.split('\t').collect::<Vec<_>>())
            .find(|fields| fields.first() == Some(&database.as_str()))
            .map_or(0, |fields| fields[index].parse().unwrap())
    }

    /// What PgBouncer logged, for a failing test's message.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.folder.join("pgbouncer.log")).unwrap_or_default()
    }

    fn wait_until_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not listen on {} within 10 s: {}",
                self.port,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.folder);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("finding a free port")
        .port()
}

#[allow(unsafe_code)]
fn unsafe_getuid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

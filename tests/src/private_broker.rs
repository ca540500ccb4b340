//! A RabbitMQ node of the test's own, for settings the shared broker must not have — a
//! consumer timeout of seconds would break every other test's longer jobs. Started from the
//! machine's RabbitMQ installation in a folder of its own on free loopback ports, with one
//! vhost (the test's namespace) and the guest user; stopped when dropped.

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// Where Debian's package keeps the scripts that run a node as the calling user (the
/// `/usr/sbin` wrappers switch to the `rabbitmq` user and its one node).
const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";

/// How long a node may take to boot on a busy 2-core machine.
const BOOT_DEADLINE: Duration = Duration::from_secs(90);

/// A running node; stopped (killed, its folder removed) when dropped.
pub struct PrivateBroker {
    child: Child,
    port: u16,
    vhost: String,
    folder: PathBuf,
}

impl PrivateBroker {
    /// Boots a node whose `consumer_timeout` is `consumer_timeout`, checked every 500 ms
    /// (RabbitMQ checks once a minute by default), serving `vhost`. Panics with the reason
    /// if it does not come up.
    pub fn start(vhost: &str, consumer_timeout: Duration) -> Self {
        Self::try_start(vhost, consumer_timeout).unwrap_or_else(|error| panic!("{error:#}"))
    }

    fn try_start(vhost: &str, consumer_timeout: Duration) -> anyhow::Result<Self> {
        let folder = std::env::temp_dir().join(format!("rabbitmq-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&folder)
            .with_context(|| format!("creating {}", folder.display()))?;
        let [port, dist_port] = free_ports()?;
        std::fs::write(
            folder.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = 127.0.0.1:{port}\nloopback_users = none\n\
                 default_vhost = {vhost}\ndefault_user = guest\ndefault_pass = guest\n"
            ),
        )
        .context("writing rabbitmq.conf")?;
        std::fs::write(
            folder.join("advanced.config"),
            format!(
                "[{{rabbit, [{{consumer_timeout, {}}}, {{channel_tick_interval, 500}}]}}].\n",
                consumer_timeout.as_millis()
            ),
        )
        .context("writing advanced.config")?;
        std::fs::write(folder.join("enabled_plugins"), "[].\n")
            .context("writing enabled_plugins")?;
        let log = std::fs::File::create(folder.join("server.out"))
            .context("creating the node's output file")?;
        let child = Command::new(format!("{RABBITMQ_BIN}/rabbitmq-server"))
            .current_dir(&folder)
            // Its own Erlang cookie and node name: no clash with the machine's node.
            .env("HOME", &folder)
            .env("RABBITMQ_NODENAME", format!("tltest{port}@localhost"))
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", folder.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", folder.join("log"))
            .env("RABBITMQ_CONFIG_FILE", folder.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                folder.join("advanced.config"),
            )
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                folder.join("enabled_plugins"),
            )
            .env("RABBITMQ_PID_FILE", folder.join("pid"))
            // A group of its own, so dropping it also stops the Erlang VM it starts.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("cloning the output file")?)
            .stderr(log)
            .spawn()
            .context("starting rabbitmq-server (Debian's rabbitmq-server package)")?;
        let broker = Self {
            child,
            port,
            vhost: vhost.to_owned(),
            folder,
        };
        broker.wait_until_listening()?;
        Ok(broker)
    }

    /// The AMQP URL of its vhost, as guest.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/{}", self.port, self.vhost)
    }

    /// How many deliveries the node has timed out (closing their channels), from its log.
    pub fn consumer_timeouts(&self) -> usize {
        self.log_text()
            .matches("timed out waiting for delivery acknowledgement")
            .count()
    }

    /// What the node logged, for a failing test's message.
    pub fn log_text(&self) -> String {
        let logs = self.folder.join("log");
        let mut text = String::new();
        for entry in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
            text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
        text
    }

    fn wait_until_listening(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + BOOT_DEADLINE;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the test's RabbitMQ node did not listen on {} within {BOOT_DEADLINE:?}: {}",
                self.port,
                std::fs::read_to_string(self.folder.join("server.out")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let group = i32::try_from(self.child.id()).unwrap_or_default();
        kill_group(group);
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.folder);
    }
}

/// Two distinct free ports (both held until both are known).
fn free_ports() -> anyhow::Result<[u16; 2]> {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port");
    let (first, second) = (bind()?, bind()?);
    let port = |listener: &std::net::TcpListener| {
        listener
            .local_addr()
            .map(|address| address.port())
            .context("finding a free port")
    };
    Ok([port(&first)?, port(&second)?])
}

#[allow(unsafe_code)]
fn kill_group(group: i32) {
    if group > 0 {
        // SAFETY: kill has no memory preconditions; a negative pid names the group.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
    }
}

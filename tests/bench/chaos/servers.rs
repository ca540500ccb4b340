//! Restarts of the machine's shared servers for the chaos run — RabbitMQ, Redis and
//! PostgreSQL, once each — every command bounded by a deadline and followed by a wait until
//! the server answers again. Anything else on the machine using these servers sees the
//! same outage: run these faults only where nothing else depends on them.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::process::Command;

use super::{ports, wait};
use crate::management::Management;

/// The longest one command of a restart may take.
const COMMAND_DEADLINE: Duration = Duration::from_secs(120);

/// The longest a server may take to answer (or to go away) after a command.
const ANSWER_DEADLINE: Duration = Duration::from_secs(120);

/// Redis as this machine runs it (infra/local/prepare.sh, and the CI's own start).
const REDIS_PORT: &str = "6379";
const REDIS_START: [&str; 15] = [
    "--daemonize",
    "yes",
    "--bind",
    "127.0.0.1",
    "-::1",
    "--port",
    REDIS_PORT,
    "--save",
    "",
    "--appendonly",
    "no",
    "--dir",
    "/var/lib/redis",
    "--logfile",
    "/var/log/redis/ci.log",
];

/// What a failed restart says: the server may be down for everyone until started by hand.
const LEFT_STOPPED_RABBITMQ: &str = "RabbitMQ's application may be left stopped: check with `rabbitmqctl status`, start it with `rabbitmqctl start_app`";
const LEFT_STOPPED_REDIS: &str = "Redis may be left stopped: start it with `redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log`";

fn left_stopped_postgres(version: &str) -> String {
    format!(
        "PostgreSQL may be left stopped: check with `pg_lsclusters`, start it with `pg_ctlcluster --skip-systemctl-redirect {version} main start`"
    )
}

/// Where the clusters' configurations are, one folder per PostgreSQL version.
const POSTGRES_CONFIGS: &str = "/etc/postgresql";

/// `rabbitmqctl stop_app`, then `start_app`: the node stays up, the broker application
/// (every connection, channel and queue process) stops and starts again. Returns a line
/// for the timeline once AMQP (`amqp_address`) and the management API answer.
pub async fn restart_rabbitmq(
    management: &Management,
    amqp_address: &str,
) -> anyhow::Result<String> {
    let started = Instant::now();
    run("rabbitmqctl", &["stop_app"]).await?;
    let stopped = started.elapsed();
    run("rabbitmqctl", &["start_app"])
        .await
        .context(LEFT_STOPPED_RABBITMQ)?;
    wait::until(
        &format!("RabbitMQ to accept AMQP on {amqp_address} and its management API to answer"),
        ANSWER_DEADLINE,
        || async { ports::port_open(amqp_address).await && management.answers().await },
    )
    .await
    .context(LEFT_STOPPED_RABBITMQ)?;
    Ok(format!(
        "rabbitmqctl stop_app ({:.1} s), start_app; AMQP and the management API answering {:.1} s after the stop began",
        stopped.as_secs_f64(),
        started.elapsed().as_secs_f64()
    ))
}

/// `redis-cli shutdown nosave`, a wait until it is gone, then `redis-server` started again
/// the way this machine starts it; returns a line for the timeline once it answers PING.
pub async fn restart_redis() -> anyhow::Result<String> {
    let started = Instant::now();
    run("redis-cli", &["-p", REDIS_PORT, "shutdown", "nosave"]).await?;
    wait::until("Redis to stop", ANSWER_DEADLINE, || async {
        !redis_answers().await
    })
    .await?;
    let stopped = started.elapsed();
    // Daemonized: the command returns once the server has forked off.
    let status = Command::new("redis-server")
        .args(REDIS_START)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let status = tokio::time::timeout(COMMAND_DEADLINE, status)
        .await
        .context("redis-server did not return")
        .context(LEFT_STOPPED_REDIS)?
        .context("starting redis-server")
        .context(LEFT_STOPPED_REDIS)?;
    anyhow::ensure!(
        status.success(),
        "redis-server exited with {status}; {LEFT_STOPPED_REDIS}"
    );
    wait::until("Redis to answer PING", ANSWER_DEADLINE, redis_answers)
        .await
        .context(LEFT_STOPPED_REDIS)?;
    Ok(format!(
        "redis-cli shutdown nosave (gone after {:.1} s), redis-server started again; answering PING {:.1} s after the shutdown",
        stopped.as_secs_f64(),
        started.elapsed().as_secs_f64()
    ))
}

/// `pg_ctlcluster <version> main restart -m immediate`: no checkpoint, every backend cut
/// off, crash recovery at start, as after a power loss. Returns a line for the timeline
/// once `pool` (the harness's own) runs `SELECT 1` again.
pub async fn restart_postgres(pool: &sqlx::PgPool) -> anyhow::Result<String> {
    let version = postgres_version()?;
    let started = Instant::now();
    run(
        "pg_ctlcluster",
        &[
            "--skip-systemctl-redirect",
            &version,
            "main",
            "restart",
            "-m",
            "immediate",
        ],
    )
    .await
    .with_context(|| left_stopped_postgres(&version))?;
    let restarted = started.elapsed();
    wait::until("PostgreSQL to answer SELECT 1", ANSWER_DEADLINE, || async {
        sqlx::query("SELECT 1").execute(pool).await.is_ok()
    })
    .await
    .with_context(|| left_stopped_postgres(&version))?;
    Ok(format!(
        "pg_ctlcluster {version} main restart -m immediate ({:.1} s); SELECT 1 answered {:.1} s after it began",
        restarted.as_secs_f64(),
        started.elapsed().as_secs_f64()
    ))
}

/// The one cluster version under /etc/postgresql (what `$(ls /etc/postgresql)` gives).
fn postgres_version() -> anyhow::Result<String> {
    let mut versions: Vec<String> = std::fs::read_dir(POSTGRES_CONFIGS)
        .with_context(|| format!("listing {POSTGRES_CONFIGS}"))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    anyhow::ensure!(
        versions.len() == 1,
        "expected one PostgreSQL version in {POSTGRES_CONFIGS}, found {versions:?}"
    );
    Ok(versions.remove(0))
}

async fn redis_answers() -> bool {
    let ping = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", REDIS_PORT, "ping"])
        .stdin(Stdio::null())
        .output();
    match tokio::time::timeout(Duration::from_secs(3), ping).await {
        Ok(Ok(output)) => String::from_utf8_lossy(&output.stdout).trim() == "PONG",
        _ => false,
    }
}

/// Runs `program args`, failing with its output if it does not succeed in time.
async fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let shown = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(COMMAND_DEADLINE, output)
        .await
        .map_err(|_| anyhow::anyhow!("`{shown}` did not finish within {COMMAND_DEADLINE:?}"))?
        .with_context(|| format!("running `{shown}`"))?;
    anyhow::ensure!(
        output.status.success(),
        "`{shown}` exited with {}: {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// Whether `program` can be run (is on the PATH), for the checks before the run.
pub fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

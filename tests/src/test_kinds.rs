//! Job kinds that exist only in tests (a handler that panics, one that always fails, …),
//! all of them here, and [`register_test_kinds`], which adds them to a registry.

use engine_jobs::{Job, JobContext, JobError, Registry, RegistryError};
use serde::{Deserialize, Serialize};

/// Adds every test kind to `registry`; `test.abort` only when `with_abort` (it ends the
/// process that runs it).
pub fn register_test_kinds(
    registry: &mut Registry,
    with_abort: bool,
) -> Result<&mut Registry, RegistryError> {
    registry
        .register(Panics)?
        .register(AlwaysFails)?
        .register(Flaky)?
        .register(FailsFatally)?
        .register(Snoozes)?
        .register(Switch)?
        .register(Tracked)?
        .register(BigResult)?;
    if with_abort {
        registry.register(AbortsProcess)?;
    }
    Ok(registry)
}

/// The args of the test kinds that take none.
#[derive(Debug, Deserialize, Serialize)]
pub struct NoArgs {}

/// Panics on every attempt: the worker must survive and count a failed attempt.
pub struct Panics;

impl Job for Panics {
    const KIND: &'static str = "test.panic";
    type Args = NoArgs;
    type Output = ();

    async fn run(&self, _context: JobContext, _args: NoArgs) -> Result<(), JobError> {
        panic!("deliberate test panic")
    }
}

/// Fails every attempt with a retryable error.
pub struct AlwaysFails;

impl Job for AlwaysFails {
    const KIND: &'static str = "test.fail";
    type Args = NoArgs;
    type Output = ();

    async fn run(&self, context: JobContext, _args: NoArgs) -> Result<(), JobError> {
        Err(JobError::retryable(format_args!(
            "deliberate failure on attempt {}",
            context.attempt
        )))
    }
}

/// Fails its first `fail_times` attempts (retryable), then succeeds.
pub struct Flaky;

#[derive(Debug, Deserialize, Serialize)]
pub struct FlakyArgs {
    pub fail_times: u32,
}

#[derive(Debug, Serialize)]
pub struct FlakyOutput {
    pub succeeded_on_attempt: u32,
}

impl Job for Flaky {
    const KIND: &'static str = "test.flaky";
    type Args = FlakyArgs;
    type Output = FlakyOutput;

    async fn run(&self, context: JobContext, args: FlakyArgs) -> Result<FlakyOutput, JobError> {
        context.log.info(format_args!(
            "flaky handler on attempt {}, failing {} times",
            context.attempt, args.fail_times
        ));
        if context.attempt <= args.fail_times {
            return Err(JobError::retryable(format_args!(
                "flaky failure {} of {}",
                context.attempt, args.fail_times
            )));
        }
        Ok(FlakyOutput {
            succeeded_on_attempt: context.attempt,
        })
    }
}

/// Fails fatally: no further attempt.
pub struct FailsFatally;

impl Job for FailsFatally {
    const KIND: &'static str = "test.fatal";
    type Args = NoArgs;
    type Output = ();

    async fn run(&self, _context: JobContext, _args: NoArgs) -> Result<(), JobError> {
        Err(JobError::fatal("deliberate fatal error"))
    }
}

/// Snoozes `times` times for `ms` milliseconds, then succeeds.
pub struct Snoozes;

#[derive(Debug, Deserialize, Serialize)]
pub struct SnoozesArgs {
    pub times: u32,
    pub ms: u64,
}

#[derive(Debug, Serialize)]
pub struct SnoozesOutput {
    pub attempt: u32,
    pub snoozes: u32,
}

impl Job for Snoozes {
    const KIND: &'static str = "test.snooze";
    type Args = SnoozesArgs;
    type Output = SnoozesOutput;

    async fn run(&self, context: JobContext, args: SnoozesArgs) -> Result<SnoozesOutput, JobError> {
        if context.snoozes < args.times {
            return Err(JobError::Snooze(std::time::Duration::from_millis(args.ms)));
        }
        Ok(SnoozesOutput {
            attempt: context.attempt,
            snoozes: context.snoozes,
        })
    }
}

/// Namespaces whose `test.switch` jobs succeed; every other namespace's fail fatally. A
/// test flips its own namespace on to make dead jobs healthy before redriving them.
static HEALED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Lets `test.switch` jobs of `namespace` succeed from now on (in this process).
pub fn heal(namespace: &engine_shared::Namespace) {
    HEALED.lock().unwrap().push(namespace.to_string());
}

/// Fails fatally until [`heal`] is called for its namespace, then succeeds.
pub struct Switch;

impl Job for Switch {
    const KIND: &'static str = "test.switch";
    type Args = NoArgs;
    type Output = ();

    async fn run(&self, context: JobContext, _args: NoArgs) -> Result<(), JobError> {
        if HEALED
            .lock()
            .unwrap()
            .contains(&context.namespace.to_string())
        {
            Ok(())
        } else {
            Err(JobError::fatal("switch is off"))
        }
    }
}

/// Aborts the whole worker process, like a segfault or an OOM kill would end it. Only
/// ever run by `engine-test-worker` processes, never in the test process itself.
pub struct AbortsProcess;

impl Job for AbortsProcess {
    const KIND: &'static str = "test.abort";
    type Args = NoArgs;
    type Output = ();

    async fn run(&self, _context: JobContext, _args: NoArgs) -> Result<(), JobError> {
        std::process::abort()
    }
}

/// Running `test.track` jobs per namespace, and the most seen at once.
static TRACKED: std::sync::Mutex<Vec<(String, u32, u32)>> = std::sync::Mutex::new(Vec::new());

/// The most `test.track` jobs of `namespace` that ran at once in this process.
pub fn most_tracked_at_once(namespace: &engine_shared::Namespace) -> u32 {
    let name = namespace.to_string();
    TRACKED
        .lock()
        .unwrap()
        .iter()
        .find(|(ns, _, _)| *ns == name)
        .map_or(0, |(_, _, most)| *most)
}

fn track(namespace: &str, delta: i32) {
    let mut tracked = TRACKED.lock().unwrap();
    let index = match tracked.iter().position(|(ns, _, _)| ns == namespace) {
        Some(index) => index,
        None => {
            tracked.push((namespace.to_owned(), 0, 0));
            tracked.len() - 1
        }
    };
    let entry = &mut tracked[index];
    entry.1 = entry.1.saturating_add_signed(delta);
    entry.2 = entry.2.max(entry.1);
}

/// Runs for `ms`, recording how many of its namespace's `test.track` jobs run at once.
pub struct Tracked;

#[derive(Debug, Deserialize, Serialize)]
pub struct TrackedArgs {
    pub ms: u64,
}

impl Job for Tracked {
    const KIND: &'static str = "test.track";
    type Args = TrackedArgs;
    type Output = ();

    async fn run(&self, context: JobContext, args: TrackedArgs) -> Result<(), JobError> {
        let namespace = context.namespace.to_string();
        track(&namespace, 1);
        tokio::time::sleep(std::time::Duration::from_millis(args.ms)).await;
        track(&namespace, -1);
        Ok(())
    }
}

/// Succeeds with a result of `bytes` bytes of JSON text (a string of that many characters
/// less its quotes): a handler whose output is larger than the fleet stores.
pub struct BigResult;

#[derive(Debug, Deserialize, Serialize)]
pub struct BigResultArgs {
    pub bytes: usize,
}

impl Job for BigResult {
    const KIND: &'static str = "test.big_result";
    type Args = BigResultArgs;
    type Output = String;

    async fn run(&self, _context: JobContext, args: BigResultArgs) -> Result<String, JobError> {
        Ok("r".repeat(args.bytes.saturating_sub(2)))
    }
}

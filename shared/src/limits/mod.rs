//! Rate and concurrency limits kept in Redis under each namespace's key prefix.
//!
//! - [`spec`]: what a limit is, and the `[[limits]]` settings.
//! - [`keys`]: the one function that builds every Redis key.
//! - [`scripts`]: the Lua scripts (GCRA rate with reservations; leased concurrency slots).
//! - [`limiter`]: the client that runs them, with its Redis connection and outage policy.

pub mod keys;
pub mod limiter;
pub mod scripts;
pub mod spec;

pub use keys::{KeyClass, redis_key};
pub use limiter::{Limiter, LimiterError, RateOutcome, RedisSettings, redis_calls};
pub use spec::{Limit, LimitRule, Rate, RedisErrorPolicy};

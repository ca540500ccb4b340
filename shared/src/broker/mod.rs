//! RabbitMQ: one vhost per namespace, the topology inside it, and confirmed publishing.

mod connection;
mod publisher;
pub mod topology;

pub use connection::{Broker, vhost_url};
pub use publisher::{Confirm, Publisher};

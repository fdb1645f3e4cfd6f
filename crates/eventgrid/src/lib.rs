//! Event Grid transports for keyvault-invalidator, for applications that run no broker.
//!
//! - [`webhook`]: an HTTP(S) endpoint Event Grid pushes to.
//! - [`pull`]: a receiver of an Event Grid namespace topic's queue-mode subscription.
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod pull;
pub mod webhook;

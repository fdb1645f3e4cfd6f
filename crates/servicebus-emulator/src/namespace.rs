//! The emulated Service Bus namespace: what the management endpoint, the AMQP engine and the
//! [`ServiceBusEmulator`](crate::ServiceBusEmulator) handle all share (the endpoints' addresses,
//! the policy key, the entities, the scripted faults and the request logs), and the
//! authorisation check every endpoint makes against it.
//!
//! Separate from the handle so the endpoints depend on this small piece, not on the
//! test-facing API.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;
use tokio::task::AbortHandle;

use crate::entities::Entities;
use crate::{sas, CbsRequest, ManagementFault, ManagementRequest, POLICY_NAME};

/// One emulator's namespace, behind an `Arc` in every endpoint task.
pub(crate) struct Namespace {
    pub(crate) management_endpoint: String,
    pub(crate) amqp_port: u16,
    pub(crate) policy_key: Mutex<String>,
    pub(crate) bearer_token: String,
    /// Conditions `detach_links_with_error` sends to every entity link.
    pub(crate) link_faults: broadcast::Sender<String>,
    pub(crate) state: Mutex<NamespaceState>,
}

/// What changes while the emulator runs, behind one lock so each request sees it consistently.
#[derive(Default)]
pub(crate) struct NamespaceState {
    pub(crate) entities: Entities,
    pub(crate) management_requests: Vec<ManagementRequest>,
    pub(crate) management_faults: VecDeque<ManagementFault>,
    pub(crate) cbs_requests: Vec<CbsRequest>,
    pub(crate) reject_next_put_token: bool,
    /// How many of the next `put-token` requests to leave unanswered.
    pub(crate) put_tokens_to_leave_unanswered: usize,
    /// How many were left unanswered so far.
    pub(crate) unanswered_put_tokens: usize,
    /// Each AMQP connection's socket relay and engine task.
    pub(crate) connections: Vec<(AbortHandle, AbortHandle)>,
}

impl NamespaceState {
    /// Whether this `put-token` is one to leave unanswered; counts it if so.
    pub(crate) fn take_put_token_to_leave_unanswered(&mut self) -> bool {
        if self.put_tokens_to_leave_unanswered == 0 {
            return false;
        }
        self.put_tokens_to_leave_unanswered -= 1;
        self.unanswered_put_tokens += 1;
        true
    }
}

impl Namespace {
    pub(crate) fn policy_key(&self) -> String {
        self.policy_key
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, NamespaceState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn authorized(&self, header: Option<&str>, entity: &str) -> bool {
        match header {
            Some(token) if token.starts_with("SharedAccessSignature ") => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                sas::verify(token, entity, now, |name| {
                    (name == POLICY_NAME).then(|| self.policy_key())
                })
                .is_ok()
            }
            Some(header) => header
                .strip_prefix("Bearer ")
                .is_some_and(|token| token == self.bearer_token),
            None => false,
        }
    }
}

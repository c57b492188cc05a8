//! Starts the write tap: `nbdserve` serving `Capture` on TCP or a unix socket, one thread per
//! connection up to `agent.nbd_connections_max`. Stopping it (`nbdserve::Running::stop`) shuts
//! the listener and every open connection down and waits for in-progress writes.

use std::sync::Arc;

use crate::capture::Capture;
use crate::continuous::TapAddr;
use crate::error::AgentError;

pub(crate) fn start_tap(
    addr: &TapAddr,
    capture: Arc<Capture>,
    connections_max: usize,
) -> Result<nbdserve::Running, AgentError> {
    nbdserve::Server::bind(addr, capture, connections_max)
        .map_err(|error| AgentError::Tap(format!("listen on {addr}: {error}")))?
        .spawn()
        .map_err(|error| AgentError::Tap(format!("start accept thread: {error}")))
}

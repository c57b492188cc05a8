//! Who may do what on a connection, from the peer's certificate (design.md §9): an agent
//! only replicates (its disks are bound to it by the relay), a relay only forwards, and
//! operator commands (status, points, failover, …) need the admin credential.

use wire::{FrameType, Role};

use crate::{CertRole, Peer};

/// How a connection was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// The node runs without TLS (`[security] plaintext = true`): nothing is checked.
    Plaintext,
    Tls(Peer),
}

const REGISTER_FIRST: &str = "no client certificate: register this node first \
    (`siterelay register --connect ADDR --passphrase P`) or, for operator commands, use the \
    admin credential (--pki-dir)";

impl Access {
    /// Checks the role a peer claims in its Hello against its certificate.
    pub fn check_hello(&self, role: Role) -> Result<(), String> {
        let Access::Tls(peer) = self else { return Ok(()) };
        let Peer::Node { role: cert_role, .. } = peer else { return Ok(()) };
        let allowed = matches!(
            (cert_role, role),
            (CertRole::Agent, Role::Agent)
                | (CertRole::Relay, Role::Relay)
                | (CertRole::Admin, Role::Control)
        );
        if allowed {
            Ok(())
        } else {
            Err(format!("{peer} may not connect as {}", role_name(role)))
        }
    }

    /// Checks one frame after the Hello.
    pub fn check_frame(&self, frame: FrameType) -> Result<(), String> {
        let Access::Tls(peer) = self else {
            return match frame {
                FrameType::Register => {
                    Err("registration needs TLS; this node runs plaintext".into())
                }
                _ => Ok(()),
            };
        };
        match (peer, frame) {
            (_, FrameType::Hello | FrameType::Heartbeat | FrameType::Error) => Ok(()),
            (Peer::Anonymous, FrameType::Register) => Ok(()),
            (Peer::Anonymous, _) => Err(REGISTER_FIRST.into()),
            (Peer::Node { .. }, FrameType::Register) => {
                Err(format!("{peer} is already registered"))
            }
            (Peer::Node { role: CertRole::Admin, .. }, _) => Ok(()),
            (_, FrameType::Control | FrameType::StatusRequest) => Err(format!(
                "{peer} may not run management commands: they need the admin credential"
            )),
            (Peer::Node { .. }, _) => Ok(()),
        }
    }

    /// The node name from the certificate, if any.
    pub fn node_name(&self) -> Option<&str> {
        match self {
            Access::Tls(Peer::Node { name, .. }) => Some(name),
            _ => None,
        }
    }
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Access::Plaintext => write!(f, "plaintext"),
            Access::Tls(peer) => write!(f, "{peer}"),
        }
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Agent => "an agent",
        Role::Relay => "a relay",
        Role::Target => "a target",
        Role::Control => "an operator tool (that needs the admin credential)",
    }
}

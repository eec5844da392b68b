//! Why a session could not start, as the client is told (`Error{kind, message}`).
//!
//! Owns the mapping from a refusal to its protocol kind and frame. Must never log or write to
//! the connection itself: the session decides when a refusal is sent.

use husk_protocols::console::{error_frame, ErrorKind, ServerFrame};

/// A session refused before its process ran; the message is for a human at the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The open frame is malformed or asks for something unsupported.
    #[error("{0}")]
    BadRequest(String),
    /// The client speaks another protocol major.
    #[error("{0}")]
    Protocol(String),
    /// The container does not run (or the id is not a container id).
    #[error("{0}")]
    NoContainer(String),
    /// The program or the default shell does not exist where the session runs.
    #[error("{0}")]
    NotFound(String),
    /// Too many sessions are open.
    #[error("{0}")]
    Busy(String),
    /// Anything else (a system call failed).
    #[error("{0}")]
    Other(String),
}

impl SessionError {
    /// The protocol's kind for this refusal.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SessionError::BadRequest(_) => ErrorKind::BAD_REQUEST,
            SessionError::Protocol(_) => ErrorKind::PROTOCOL,
            SessionError::NoContainer(_) => ErrorKind::NO_CONTAINER,
            SessionError::NotFound(_) => ErrorKind::NOT_FOUND,
            SessionError::Busy(_) => ErrorKind::BUSY,
            SessionError::Other(_) => ErrorKind::OTHER,
        }
    }

    /// The `error` frame that tells the client.
    pub fn frame(&self) -> ServerFrame {
        error_frame(self.kind(), self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_protocols::console::server_frame::Frame;

    #[test]
    fn frames_carry_kind_and_message() {
        let f = SessionError::NotFound("no such program".into()).frame();
        let Some(Frame::Error(e)) = f.frame else {
            panic!("not an error frame: {f:?}");
        };
        assert_eq!(e.kind.enum_value(), Ok(ErrorKind::NOT_FOUND));
        assert_eq!(e.message, "no such program");
    }
}

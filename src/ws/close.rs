//! The close codes this server sends (SPEC §3), each with its reason text.
//!
//! Every close a session sends or branches on is a [`Close`], never a bare
//! number; the hub's [`CloseReason`] maps onto one here, so the fan-out core
//! needs no WebSocket close codes.

use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::hub::CloseReason;

/// A WebSocket close code (RFC 6455 §7.4) with the reason text sent with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Close {
    /// 1001: the server is shutting down.
    GoingAway = 1001,
    /// 1002: the peer broke the WebSocket protocol.
    ProtocolError = 1002,
    /// 1003: a binary frame (only text frames are spoken).
    Unsupported = 1003,
    /// 1007: a text frame that is not UTF-8.
    InvalidPayload = 1007,
    /// 1008: the session's token was revoked.
    PolicyViolation = 1008,
    /// 1009: a frame over [`super::MAX_FRAME_BYTES`].
    TooBig = 1009,
    /// 1011: an internal error (the cause is logged, not sent).
    Internal = 1011,
    /// 1013: a slow consumer (its queue overflowed, or a write stayed blocked).
    TryAgainLater = 1013,
}

impl Close {
    /// The numeric code.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The reason text sent with the code.
    pub fn reason(self) -> &'static str {
        match self {
            Close::GoingAway => "server shutting down",
            Close::ProtocolError => "protocol error",
            Close::Unsupported => "binary frames are not supported",
            Close::InvalidPayload => "invalid UTF-8",
            Close::PolicyViolation => "token revoked",
            Close::TooBig => "frame larger than 64 KiB",
            Close::Internal => "internal error",
            Close::TryAgainLater => "slow consumer",
        }
    }

    /// The close frame to send.
    pub fn frame(self) -> CloseFrame {
        CloseFrame {
            code: CloseCode::from(self.code()),
            reason: Utf8Bytes::from_static(self.reason()),
        }
    }
}

impl From<CloseReason> for Close {
    fn from(reason: CloseReason) -> Self {
        match reason {
            CloseReason::Revoked => Close::PolicyViolation,
            CloseReason::SlowConsumer => Close::TryAgainLater,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_reasons_are_the_specs() {
        let frame = Close::TooBig.frame();
        assert_eq!(u16::from(frame.code), 1009);
        assert_eq!(frame.reason.as_str(), "frame larger than 64 KiB");
        assert_eq!(Close::GoingAway.code(), 1001);
        assert_eq!(Close::Internal.code(), 1011);
        assert_eq!(Close::from(CloseReason::Revoked).code(), 1008);
        let slow = Close::from(CloseReason::SlowConsumer);
        assert_eq!((slow.code(), slow.reason()), (1013, "slow consumer"));
    }
}

//! The `husk.stdio.v1` listener: accepts a stream per standard stream of a process on vsock
//! port [`STDIO_PORT`], reads its opening frame and hands it to the container.
//!
//! Owns the opening handshake. Must never trust it: the frame is bounded, must arrive within
//! [`OPEN_TIMEOUT`], and names a container that must exist; otherwise the stream is refused.

use std::sync::Arc;
use std::time::Duration;

use husk_protocols::frame::MAX_FRAME;
use husk_protocols::stdio::{StreamOpen, StreamReply, PROTOCOL, STDIO_PORT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_vsock::{VsockAddr, VsockListener, VsockStream, VMADDR_CID_ANY};

use super::Containers;

/// How long a new stream may take to say what it is.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

async fn read_open(s: &mut VsockStream) -> Result<StreamOpen, String> {
    let len = s
        .read_u32()
        .await
        .map_err(|e| format!("reading the opening frame: {e}"))? as usize;
    if len > MAX_FRAME {
        return Err(format!("opening frame of {len} bytes is over {MAX_FRAME}"));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)
        .await
        .map_err(|e| format!("reading the opening frame: {e}"))?;
    serde_json::from_slice(&body).map_err(|e| format!("malformed opening frame: {e}"))
}

async fn reply(s: &mut VsockStream, error: Option<String>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    husk_protocols::frame::write_frame(&mut buf, &StreamReply { error })
        .map_err(std::io::Error::other)?;
    s.write_all(&buf).await
}

async fn handle(containers: Arc<Containers>, mut s: VsockStream) {
    let open = match tokio::time::timeout(OPEN_TIMEOUT, read_open(&mut s)).await {
        Ok(Ok(o)) if o.protocol == PROTOCOL => o,
        Ok(Ok(o)) => {
            let _ = reply(
                &mut s,
                Some(format!(
                    "unknown stdio protocol {:?}; this agent speaks {PROTOCOL}",
                    o.protocol
                )),
            )
            .await;
            return;
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "refused a stdio stream");
            let _ = reply(&mut s, Some(e)).await;
            return;
        }
        Err(_) => {
            tracing::warn!("a stdio stream did not open within {OPEN_TIMEOUT:?}");
            return;
        }
    };
    // Answer before handing the stream over: after the reply the bytes are the process's.
    let (id, exec, kind) = (open.container_id, open.exec_id, open.stream);
    // From the opening to the stream's close, in the host's trace when it sent one.
    let span = match open.traceparent.as_deref() {
        Some(tp) => {
            let span = tracing::info_span!(
                "stdio",
                otel.name = format!("stdio {kind:?}"),
                container.id = %id,
                exec.id = %exec,
            );
            if husk_telemetry::propagation::set_parent(&span, tp) {
                span
            } else {
                tracing::Span::none()
            }
        }
        None => tracing::Span::none(),
    };
    if let Err(e) = containers.check_attach(&id, &exec, kind) {
        let _ = reply(&mut s, Some(e.to_string())).await;
        return;
    }
    if let Err(e) = reply(&mut s, None).await {
        tracing::warn!(error = %e, "stdio stream closed during its opening");
        return;
    }
    if let Err(e) = containers.attach(&id, &exec, kind, s, span) {
        tracing::warn!(container = %id, error = %e, "stdio stream refused");
    }
}

/// Serves stdio streams until the listener fails.
pub async fn serve(containers: Arc<Containers>) -> std::io::Result<()> {
    let listener = VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, STDIO_PORT))?;
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                tokio::spawn(handle(containers.clone(), s));
            }
            Err(e) => tracing::warn!(error = %e, "accepting a stdio stream"),
        }
    }
}

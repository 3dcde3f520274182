//! A minimal HTTP server (optionally TLS) for the webhook and the
//! metrics/health endpoints, speaking HTTP/1.1 and HTTP/2 (chosen by ALPN
//! under TLS, see [`ALPN`]). Handlers are synchronous: each answers from
//! memory without waiting on anything.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

/// An answer: status, content type and body.
pub type Reply = (StatusCode, &'static str, Vec<u8>);
pub type Handler = Arc<dyn Fn(&Method, &str, &[u8]) -> Reply + Send + Sync>;

/// The protocols a TLS listener offers, HTTP/2 first: the API server then
/// sends every webhook call over one connection instead of opening (and
/// TLS-handshaking) another whenever calls overlap.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Larger bodies are refused; an AdmissionReview of a pod is a few KiB.
const MAX_BODY: usize = 4 << 20;

/// Serves connections from `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, handler: Handler) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                debug!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        // An HTTP/2 answer is several writes (headers, data): without this,
        // Nagle holds the later ones until the client acknowledges the first.
        let _ = stream.set_nodelay(true);
        let (handler, tls) = (handler.clone(), tls.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| answer(request, handler.clone()));
            let server = auto::Builder::new(TokioExecutor::new());
            let result = match tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(stream) => server.serve_connection(TokioIo::new(stream), service).await,
                    Err(e) => return debug!(error = %e, "TLS handshake failed"),
                },
                None => server.serve_connection(TokioIo::new(stream), service).await,
            };
            if let Err(e) = result {
                debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

async fn answer(request: Request<Incoming>, handler: Handler) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let (status, content_type, body) = match Limited::new(body, MAX_BODY).collect().await {
        Ok(body) => handler(&parts.method, parts.uri.path(), &body.to_bytes()),
        Err(e) => (StatusCode::PAYLOAD_TOO_LARGE, "text/plain", e.to_string().into_bytes()),
    };
    let response = Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a response from valid parts");
    Ok(response)
}

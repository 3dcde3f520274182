//! The operator's API client: kube's default stack plus a count of every
//! request it sends, by verb and resource, with the bytes of its body. The
//! scale benchmark reads these to say where the operator's work goes.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use http::{Method, Request};
use kube::Client;
use kube::client::{Body, ClientBuilder};

use crate::metrics::Metrics;

/// Connects with the in-cluster service account, or `$KUBECONFIG`.
pub async fn connect(metrics: Arc<Metrics>) -> Result<Client> {
    let config = kube::Config::infer().await.context("no Kubernetes configuration found")?;
    let count = tower::util::MapRequestLayer::new(move |request: Request<Body>| {
        let (verb, resource) = describe(&request);
        let bytes = http_body::Body::size_hint(request.body()).exact().unwrap_or(0);
        metrics.api_request(verb, resource, bytes);
        request
    });
    Ok(ClientBuilder::try_from(config)?.with_layer(&count).build())
}

/// The Kubernetes verb and the resource (with its subresource) of a request:
/// `GET /apis/pytier.dev/v1alpha1/tieringnodes?watch=true` is a `watch` of
/// `tieringnodes`, `PATCH .../namespaces/a/tieringpolicies/p/status` a
/// `patch` of `tieringpolicies/status`.
fn describe<B>(request: &Request<B>) -> (&'static str, String) {
    let mut segments = request.uri().path().trim_matches('/').split('/').peekable();
    let prefix = match segments.next() {
        Some("api") => 1,  // api/v1
        Some("apis") => 2, // apis/GROUP/VERSION
        _ => return ("other", String::new()),
    };
    let mut rest: Vec<&str> = segments.skip(prefix).collect();
    if rest.first() == Some(&"namespaces") && rest.len() > 2 {
        rest.drain(..2);
    }
    let (resource, name, sub) = (rest.first().copied(), rest.get(1), rest.get(2));
    let resource = match (resource, sub) {
        (Some(r), Some(s)) => format!("{r}/{s}"),
        (Some(r), None) => r.to_string(),
        (None, _) => String::new(),
    };
    let query = request.uri().query().unwrap_or("");
    let content_type = request.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let verb = match *request.method() {
        Method::GET if name.is_some() => "get",
        Method::GET if query.split('&').any(|q| q == "watch=true" || q == "watch=1") => "watch",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH if content_type == Some("application/apply-patch+yaml") => "apply",
        Method::PATCH => "patch",
        Method::DELETE if name.is_some() => "delete",
        Method::DELETE => "deletecollection",
        _ => "other",
    };
    (verb, resource)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn described(method: Method, uri: &str, content_type: Option<&str>) -> (&'static str, String) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(t) = content_type {
            request = request.header(http::header::CONTENT_TYPE, t);
        }
        describe(&request.body(()).unwrap())
    }

    #[test]
    fn requests_are_named_by_verb_and_resource() {
        let cases = [
            (Method::GET, "/api/v1/pods?watch=true&resourceVersion=1", None, ("watch", "pods")),
            (Method::GET, "/api/v1/pods?limit=500", None, ("list", "pods")),
            (Method::GET, "/api/v1/namespaces", None, ("list", "namespaces")),
            (Method::GET, "/api/v1/namespaces/a", None, ("get", "namespaces")),
            (Method::POST, "/apis/events.k8s.io/v1/namespaces/a/events", None, ("create", "events")),
            (
                Method::PATCH,
                "/apis/pytier.dev/v1alpha1/tieringnodes/n1?fieldManager=x&force=true",
                Some("application/apply-patch+yaml"),
                ("apply", "tieringnodes"),
            ),
            (
                Method::PATCH,
                "/apis/pytier.dev/v1alpha1/namespaces/a/tieringpolicies/p/status",
                Some("application/merge-patch+json"),
                ("patch", "tieringpolicies/status"),
            ),
            (Method::PUT, "/apis/coordination.k8s.io/v1/namespaces/s/leases/op", None, ("update", "leases")),
            (Method::GET, "/version", None, ("other", "")),
        ];
        for (method, uri, content_type, (verb, resource)) in cases {
            assert_eq!(described(method, uri, content_type), (verb, resource.to_string()), "{uri}");
        }
    }
}

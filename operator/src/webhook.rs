//! The pod injection webhook (mutating admission, `failurePolicy: Ignore`).
//!
//! A pod opts in with the annotation `pytier.dev/inject: "true"` or
//! `pytier.dev/policy: <name>`, by living in a namespace labelled
//! `pytier.dev/inject=true`, or by matching a TieringPolicy's podSelector;
//! `pytier.dev/inject: "false"` opts it out of all of these. For each chosen
//! container (all, or those named in `pytier.dev/containers: "a,b"`):
//!
//! - volume `pytier-shim` (hostPath `--shim-host-path`, which the node agent
//!   fills with versions of the interposer shim and a `current` link to the
//!   one to load) mounted read-only at `/opt/pytier/shim`;
//! - volume `pytier-run`, an `emptyDir` of the pod's own, mounted at
//!   `/run/pytier`: the interposers create their control sockets there. The
//!   agent reaches it on the host under the kubelet's pod directory
//!   (`pods/<uid>/volumes/kubernetes.io~empty-dir/pytier-run`), so it knows
//!   the pod of every socket by its path, and no pod can see another's;
//!   an emptyDir is world-writable, so non-root containers can create theirs;
//! - `PYTHONPATH`: `/opt/pytier/shim/current` appended to the user's value,
//!   or set to it; a container whose `PYTHONPATH` comes from `valueFrom` is
//!   left alone (the webhook cannot see the value, and overriding it would
//!   lose it), and an Event on the pod says so;
//! - `PYTIER_SOCKET_DIR=/run/pytier` and `PYTIER_CONTAINER=<container name>`
//!   (sockets are named `<container>.<pid>.sock`), unless the container sets
//!   them.
//!
//! The pod gets the annotation `pytier.dev/injected` with a JSON summary of
//! what was done. A pod that already has it is not touched again, so the
//! webhook is idempotent.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::{
    Container, EnvVar, HostPathVolumeSource, Namespace, ObjectReference, Pod, Volume, VolumeMount,
};
use kube::api::PartialObjectMeta;
use kube::core::ResourceExt;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use pytier_crds::{INJECT_ANNOTATION, POLICY_ANNOTATION, TieringPolicy};
use serde_json::json;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::selection;

pub const INJECTED_ANNOTATION: &str = "pytier.dev/injected";
pub const CONTAINERS_ANNOTATION: &str = "pytier.dev/containers";
/// Namespace label that opts every pod of the namespace in.
pub const NAMESPACE_LABEL: &str = "pytier.dev/inject";

pub use pytier_crds::injection::{
    ENV_CONTAINER, ENV_SOCKET_DIR, RUN_MOUNT, RUN_VOLUME, SHIM_MOUNT, SHIM_PYTHONPATH, SHIM_VOLUME,
};

/// Where the node puts the shim.
#[derive(Clone, Debug)]
pub struct HostPaths {
    pub shim: String,
}

/// What the webhook decided for one pod.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// The pod did not opt in, or was injected before.
    Untouched,
    /// These containers were injected; those in `skipped` were not, and why.
    Injected { pod: Box<Pod>, skipped: Vec<(String, String)> },
    /// The pod opted in, but no container could be injected.
    Refused { skipped: Vec<(String, String)> },
}

/// Injects the interposer into `pod` if it opted in (`opted_in` covers the
/// namespace label and policy selectors, which need the cluster's state).
pub fn mutate(pod: &Pod, opted_in: bool, paths: &HostPaths) -> Outcome {
    let annotations = pod.annotations();
    if annotations.contains_key(INJECTED_ANNOTATION) || !opted_in {
        return Outcome::Untouched;
    }
    let wanted: Option<Vec<&str>> =
        annotations.get(CONTAINERS_ANNOTATION).map(|list| list.split(',').map(str::trim).collect());
    let mut out = pod.clone();
    let Some(spec) = out.spec.as_mut() else { return Outcome::Untouched };
    let (mut injected, mut skipped) = (Vec::new(), Vec::new());
    for c in &mut spec.containers {
        if wanted.as_ref().is_some_and(|w| !w.contains(&c.name.as_str())) {
            continue;
        }
        match inject_container(c) {
            Ok(()) => injected.push(c.name.clone()),
            Err(why) => skipped.push((c.name.clone(), why)),
        }
    }
    if injected.is_empty() {
        return if skipped.is_empty() { Outcome::Untouched } else { Outcome::Refused { skipped } };
    }
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    if !volumes.iter().any(|v| v.name == SHIM_VOLUME) {
        volumes.push(Volume {
            name: SHIM_VOLUME.into(),
            // DirectoryOrCreate: a pod scheduled before the agent installed
            // the shim starts (untiered) instead of failing to start.
            host_path: Some(HostPathVolumeSource { path: paths.shim.clone(), type_: Some("DirectoryOrCreate".into()) }),
            ..Default::default()
        });
    }
    if !volumes.iter().any(|v| v.name == RUN_VOLUME) {
        volumes.push(Volume { name: RUN_VOLUME.into(), empty_dir: Some(Default::default()), ..Default::default() });
    }
    let summary = json!({
        "containers": injected,
        "skipped": skipped.iter().map(|(c, why)| json!({"container": c, "reason": why})).collect::<Vec<_>>(),
        "pythonpath": SHIM_PYTHONPATH,
        "socketDir": RUN_MOUNT,
    });
    out.annotations_mut().insert(INJECTED_ANNOTATION.into(), summary.to_string());
    Outcome::Injected { pod: Box::new(out), skipped }
}

fn inject_container(c: &mut Container) -> Result<(), String> {
    let env = c.env.get_or_insert_with(Vec::new);
    match env.iter_mut().find(|e| e.name == "PYTHONPATH") {
        Some(e) if e.value_from.is_some() => {
            return Err("PYTHONPATH comes from valueFrom; pytier cannot append to it".into());
        }
        Some(e) => match e.value.as_deref() {
            Some(v) if v.split(':').any(|p| p == SHIM_PYTHONPATH) => {}
            Some(v) if !v.is_empty() => e.value = Some(format!("{v}:{SHIM_PYTHONPATH}")),
            _ => e.value = Some(SHIM_PYTHONPATH.into()),
        },
        None => env.push(EnvVar { name: "PYTHONPATH".into(), value: Some(SHIM_PYTHONPATH.into()), value_from: None }),
    }
    for (name, value) in [(ENV_SOCKET_DIR, RUN_MOUNT), (ENV_CONTAINER, c.name.as_str())] {
        if !env.iter().any(|e| e.name == name) {
            env.push(EnvVar { name: name.into(), value: Some(value.into()), value_from: None });
        }
    }
    let mounts = c.volume_mounts.get_or_insert_with(Vec::new);
    for (name, path, read_only) in [(SHIM_VOLUME, SHIM_MOUNT, true), (RUN_VOLUME, RUN_MOUNT, false)] {
        if !mounts.iter().any(|m| m.mount_path == path) {
            mounts.push(VolumeMount {
                name: name.into(),
                mount_path: path.into(),
                read_only: Some(read_only),
                ..Default::default()
            });
        }
    }
    Ok(())
}

/// What the webhook needs from the cluster: namespace labels and policies.
#[derive(Clone)]
pub struct Webhook {
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    pub policies: Store<TieringPolicy>,
    pub paths: HostPaths,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
}

impl Webhook {
    /// Whether the pod asked for the interposer, one way or another.
    fn opted_in(&self, pod: &Pod, namespace: &str) -> bool {
        match pod.annotations().get(INJECT_ANNOTATION).map(String::as_str) {
            Some("false") => return false,
            Some("true") => return true,
            _ => {}
        }
        if pod.annotations().contains_key(POLICY_ANNOTATION) {
            return true;
        }
        let ns = self.namespaces.get(&ObjectRef::new(namespace));
        if ns.is_some_and(|ns| ns.labels().get(NAMESPACE_LABEL).is_some_and(|v| v == "true")) {
            return true;
        }
        let mut pod = pod.clone();
        pod.metadata.namespace = Some(namespace.into()); // not set on pods being created
        self.policies.state().iter().any(|p| selection::selects(p, &pod))
    }

    /// Answers one AdmissionReview (the request body); never denies a pod.
    pub fn review(&self, body: &[u8]) -> Result<serde_json::Value, String> {
        let start = Instant::now();
        let review: AdmissionReview<Pod> =
            serde_json::from_slice(body).map_err(|e| format!("not an AdmissionReview: {e}"))?;
        let request: AdmissionRequest<Pod> = review.try_into().map_err(|e| format!("no request in review: {e}"))?;
        let response = AdmissionResponse::from(&request);
        let (response, outcome) = match &request.object {
            Some(pod) => self.respond(&request, pod, response),
            None => (response, "untouched"),
        };
        self.metrics.webhook_request(outcome, start);
        serde_json::to_value(response.into_review()).map_err(|e| e.to_string())
    }

    fn respond(
        &self,
        request: &AdmissionRequest<Pod>,
        pod: &Pod,
        response: AdmissionResponse,
    ) -> (AdmissionResponse, &'static str) {
        let namespace = request.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().or(pod.metadata.generate_name.clone()).unwrap_or_default();
        match mutate(pod, self.opted_in(pod, &namespace), &self.paths) {
            Outcome::Untouched => (response, "untouched"),
            Outcome::Refused { skipped } => {
                self.warn_skipped(&namespace, &name, &skipped);
                (response, "refused")
            }
            Outcome::Injected { pod: mutated, skipped } => {
                self.warn_skipped(&namespace, &name, &skipped);
                let patch = json_patch::diff(
                    &serde_json::to_value(pod).unwrap_or_default(),
                    &serde_json::to_value(&*mutated).unwrap_or_default(),
                );
                info!(namespace, pod = name, "injected the interposer");
                match response.clone().with_patch(patch) {
                    Ok(r) => (r, "injected"),
                    Err(e) => {
                        warn!(namespace, pod = name, error = %e, "cannot encode the patch; pod admitted unchanged");
                        (response, "error")
                    }
                }
            }
        }
    }

    /// An Event on the pod for each container left alone. Published in the
    /// background: admission must not wait on it.
    fn warn_skipped(&self, namespace: &str, pod: &str, skipped: &[(String, String)]) {
        if skipped.is_empty() {
            return;
        }
        let note = skipped.iter().map(|(c, why)| format!("container {c}: {why}")).collect::<Vec<_>>().join("; ");
        warn!(namespace, pod, note, "containers left without the interposer");
        let event = Event {
            type_: EventType::Warning,
            reason: "InjectionSkipped".into(),
            note: Some(format!("pytier did not inject the interposer: {note}")),
            action: "Inject".into(),
            secondary: None,
        };
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(namespace.into()),
            name: Some(pod.into()),
            ..Default::default()
        };
        let recorder = self.recorder.clone();
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                warn!(error = %e, "cannot publish event");
            }
        });
    }
}

/// The response the webhook gives when it cannot read the request at all; the
/// API server then admits the pod unchanged (`failurePolicy: Ignore`).
pub fn unreadable(error: &str) -> serde_json::Value {
    let mut response = AdmissionResponse::invalid(error);
    response.allowed = true;
    serde_json::to_value(response.into_review()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EnvVarSource, ObjectFieldSelector, PodSpec};

    fn paths() -> HostPaths {
        HostPaths { shim: "/var/lib/pytier/shim".into() }
    }

    fn pod_with(containers: Vec<Container>, annotations: &[(&str, &str)]) -> Pod {
        let mut pod = Pod { spec: Some(PodSpec { containers, ..Default::default() }), ..Default::default() };
        pod.metadata.annotations = Some(annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        pod
    }

    fn container(name: &str, env: &[(&str, &str)]) -> Container {
        Container {
            name: name.into(),
            env: Some(
                env.iter()
                    .map(|(k, v)| EnvVar { name: k.to_string(), value: Some(v.to_string()), value_from: None })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn env<'a>(pod: &'a Pod, container: usize, name: &str) -> Option<&'a str> {
        let c = &pod.spec.as_ref().unwrap().containers[container];
        c.env.as_ref()?.iter().find(|e| e.name == name)?.value.as_deref()
    }

    #[test]
    fn appends_to_the_users_pythonpath_and_mounts_the_shim() {
        let pod = pod_with(vec![container("app", &[("PYTHONPATH", "/app/lib")]), container("bare", &[])], &[]);
        let Outcome::Injected { pod: out, skipped } = mutate(&pod, true, &paths()) else { panic!() };
        assert!(skipped.is_empty());
        assert_eq!(env(&out, 0, "PYTHONPATH"), Some("/app/lib:/opt/pytier/shim/current"));
        assert_eq!(env(&out, 1, "PYTHONPATH"), Some("/opt/pytier/shim/current"));
        assert_eq!(env(&out, 0, "PYTIER_SOCKET_DIR"), Some("/run/pytier"));
        assert_eq!((env(&out, 0, "PYTIER_CONTAINER"), env(&out, 1, "PYTIER_CONTAINER")), (Some("app"), Some("bare")));
        let spec = out.spec.as_ref().unwrap();
        let shim = spec.volumes.as_ref().unwrap().iter().find(|v| v.name == SHIM_VOLUME).unwrap();
        assert_eq!(shim.host_path.as_ref().unwrap().path, "/var/lib/pytier/shim");
        let run = spec.volumes.as_ref().unwrap().iter().find(|v| v.name == RUN_VOLUME).unwrap();
        assert!(run.empty_dir.is_some() && run.host_path.is_none(), "each pod's sockets in a directory of its own");
        let mount = spec.containers[1].volume_mounts.as_ref().unwrap().iter().find(|m| m.name == SHIM_VOLUME).unwrap();
        assert_eq!((mount.mount_path.as_str(), mount.read_only), (SHIM_MOUNT, Some(true)));
        let summary: serde_json::Value = serde_json::from_str(&out.annotations()[INJECTED_ANNOTATION]).unwrap();
        assert_eq!(summary["containers"], json!(["app", "bare"]));
    }

    #[test]
    fn injecting_twice_changes_nothing() {
        let pod = pod_with(vec![container("app", &[])], &[]);
        let Outcome::Injected { pod: once, .. } = mutate(&pod, true, &paths()) else { panic!() };
        assert_eq!(mutate(&once, true, &paths()), Outcome::Untouched);
    }

    #[test]
    fn value_from_pythonpath_is_left_alone() {
        let mut c = container("app", &[]);
        c.env = Some(vec![EnvVar {
            name: "PYTHONPATH".into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector { field_path: "metadata.name".into(), api_version: None }),
                ..Default::default()
            }),
        }]);
        let Outcome::Refused { skipped } = mutate(&pod_with(vec![c.clone()], &[]), true, &paths()) else { panic!() };
        assert_eq!(skipped[0].0, "app");
        assert!(skipped[0].1.contains("valueFrom"));

        // With a second container that can be injected, only that one is.
        let pod = pod_with(vec![c, container("worker", &[])], &[]);
        let Outcome::Injected { pod: out, skipped } = mutate(&pod, true, &paths()) else { panic!() };
        assert_eq!(skipped.len(), 1);
        assert!(out.spec.as_ref().unwrap().containers[0].volume_mounts.is_none(), "app untouched");
        assert_eq!(env(&out, 1, "PYTHONPATH"), Some(SHIM_PYTHONPATH));
    }

    #[test]
    fn the_containers_annotation_chooses_containers() {
        let pod = pod_with(vec![container("app", &[]), container("proxy", &[])], &[(CONTAINERS_ANNOTATION, "app")]);
        let Outcome::Injected { pod: out, .. } = mutate(&pod, true, &paths()) else { panic!() };
        assert_eq!(env(&out, 0, "PYTHONPATH"), Some(SHIM_PYTHONPATH));
        assert_eq!(env(&out, 1, "PYTHONPATH"), None);
    }

    #[test]
    fn pods_that_did_not_opt_in_are_untouched() {
        assert_eq!(mutate(&pod_with(vec![container("app", &[])], &[]), false, &paths()), Outcome::Untouched);
    }
}

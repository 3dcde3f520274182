//! The pytier CRDs against a real kube-apiserver + etcd: accepted as structural
//! schemas, valid objects round-trip with defaults filled in by the server,
//! invalid policies are refused with messages a person understands.

use kube::ResourceExt;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::ApiResource;
use pytier_crds::node::{NumaNode, PodTiering, Tier, TierSource};
use pytier_crds::{TieringNode, TieringNodeSpec, TieringNodeStatus, TieringPolicy};
use pytier_tests::ControlPlane;
use serde_json::json;

#[tokio::test]
async fn crds_are_established_as_structural_schemas() {
    let plane = ControlPlane::start().await.unwrap();
    let api: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(plane.client());
    for name in ["tieringpolicies.pytier.dev", "tieringnodes.pytier.dev"] {
        let crd = api.get(name).await.unwrap();
        let conditions = crd.status.unwrap().conditions.unwrap_or_default();
        let status = |t: &str| conditions.iter().find(|c| c.type_ == t).map(|c| c.status.clone());
        assert_eq!(status("Established").as_deref(), Some("True"), "{name}: {conditions:?}");
        assert_eq!(status("NamesAccepted").as_deref(), Some("True"), "{name}: {conditions:?}");
        // The API server sets NonStructuralSchema=True when a schema is not structural.
        assert_ne!(status("NonStructuralSchema").as_deref(), Some("True"), "{name}: {conditions:?}");
    }
}

#[tokio::test]
async fn example_policy_round_trips() {
    let plane = ControlPlane::start().await.unwrap();
    let path = pytier_tests::repo_root().join("deploy/examples/tieringpolicy.yaml");
    let sent: TieringPolicy = serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let api: Api<TieringPolicy> = Api::namespaced(plane.client(), "default");
    api.create(&PostParams::default(), &sent).await.unwrap();
    let got = api.get(&sent.name_any()).await.unwrap();
    assert_eq!(got.spec, sent.spec);
}

#[tokio::test]
async fn server_fills_in_documented_defaults() {
    let plane = ControlPlane::start().await.unwrap();
    let api = policies(&plane);
    let created = api.create(&PostParams::default(), &policy("minimal", json!({}))).await.unwrap();
    let spec: pytier_crds::TieringPolicySpec = serde_json::from_value(created.data["spec"].clone()).unwrap();
    // Defaults as the server applied them equal the types' own defaults.
    assert_eq!(spec.settings, pytier_crds::TieringSettings::default());
    assert_eq!(created.data["spec"]["dramBudget"], json!({"heapFraction": 0.25}));
    assert_eq!(created.data["spec"]["mode"], "enforce");
}

/// Each invalid policy is refused with status 422 and a message naming the
/// field and what is allowed.
#[tokio::test]
async fn invalid_policies_are_rejected_with_clear_messages() {
    let plane = ControlPlane::start().await.unwrap();
    let api = policies(&plane);
    let cases = [
        (
            "negative-budget",
            json!({"dramBudget": {"bytes": -1}}),
            "spec.dramBudget.bytes: Invalid value: -1: spec.dramBudget.bytes in body should be greater than or equal to 4096",
        ),
        (
            "budget-as-text",
            json!({"dramBudget": {"bytes": "1Gi"}}),
            r#"spec.dramBudget.bytes: Invalid value: "string": spec.dramBudget.bytes in body must be of type integer: "string""#,
        ),
        (
            "fraction-above-one",
            json!({"dramBudget": {"heapFraction": 1.5}}),
            "spec.dramBudget.heapFraction: Invalid value: 1.5: spec.dramBudget.heapFraction in body should be less than or equal to 1",
        ),
        (
            "two-budgets",
            json!({"dramBudget": {"bytes": 1073741824, "heapFraction": 0.5}}),
            "set exactly one of dramBudget.bytes or dramBudget.heapFraction",
        ),
        (
            "unknown-mode",
            json!({"mode": "fast"}),
            r#"spec.mode: Unsupported value: "fast": supported values: "enforce", "observe""#,
        ),
        (
            "depth-zero",
            json!({"tracking": {"cascadeDepth": 0}}),
            "spec.tracking.cascadeDepth: Invalid value: 0: spec.tracking.cascadeDepth in body should be greater than or equal to 1",
        ),
        (
            "overlapping-tiers",
            json!({"tiers": {"dramNodes": [0, 1], "cxlNodes": [1]}}),
            "a NUMA node cannot be in both dramNodes and cxlNodes",
        ),
        ("unknown-native", json!({"native": "gpu"}), r#"spec.native: Unsupported value: "gpu""#),
    ];
    for (name, spec, expected) in cases {
        let err = api.create(&PostParams::default(), &policy(name, spec.clone())).await.expect_err(name);
        let kube::Error::Api(status) = err else { panic!("{name}: {err}") };
        let (code, message) = (status.code, status.message);
        println!("rejected {name}: {message}");
        assert_eq!(code, 422, "{name}: {message}");
        assert!(message.contains(expected), "{name}: expected {expected:?} in {message:?}");
    }
    // Nothing invalid was stored.
    assert!(api.list(&Default::default()).await.unwrap().items.is_empty());
}

#[tokio::test]
async fn tiering_node_spec_and_status_round_trip() {
    let plane = ControlPlane::start().await.unwrap();
    let api: Api<TieringNode> = Api::all(plane.client());
    let mut node = TieringNode::new(
        "worker-1",
        TieringNodeSpec {
            pods: vec![PodTiering {
                namespace: "default".into(),
                name: "web-0".into(),
                uid: "7d1c5a1e-0000-4000-8000-000000000001".into(),
                policy: "web".into(),
                settings: Default::default(),
            }],
        },
    );
    let created = api.create(&PostParams::default(), &node).await.unwrap();
    assert_eq!(created.spec, node.spec);

    // The status is a subresource: the agent writes it without touching the spec.
    node.metadata.resource_version = created.resource_version();
    node.status = Some(TieringNodeStatus {
        numa_nodes: vec![NumaNode {
            id: 1,
            tier: Tier::Cxl,
            source: TierSource::MemoryTiering,
            cpus: String::new(),
            capacity_bytes: 1 << 30,
            free_bytes: 1 << 29,
        }],
        cxl_nodes: Some("1".into()),
        ..Default::default()
    });
    let updated = api.replace_status("worker-1", &PostParams::default(), &node).await.unwrap();
    assert_eq!(updated.status, node.status);
    assert_eq!(updated.spec, created.spec);
}

fn policies(plane: &ControlPlane) -> Api<DynamicObject> {
    Api::namespaced_with(plane.client(), "default", &ApiResource::erase::<TieringPolicy>(&()))
}

/// A policy with a raw JSON spec, so specs the Rust types would refuse can be sent.
fn policy(name: &str, spec: serde_json::Value) -> DynamicObject {
    let resource = ApiResource::erase::<TieringPolicy>(&());
    DynamicObject::new(name, &resource).within("default").data(json!({ "spec": spec }))
}

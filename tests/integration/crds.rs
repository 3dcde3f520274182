//! The pytier CRDs against a real kube-apiserver + etcd: accepted as structural
//! schemas, valid objects round-trip with defaults filled in by the server,
//! invalid policies are refused with messages a person understands.

use kube::ResourceExt;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::ApiResource;
use pytier_crds::node::{NumaNode, PodTiering, PolicyGeneration, Tier, TierSource};
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
    assert_eq!(spec.settings, pytier_crds::Settings::default());
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
            "threshold-above-63",
            json!({"tracking": {"hotThreshold": 64}}),
            "spec.tracking.hotThreshold: Invalid value: 64: spec.tracking.hotThreshold in body should be less than or equal to 63",
        ),
        (
            "overlapping-tiers",
            json!({"tiers": {"dramNodes": [0, 1], "cxlNodes": [1]}}),
            "a NUMA node cannot be in both dramNodes and cxlNodes",
        ),
        (
            "node-above-63",
            json!({"tiers": {"cxlNodes": [64]}}),
            "spec.tiers.cxlNodes[0]: Invalid value: 64: spec.tiers.cxlNodes[0] in body should be less than or equal to 63",
        ),
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
        policies: vec![PolicyGeneration { namespace: "default".into(), name: "web".into(), generation: 3 }],
        ..Default::default()
    });
    let updated = api.replace_status("worker-1", &PostParams::default(), &node).await.unwrap();
    assert_eq!(updated.status, node.status);
    assert_eq!(updated.spec, created.spec);
}

/// The contract: for every bounded setting, the API server and the
/// interposer's own validation (`pytier_contract::Settings`) agree at the
/// bound and just past it, and what the server stores is what the interposer
/// reads back (same value, same meaning). The bounds are read from the schema
/// the server serves, so a bound added there is tested here.
#[tokio::test]
async fn every_value_the_api_server_accepts_the_interposer_accepts() {
    let plane = ControlPlane::start().await.unwrap();
    let api = policies(&plane);
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(plane.client());
    let crd = serde_json::to_value(crds.get("tieringpolicies.pytier.dev").await.unwrap()).unwrap();
    let spec_schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let mut bounds = Vec::new();
    collect_bounds(spec_schema, &mut Vec::new(), &mut bounds);
    assert!(bounds.len() >= 10, "too few bounded settings found: {bounds:?}");
    let mut n = 0;
    for (path, integer, minimum, maximum) in bounds {
        let step = |v: f64| if integer { 1.0 } else { (v.abs() * 1e-6).max(1e-9) };
        let mut probes = Vec::new();
        if let Some(min) = minimum {
            probes.push((min, true));
            probes.push((min - step(min), false));
        }
        if let Some(max) = maximum {
            probes.push((max, true));
            probes.push((max + step(max), false));
        }
        for (value, inside) in probes {
            let number = if integer { json!(value as i64) } else { json!(value) };
            let spec = spec_with(&path, number.clone());
            let name = format!("contract-{n}");
            n += 1;
            let created = api.create(&PostParams::default(), &policy(&name, spec.clone())).await;
            let interposer = serde_json::from_value::<pytier_crds::Settings>(spec.clone())
                .map_err(|e| e.to_string())
                .and_then(|s| s.validate().map(|()| s).map_err(|e| e.to_string()));
            match (inside, created, interposer) {
                (true, Ok(stored), Ok(_)) => {
                    // What the server stored, as the agent reads it and the interposer parses it.
                    let policy: TieringPolicy = serde_json::from_value(serde_json::to_value(&stored).unwrap()).unwrap();
                    let line = serde_json::to_string(&policy.spec.settings).unwrap();
                    let parsed = pytier_crds::Settings::from_json(&line).unwrap();
                    assert_eq!(parsed, policy.spec.settings, "{path:?} = {number}");
                    let read =
                        path.iter()
                            .fold(&serde_json::to_value(&parsed).unwrap(), |v, k| {
                                if k == "[]" { &v[0] } else { &v[k.as_str()] }
                            })
                            .clone();
                    assert_eq!(read.as_f64(), number.as_f64(), "{path:?}: stored {number}, interposer sees {read}");
                }
                (false, Err(_), Err(_)) => {}
                (inside, created, interposer) => panic!(
                    "{path:?} = {number} (inside the bounds: {inside}): API server {:?}, interposer {:?}",
                    created.map(|_| "accepts").map_err(|e| e.to_string()),
                    interposer.map(|_| "accepts")
                ),
            }
        }
    }
}

/// (path, is integer, minimum, maximum) of a bounded number in a schema.
type Bound = (Vec<String>, bool, Option<f64>, Option<f64>);

/// Every bounded number in a schema.
fn collect_bounds(schema: &serde_json::Value, path: &mut Vec<String>, out: &mut Vec<Bound>) {
    if let Some(props) = schema["properties"].as_object() {
        for (name, sub) in props {
            path.push(name.clone());
            collect_bounds(sub, path, out);
            path.pop();
        }
    }
    let (min, max) = (schema["minimum"].as_f64(), schema["maximum"].as_f64());
    let numeric = matches!(schema["type"].as_str(), Some("integer" | "number"));
    // Array items (node ids) are bounded too, tested in a list of one.
    if let Some(items) = schema.get("items").filter(|_| schema["type"] == "array") {
        let mut inner = Vec::new();
        collect_bounds(items, &mut Vec::new(), &mut inner);
        for (_, integer, min, max) in inner {
            out.push((path.iter().cloned().chain(["[]".to_string()]).collect(), integer, min, max));
        }
    }
    if numeric && (min.is_some() || max.is_some()) {
        out.push((path.clone(), schema["type"] == "integer", min, max));
    }
}

/// A policy spec with only the setting at `path` given (`[]` = a list of one).
fn spec_with(path: &[String], value: serde_json::Value) -> serde_json::Value {
    let (last, parents) = path.split_last().unwrap();
    let mut leaf = value;
    let mut rest: &[String] = parents;
    if last == "[]" {
        leaf = json!([leaf]);
        let (name, up) = parents.split_last().unwrap();
        rest = up;
        leaf = json!({ name.as_str(): leaf });
    } else {
        leaf = json!({ last.as_str(): leaf });
    }
    for name in rest.iter().rev() {
        leaf = json!({ name.as_str(): leaf });
    }
    leaf
}

fn policies(plane: &ControlPlane) -> Api<DynamicObject> {
    Api::namespaced_with(plane.client(), "default", &ApiResource::erase::<TieringPolicy>(&()))
}

/// A policy with a raw JSON spec, so specs the Rust types would refuse can be sent.
fn policy(name: &str, spec: serde_json::Value) -> DynamicObject {
    let resource = ApiResource::erase::<TieringPolicy>(&());
    DynamicObject::new(name, &resource).within("default").data(json!({ "spec": spec }))
}

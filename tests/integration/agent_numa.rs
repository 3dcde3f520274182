//! In the NUMA VM (`tests/numa-vm/run --tiered --net`): the real node agent,
//! talking over the VM's network to the real API server and operator on the
//! host, configures a pod's real Python service from its policy; the
//! interposer keeps the cold pages on the CPU-less node 1 (where the hot ones
//! end is printed), and the agent's metrics and TieringNode status show the bytes per
//! tier. Boots a VM under TCG: about two minutes.

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use pytier_crds::{TieringNode, TieringPolicy};
use pytier_tests::operator::{Operator, eventually, install_rbac};
use pytier_tests::{ControlPlane, repo_root};
use serde_json::{Value, json};

#[tokio::test]
async fn in_the_numa_vm_the_agent_keeps_a_pods_cold_pages_on_cxl() {
    let plane = ControlPlane::start().await.unwrap();
    let c = plane.client();
    let kubeconfig = install_rbac(&plane).await.unwrap();
    let mut operator = Operator::start_with(&plane, &kubeconfig, "op", &[]).unwrap();
    operator.wait_ready().unwrap();
    plane.apply_manifests(&repo_root().join("deploy/node-agent/rbac.yaml")).await.unwrap();

    let node: Node = serde_json::from_value(json!({"metadata": {"name": "vm"}})).unwrap();
    Api::<Node>::all(c.clone()).create(&PostParams::default(), &node).await.unwrap();
    // TCG runs Python some thirty times slower: a bigger scan budget, a
    // short hysteresis; 2 MiB of DRAM holds the hot set, not the cold table.
    let policy: TieringPolicy = serde_json::from_value(json!({
        "metadata": {"name": "svc", "namespace": "default"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "svc"}},
            "dramBudget": {"bytes": 2097152},
            "tracking": {"hotThreshold": 1.5, "scanIntervalMillis": 200, "maxCpuFraction": 0.5},
            "migration": {"hysteresisSeconds": 1},
        },
    }))
    .unwrap();
    Api::<TieringPolicy>::namespaced(c.clone(), "default").create(&PostParams::default(), &policy).await.unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "svc-0", "namespace": "default", "labels": {"app": "svc"}},
        "spec": {"nodeName": "vm", "containers": [{"name": "app", "image": "python:3.11"}]},
    }))
    .unwrap();
    let uid =
        Api::<Pod>::namespaced(c.clone(), "default").create(&PostParams::default(), &pod).await.unwrap().uid().unwrap();
    eventually("svc-0 in the vm's TieringNode", Duration::from_secs(30), || async {
        let tn = Api::<TieringNode>::all(c.clone()).get("vm").await.map_err(|e| e.to_string())?;
        if tn.spec.pods.iter().any(|p| p.name == "svc-0") { Ok(()) } else { Err(format!("{:?}", tn.spec)) }
    })
    .await;

    // The shared directory: the agent's kubeconfig, with the host's loopback
    // as the guest reaches it (10.0.2.2) and the CA beside it (the guest's
    // /tmp is its own).
    let share = tempfile::Builder::new().prefix("pytier-agent-vm").tempdir_in("/var/tmp").unwrap();
    let agent_kubeconfig = plane.kubeconfig_as_service_account("pytier-system", "pytier-node-agent").unwrap();
    let mut text =
        std::fs::read_to_string(&agent_kubeconfig).unwrap().replace("https://127.0.0.1:", "https://10.0.2.2:");
    let ca = text.lines().find_map(|l| l.trim().strip_prefix("certificate-authority: ")).unwrap().to_string();
    std::fs::copy(&ca, share.path().join("ca.crt")).unwrap();
    text = text.replace(&ca, &share.path().join("ca.crt").display().to_string());
    std::fs::write(share.path().join("kubeconfig"), text).unwrap();

    let agent = pytier_tests::agent::binary().unwrap();
    let mut vm = Command::new(repo_root().join("tests/numa-vm/run"))
        .args(["--tiered", "--net", "--share"])
        .arg(share.path())
        .arg("--")
        .arg(repo_root().join("tests/numa-vm/agent-job.sh"))
        .arg(share.path())
        .args(["vm", &uid, "40"])
        .env("PYTIER_AGENT_BIN", &agent)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // While the VM runs: the agent's status in the API shows the pod's bytes on CXL.
    let mut most_on_cxl = 0;
    let status = loop {
        if let Some(status) = vm.try_wait().unwrap() {
            break status;
        }
        if let Ok(tn) = Api::<TieringNode>::all(c.clone()).get("vm").await {
            let on_cxl =
                tn.status.iter().flat_map(|s| &s.pods).filter(|p| p.name == "svc-0").map(|p| p.cxl_bytes).max();
            most_on_cxl = most_on_cxl.max(on_cxl.unwrap_or(0));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let out = vm.wait_with_output().unwrap();
    let log = std::fs::read_to_string(share.path().join("agent.log")).unwrap_or_default();
    assert!(
        status.success(),
        "the VM job failed: {}\n{}\nagent log:\n{log}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(most_on_cxl > 8_000_000, "the TieringNode status showed at most {most_on_cxl} bytes of svc-0 on CXL");

    let result: Value =
        serde_json::from_str(&std::fs::read_to_string(share.path().join("workload.json")).unwrap()).unwrap();
    println!("workload: {result}");
    assert_eq!(result["active"], true);
    assert_eq!(result["configuredThreshold"], 1.5, "the policy's settings came from the agent: {result}\n{log}");
    assert_eq!(result["configuredBudget"], 2097152);
    assert!(result["intact"].as_bool().unwrap());
    let cold = result["coldOnNode1"].as_f64().unwrap();
    assert!(cold > 0.8, "cold objects' pages on node 1: {cold}: {result}");
    // Measured as the loop ends (see agent_workload.py): where a set the
    // program no longer uses ends up is not what this test is about.
    let hot = result["hotOnNode0"].as_f64().unwrap();
    assert!(hot > 0.8, "hot objects' pages on node 0: {hot}: {result}");

    let metrics = std::fs::read_to_string(share.path().join("metrics.txt")).unwrap();
    let cxl_series = r#"pytier_memory_bytes{node="vm",namespace="default",pod="svc-0",container="app",tier="cxl"} "#;
    let cxl: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(cxl_series))
        .unwrap_or_else(|| panic!("{cxl_series} not in\n{metrics}"))
        .parse()
        .unwrap();
    assert!(cxl > 8e6, "the agent's metrics show the cold table on CXL: {cxl}");
    let status = Api::<TieringNode>::all(c.clone()).get("vm").await.unwrap().status.unwrap();
    assert!(
        status.numa_nodes.iter().any(|n| n.id == 1 && n.tier == pytier_crds::node::Tier::Cxl),
        "{:?}",
        status.numa_nodes
    );
}

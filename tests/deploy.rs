//! The deployment files (`deploy/`) against the broker they deploy: every
//! `renderfarm_*` metric that the alert rules, the autoscalers (KEDA's
//! ScaledObjects, the HPA's prometheus-adapter rule), the Grafana dashboard
//! and the rules' own unit tests name must be one a real broker exports, so
//! renaming a metric breaks this test instead of an autoscaler or a page.
//! KEDA's ScaledObject is a custom resource no offline schema covers: its
//! kind, API version and fields are checked here, in every overlay as
//! `kubectl kustomize` renders it.

mod common;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{send_json, wait_for, BrokerProcess};
use reqwest::Method;
use serde_json::{json, Value};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Every document of a YAML file (or of `kubectl kustomize`'s output).
fn yaml_documents(text: &str, what: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{what}: {e}")))
        .filter(|doc: &Value| !doc.is_null())
        .collect()
}

fn yaml_file(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut docs = yaml_documents(&text, &path.display().to_string());
    assert_eq!(docs.len(), 1, "{}: one document", path.display());
    docs.remove(0)
}

/// The `renderfarm_*` metric names a text mentions (PromQL, a comment, a
/// patch). Recording rules (`renderfarm:...`) do not match.
fn metric_names(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\brenderfarm_[a-z0-9_]+\b").unwrap();
    re.find_iter(text).map(|m| m.as_str().to_string()).collect()
}

/// The series names a broker's exposition (Prometheus's text format) can
/// have, as Prometheus stores them: each family from its `# TYPE` line (a
/// family with no series yet, such as a report never made, still counts),
/// with `_bucket`, `_sum` and `_count` for a histogram. Counters are named
/// with `_total` there already.
fn exposed_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (family, kind) = rest.split_once(' ').expect("# TYPE name kind");
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{family}{suffix}"));
            }
        } else {
            names.insert(family.to_string());
        }
    }
    names
}

/// What a broker with a leader's gauges exports: a render pending that any
/// worker takes and one that needs a GPU, so `renderfarm_workers_wanted` has
/// both pools' series; and one of each report and a stale one, since a
/// labelled family appears only with its first series.
async fn broker_exposition() -> String {
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bind = format!("127.0.0.1:{port}");
    let broker = BrokerProcess::start_with(dir.path(), "127.0.0.1:0", &["--metrics-bind", &bind]);
    let b = broker.address.as_str();
    let client = common::admin_client();
    for body in [
        json!({"name": "plain", "blend_file": "/p/a.blend", "frame_start": 1, "frame_end": 3, "chunk_size": 1}),
        json!({"name": "gpu", "blend_file": "/p/g.blend", "frame_start": 1, "frame_end": 2, "chunk_size": 1, "tags": ["gpu"]}),
    ] {
        send_json(&client, Method::POST, format!("{b}/renders"), &body).await;
    }
    let worker = send_json(
        &client,
        Method::POST,
        format!("{b}/workers"),
        &json!({"name": "w1"}),
    )
    .await;
    let worker = worker["id"].as_str().unwrap();
    let task = send_json(
        &client,
        Method::POST,
        format!("{b}/workers/{worker}/request-task"),
        &json!({}),
    )
    .await;
    let (task_id, lease) = (task["task_id"].as_str().unwrap(), &task["lease_id"]);
    for (report, body) in [
        ("progress", json!({"lease_id": lease, "frames_done": 1})),
        ("complete", json!({"lease_id": lease})),
    ] {
        send_json(
            &client,
            Method::POST,
            format!("{b}/tasks/{task_id}/{report}"),
            &body,
        )
        .await;
    }
    let stale_url = format!("{b}/tasks/{task_id}/progress");
    let stale = common::with_credential(client.post(&stale_url), &Method::POST, &stale_url)
        .json(&json!({"lease_id": uuid::Uuid::new_v4(), "frames_done": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 409, "a stale report counts a store error");
    let url = format!("http://{bind}/metrics");
    let anonymous = renderfarm_client::http_client_builder().build().unwrap();
    wait_for(
        "the broker to lead and count the GPU render's wanted worker",
        Duration::from_secs(10),
        || async {
            let text = anonymous
                .get(&url)
                .header(reqwest::header::ACCEPT, "text/plain;version=0.0.4")
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            text.contains(r#"renderfarm_workers_wanted{tags="gpu",kind="blender"} 2"#)
                .then_some(text)
        },
    )
    .await
}

/// Each named metric must be exported; `source` says where the names came from.
fn assert_exported(names: &BTreeSet<String>, exported: &BTreeSet<String>, source: &str) {
    let unknown: Vec<&String> = names.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "{source} names metrics the broker does not export: {unknown:?}\nexported: {exported:?}"
    );
}

/// The PromQL expressions of a Prometheus rules file, by rule name.
fn rule_exprs(path: &Path) -> Vec<(String, String)> {
    let rules = yaml_file(path);
    let mut out = Vec::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().or(rule["record"].as_str()).unwrap();
            out.push((name.to_string(), rule["expr"].as_str().unwrap().to_string()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_deployment_files_name_is_one_the_broker_exports() {
    let exported = exposed_names(&broker_exposition().await);
    let deploy = deploy_dir();

    // Every rule says something about the broker's metrics.
    let mut recorded = BTreeSet::new();
    for file in ["alerts.yml", "autoscaling.yml"] {
        for (rule, expr) in rule_exprs(&deploy.join("prometheus").join(file)) {
            let names = metric_names(&expr);
            assert!(
                !names.is_empty(),
                "{file}: {rule} names no renderfarm metric"
            );
            assert_exported(&names, &exported, &format!("{file}: {rule}"));
            recorded.insert(rule);
        }
    }
    let alerts: Vec<String> = rule_exprs(&deploy.join("prometheus/alerts.yml"))
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    for needed in [
        "RenderfarmNoWorkerAlive",
        "RenderfarmTasksFailingRepeatedly",
        "RenderfarmSchedulerLeaderMissing",
        "RenderfarmStoreUnreachable",
    ] {
        assert!(alerts.iter().any(|a| a == needed), "no alert {needed}");
    }

    // The rules' unit tests feed series by those names.
    let tests = yaml_file(&deploy.join("prometheus/alerts.test.yml"));
    for test in tests["tests"].as_array().unwrap() {
        for series in test["input_series"].as_array().unwrap() {
            let names = metric_names(series["series"].as_str().unwrap());
            assert_exported(&names, &exported, "alerts.test.yml");
        }
    }

    // prometheus-adapter serves a recorded series under a name of its own,
    // which the HPA asks for.
    let adapter = yaml_file(&deploy.join("prometheus/adapter.yml"));
    let mut adapter_names = BTreeSet::new();
    for rule in adapter["externalRules"].as_array().unwrap() {
        let series = rule["seriesQuery"].as_str().unwrap();
        let record = series.split('{').next().unwrap().trim_matches('\'');
        assert!(
            recorded.contains(record),
            "adapter.yml reads {record}, which no recording rule makes"
        );
        assert_exported(
            &metric_names(rule["metricsQuery"].as_str().unwrap()),
            &exported,
            "adapter.yml",
        );
        adapter_names.insert(rule["name"]["as"].as_str().unwrap().to_string());
    }

    // The dashboard: every panel's queries.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy.join("grafana/renderfarm.json")).unwrap(),
    )
    .unwrap();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let names = metric_names(expr);
            assert!(
                !names.is_empty(),
                "dashboard panel {}: {expr}",
                panel["title"]
            );
            assert_exported(
                &names,
                &exported,
                &format!("dashboard panel {}", panel["title"]),
            );
            queries += 1;
        }
    }
    assert!(queries >= 10, "the dashboard has {queries} queries");

    // And anything else under deploy/: manifests, kustomize patches (the GPU
    // pool's query is one), comments. The adapter's names are its own.
    for file in files_under(&deploy) {
        let text = std::fs::read_to_string(&file).unwrap();
        let names: BTreeSet<String> = metric_names(&text)
            .into_iter()
            .filter(|n| !adapter_names.contains(n))
            .collect();
        assert_exported(&names, &exported, &file.display().to_string());
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// `kubectl`, or `None` after a visible SKIPPED line. With
/// `RENDERFARM_REQUIRE_KUBECTL=1` (CI; it is part of the machine image), a
/// missing kubectl fails the test.
fn kubectl_or_skip(test: &str) -> Option<PathBuf> {
    let kubectl = PathBuf::from("kubectl");
    match Command::new(&kubectl)
        .args(["version", "--client"])
        .output()
    {
        Ok(out) if out.status.success() => Some(kubectl),
        other => {
            if std::env::var("RENDERFARM_REQUIRE_KUBECTL").as_deref() == Ok("1") {
                panic!("{test}: kubectl (1.32, with kustomize) is required (RENDERFARM_REQUIRE_KUBECTL=1) but: {other:?}");
            }
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: {test}: no kubectl to render the overlays with"
            );
            None
        }
    }
}

/// Every overlay as `kubectl kustomize` renders it: (overlay, its objects).
fn rendered_overlays(kubectl: &Path) -> Vec<(String, Vec<Value>)> {
    let overlays = deploy_dir().join("kubernetes/overlays");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&overlays).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let rendered = Command::new(kubectl)
            .arg("kustomize")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            rendered.status.success(),
            "kubectl kustomize {name}: {}",
            String::from_utf8_lossy(&rendered.stderr)
        );
        let text = String::from_utf8(rendered.stdout).unwrap();
        out.push((name.clone(), yaml_documents(&text, &name)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn named<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_overlay_sizes_each_worker_pool_on_exported_metrics() {
    let Some(kubectl) = kubectl_or_skip("every_overlay_sizes_each_worker_pool_on_exported_metrics")
    else {
        return;
    };
    let overlays = rendered_overlays(&kubectl);
    let names: Vec<&str> = overlays.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["external-mongodb", "gpu", "hpa", "replicaset"]);
    let exported = exposed_names(&broker_exposition().await);
    let adapter = yaml_file(&deploy_dir().join("prometheus/adapter.yml"));
    let adapter_metric = adapter["externalRules"][0]["name"]["as"].as_str().unwrap();

    for (overlay, objects) in &overlays {
        let pools: Vec<&Value> = named(objects, "Deployment")
            .into_iter()
            .filter(|d| {
                d["spec"]["template"]["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap()
                    .starts_with("renderfarm-worker")
            })
            .collect();
        assert!(!pools.is_empty(), "{overlay}: no worker pool");
        for pool in &pools {
            let name = pool["metadata"]["name"].as_str().unwrap();
            let spec = &pool["spec"]["template"]["spec"];
            // The agent hands its task back on SIGTERM; Kubernetes must wait
            // for that report, and the pod must not share the broker's.
            assert!(
                spec["terminationGracePeriodSeconds"].as_i64().unwrap() >= 30,
                "{overlay}/{name}: too short a grace period"
            );
            let scalers: Vec<&Value> = objects
                .iter()
                .filter(|o| {
                    (o["kind"] == "ScaledObject" || o["kind"] == "HorizontalPodAutoscaler")
                        && o["spec"]["scaleTargetRef"]["name"] == name
                })
                .collect();
            assert_eq!(
                scalers.len(),
                1,
                "{overlay}/{name}: one autoscaler per pool"
            );
            let scaler = scalers[0];
            let (min, max) = if scaler["kind"] == "ScaledObject" {
                check_scaled_object(scaler, &exported, &format!("{overlay}/{name}"));
                (
                    scaler["spec"]["minReplicaCount"].as_i64().unwrap(),
                    scaler["spec"]["maxReplicaCount"].as_i64().unwrap(),
                )
            } else {
                assert_eq!(scaler["apiVersion"], "autoscaling/v2");
                let metric = &scaler["spec"]["metrics"][0];
                assert_eq!(metric["type"], "External", "{overlay}/{name}");
                assert_eq!(
                    metric["external"]["metric"]["name"], adapter_metric,
                    "{overlay}/{name}: the HPA asks for a metric the adapter does not serve"
                );
                assert_eq!(metric["external"]["target"]["type"], "AverageValue");
                (
                    scaler["spec"]["minReplicas"].as_i64().unwrap(),
                    scaler["spec"]["maxReplicas"].as_i64().unwrap(),
                )
            };
            assert!(min <= max, "{overlay}/{name}: {min} > {max}");
        }
    }
}

/// KEDA's `ScaledObject` (keda.sh/v1alpha1) as KEDA 2.x reads it: a target,
/// replica bounds, and Prometheus triggers with a server, a query over
/// exported metrics and a numeric threshold.
fn check_scaled_object(object: &Value, exported: &BTreeSet<String>, what: &str) {
    assert_eq!(object["apiVersion"], "keda.sh/v1alpha1", "{what}");
    let spec = &object["spec"];
    assert!(spec["scaleTargetRef"]["name"].is_string(), "{what}");
    let known = [
        "scaleTargetRef",
        "minReplicaCount",
        "maxReplicaCount",
        "pollingInterval",
        "cooldownPeriod",
        "idleReplicaCount",
        "advanced",
        "triggers",
        "fallback",
        "initialCooldownPeriod",
    ];
    for field in spec.as_object().unwrap().keys() {
        assert!(
            known.contains(&field.as_str()),
            "{what}: unknown field spec.{field}"
        );
    }
    for field in [
        "minReplicaCount",
        "maxReplicaCount",
        "pollingInterval",
        "cooldownPeriod",
    ] {
        assert!(
            spec[field].is_i64(),
            "{what}: spec.{field} must be an integer"
        );
    }
    let triggers = spec["triggers"].as_array().expect("triggers");
    assert!(!triggers.is_empty(), "{what}: no trigger");
    for trigger in triggers {
        assert_eq!(trigger["type"], "prometheus", "{what}");
        assert!(
            ["AverageValue", "Value"]
                .contains(&trigger["metricType"].as_str().unwrap_or("AverageValue")),
            "{what}: metricType"
        );
        let metadata = trigger["metadata"].as_object().expect("metadata");
        // KEDA reads trigger metadata as strings only.
        for (key, value) in metadata {
            assert!(value.is_string(), "{what}: metadata.{key} must be a string");
        }
        let server = metadata["serverAddress"].as_str().unwrap();
        assert!(
            server.starts_with("http://") || server.starts_with("https://"),
            "{what}"
        );
        let threshold: f64 = metadata["threshold"].as_str().unwrap().parse().unwrap();
        assert!(threshold > 0.0, "{what}: threshold");
        if let Some(activation) = metadata.get("activationThreshold") {
            activation.as_str().unwrap().parse::<f64>().unwrap();
        }
        let query = metadata["query"].as_str().unwrap();
        let names = metric_names(query);
        assert!(
            names.contains("renderfarm_workers_wanted"),
            "{what}: the pool is not sized on renderfarm_workers_wanted: {query}"
        );
        assert_exported(&names, exported, what);
    }
}

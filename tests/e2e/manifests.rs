//! The deployment files in `infra/`, checked against what the binaries read: the Kubernetes
//! manifests (every document parses; pods run as non-root with probes and a read-only root;
//! the worker outlives its drain; KEDA scales the worker on every namespace's queues;
//! disruption budgets cover the API and the worker; the worker's NetworkPolicy matches its
//! egress policy; secrets come from the Secret and settings from the ConfigMap), the compose
//! file, and the Containerfile's runtime stages.
//!
//! A pod's settings are what its binary would load: the ConfigMap's `engine.toml` with the
//! pod's environment (resolved from the Secret) laid over it as `Settings::load` would, then
//! validated by `Settings::from_toml`, the same checks the binaries run at start-up. No
//! server is needed, and nothing here reaches the network.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use engine_shared::config::Settings;
use yaml_rust2::{Yaml, YamlLoader};

/// The worker's drain after its grace period: up to 10 s for log uploads under way, then up
/// to 5 s for the spool's last drain (`worker/src/log_shipper.rs`).
const LOG_DRAIN: Duration = Duration::from_secs(15);

/// Environment variables that carry secrets: never a literal value in a manifest.
const SECRET_VARIABLES: &[&str] = &[
    "DATABASE_URL",
    "AMQP_URL",
    "REDIS_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
];

#[test]
fn every_manifest_parses_names_its_kind_and_leaves_the_namespace_open() {
    let manifests = Manifests::load();

    assert!(manifests.documents.len() >= 10, "{:?}", manifests.kinds());
    for (file, document) in &manifests.documents {
        let kind = text(&document["kind"], &format!("{file}: kind"));
        text(&document["apiVersion"], &format!("{file}: apiVersion"));
        if kind != "Kustomization" {
            text(
                &document["metadata"]["name"],
                &format!("{file}: metadata.name"),
            );
        }
        assert!(
            document["metadata"]["namespace"].is_badvalue(),
            "{file}: {kind} names a namespace; kubectl -n or an overlay decides it"
        );
    }
    for kind in [
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "Job",
        "CronJob",
        "PodDisruptionBudget",
        "ScaledObject",
        "TriggerAuthentication",
    ] {
        assert!(manifests.kinds().contains(&kind), "no {kind}");
    }

    let kustomization = manifests.only("Kustomization");
    let resources: Vec<&str> = list(&kustomization["resources"])
        .iter()
        .map(|resource| text(resource, "a kustomization resource"))
        .collect();
    for resource in &resources {
        assert!(k8s_dir().join(resource).is_file(), "{resource} is missing");
    }
    // The template would overwrite the real Secret; the migration must finish first.
    assert!(!resources.contains(&"secret.example.yaml"), "{resources:?}");
    assert!(!resources.contains(&"migrate-job.yaml"), "{resources:?}");
}

#[test]
fn deployments_run_as_non_root_read_only_with_probes_and_resources() {
    let manifests = Manifests::load();

    let deployments: Vec<&Yaml> = manifests.of_kind("Deployment").collect();
    assert_eq!(deployments.len(), 2, "the api and the worker");
    for deployment in deployments {
        let name = text(&deployment["metadata"]["name"], "a Deployment's name");
        let pod = &deployment["spec"]["template"]["spec"];
        assert!(
            contains(
                &labels(&deployment["spec"]["template"]["metadata"]["labels"]),
                &labels(&deployment["spec"]["selector"]["matchLabels"])
            ),
            "{name}: the selector must match the pod template's labels"
        );
        let containers = list(&pod["containers"]);
        assert!(!containers.is_empty(), "{name}: no container");
        for container in containers {
            let what = format!("{name}/{}", text(&container["name"], "a container's name"));
            assert_runs_as_non_root(pod, container, &what);
            for probe in ["readinessProbe", "livenessProbe"] {
                let get = &container[probe]["httpGet"];
                assert!(
                    text(&get["path"], &format!("{what}: {probe} path")).starts_with('/'),
                    "{what}: {probe}"
                );
                container_port(container, &get["port"], &format!("{what}: {probe}"));
            }
            let security = &container["securityContext"];
            assert_eq!(
                security["readOnlyRootFilesystem"].as_bool(),
                Some(true),
                "{what}"
            );
            assert_eq!(
                security["allowPrivilegeEscalation"].as_bool(),
                Some(false),
                "{what}"
            );
            assert!(
                empty_dir_mounts(pod, container).contains(&"/tmp"),
                "{what}: a read-only root needs an emptyDir on /tmp"
            );
            for path in [
                ["requests", "cpu"],
                ["requests", "memory"],
                ["limits", "memory"],
            ] {
                text(
                    &container["resources"][path[0]][path[1]],
                    &format!("{what}: resources.{}.{}", path[0], path[1]),
                );
            }
        }
    }
}

#[test]
fn the_api_serves_on_the_port_its_probes_and_service_use() {
    let manifests = Manifests::load();
    let api = manifests.deployment("api");
    let pod = &api["spec"]["template"]["spec"];
    let container = &list(&pod["containers"])[0];

    let settings = manifests.container_settings(pod, container, "the api");

    let listen_port = port_of_address(&settings.api.listen);
    assert!(
        settings.api.listen.starts_with("0.0.0.0:"),
        "the api must listen on every interface in a pod: {}",
        settings.api.listen
    );
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(
            container_port(container, &container[probe]["httpGet"]["port"], probe),
            listen_port,
            "{probe}"
        );
    }
    assert_eq!(
        text(&container["livenessProbe"]["httpGet"]["path"], "liveness"),
        "/healthz"
    );
    let service = manifests.only("Service");
    assert!(contains(
        &labels(&api["spec"]["template"]["metadata"]["labels"]),
        &labels(&service["spec"]["selector"])
    ));
    let target = &list(&service["spec"]["ports"])[0]["targetPort"];
    assert_eq!(
        container_port(container, target, "the Service"),
        listen_port
    );
    // Metrics and readiness reasons stay off the Service: only the admin port has them,
    // and the scrape annotation points there.
    let admin = settings
        .api
        .admin_listen
        .as_deref()
        .expect("api.admin_listen is set in the pod");
    let admin_port = port_of_address(admin);
    assert_ne!(admin_port, listen_port);
    for port in list(&service["spec"]["ports"]) {
        assert_ne!(
            container_port(container, &port["targetPort"], "the Service"),
            admin_port
        );
    }
    let scraped = text(
        &api["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"],
        "the scrape port",
    );
    assert_eq!(scraped.parse::<i64>().ok(), Some(admin_port));
    assert_eq!(
        list(&container["args"])
            .iter()
            .map(|arg| text(arg, "an arg"))
            .collect::<Vec<_>>(),
        ["serve"]
    );
}

#[test]
fn the_worker_outlives_its_drain_and_spools_to_an_empty_dir() {
    let manifests = Manifests::load();
    let worker = manifests.deployment("worker");
    let pod = &worker["spec"]["template"]["spec"];
    let container = &list(&pod["containers"])[0];

    let settings = manifests.container_settings(pod, container, "the worker");

    let termination = Duration::from_secs(
        pod["terminationGracePeriodSeconds"]
            .as_i64()
            .expect("the worker sets terminationGracePeriodSeconds")
            .try_into()
            .unwrap(),
    );
    assert!(
        termination >= settings.worker.grace_period + LOG_DRAIN,
        "terminationGracePeriodSeconds {termination:?} < grace_period_secs {:?} + {LOG_DRAIN:?}",
        settings.worker.grace_period
    );
    let health = settings
        .worker
        .health_listen
        .as_deref()
        .expect("the worker serves its health endpoints (worker.health_listen)");
    assert!(health.starts_with("0.0.0.0:"), "{health}");
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(text(&get["path"], probe), path);
        assert_eq!(
            container_port(container, &get["port"], probe),
            port_of_address(health),
            "{probe}"
        );
    }
    let spool = settings.logs.spool_dir.to_str().unwrap();
    assert!(
        empty_dir_mounts(pod, container).contains(&spool),
        "logs.spool_dir {spool} must be an emptyDir"
    );
    assert!(
        worker["spec"]["replicas"].is_badvalue(),
        "KEDA owns the worker's replica count; re-applying must not reset it"
    );
}

#[test]
fn keda_scales_the_worker_on_every_namespace_queue() {
    let manifests = Manifests::load();
    let worker = manifests.deployment("worker");
    let pod = &worker["spec"]["template"]["spec"];
    let settings = manifests.container_settings(pod, &list(&pod["containers"])[0], "the worker");
    let scaled = manifests.only("ScaledObject");

    let target = &scaled["spec"]["scaleTargetRef"];
    assert_eq!(
        text(&target["name"], "scaleTargetRef.name"),
        text(&worker["metadata"]["name"], "the worker's name")
    );
    assert!(matches!(target["kind"].as_str(), None | Some("Deployment")));
    let mut covered = Vec::new();
    for trigger in list(&scaled["spec"]["triggers"]) {
        assert_eq!(text(&trigger["type"], "a trigger's type"), "rabbitmq");
        let metadata = &trigger["metadata"];
        assert_eq!(text(&metadata["mode"], "mode"), "QueueLength");
        assert!(metadata["host"].is_badvalue(), "the host is a secret");
        let authentication = manifests.named(
            "TriggerAuthentication",
            text(&trigger["authenticationRef"]["name"], "authenticationRef"),
        );
        let host = list(&authentication["spec"]["secretTargetRef"])
            .iter()
            .find(|reference| reference["parameter"].as_str() == Some("host"))
            .expect("the TriggerAuthentication gives the host");
        manifests.secret_value(
            text(&host["name"], "the host's Secret"),
            text(&host["key"], "the host's key"),
        );
        covered.push((
            text(&metadata["vhostName"], "vhostName").to_owned(),
            text(&metadata["queueName"], "queueName").to_owned(),
        ));
    }
    for namespace in &settings.namespaces {
        for queue in &settings.queues {
            let wanted = (namespace.vhost.clone(), format!("jobs.{}", queue.name));
            assert!(covered.contains(&wanted), "no trigger for {wanted:?}");
        }
    }
    assert_eq!(
        covered.len(),
        settings.namespaces.len() * settings.queues.len(),
        "a trigger on a queue or vhost the settings do not have: {covered:?}"
    );
}

#[test]
fn disruption_budgets_select_the_api_and_worker_pods() {
    let manifests = Manifests::load();

    let mut covered = Vec::new();
    for budget in manifests.of_kind("PodDisruptionBudget") {
        let name = text(&budget["metadata"]["name"], "a budget's name");
        assert!(
            budget["spec"]["minAvailable"].as_i64().is_some()
                || budget["spec"]["maxUnavailable"].as_i64().is_some(),
            "{name}: minAvailable or maxUnavailable"
        );
        let selector = labels(&budget["spec"]["selector"]["matchLabels"]);
        assert!(
            !selector.is_empty(),
            "{name}: an empty selector takes every pod"
        );
        let selected: Vec<&str> = manifests
            .of_kind("Deployment")
            .filter(|deployment| {
                contains(
                    &labels(&deployment["spec"]["template"]["metadata"]["labels"]),
                    &selector,
                )
            })
            .map(|deployment| text(&deployment["metadata"]["name"], "a Deployment's name"))
            .collect();
        assert_eq!(selected.len(), 1, "{name} selects {selected:?}");
        covered.push(selected[0]);
    }
    for component in ["api", "worker"] {
        let name = text(
            &manifests.deployment(component)["metadata"]["name"],
            "a Deployment's name",
        );
        assert!(covered.contains(&name), "no budget for {name}");
    }
}

#[test]
fn the_workers_network_policy_refuses_what_the_egress_policy_refuses() {
    let manifests = Manifests::load();
    let worker = manifests.deployment("worker");
    let pod_labels = labels(&worker["spec"]["template"]["metadata"]["labels"]);
    let policy = manifests
        .of_kind("NetworkPolicy")
        .find(|policy| {
            contains(
                &pod_labels,
                &labels(&policy["spec"]["podSelector"]["matchLabels"]),
            )
        })
        .expect("a NetworkPolicy selecting the worker pods");
    let types: Vec<&str> = list(&policy["spec"]["policyTypes"])
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert!(types.contains(&"Egress"), "{types:?}");

    // Every block this policy opens must shut out exactly the ranges the worker's own
    // policy refuses; every range it shuts out must be one the worker refuses too.
    let mut excepted = Vec::new();
    let blocks = policy["spec"]["egress"]
        .as_vec()
        .expect("egress rules")
        .iter()
        .flat_map(|rule| list(&rule["to"]));
    for block in blocks.filter(|peer| !peer["ipBlock"].is_badvalue()) {
        let cidr = text(&block["ipBlock"]["cidr"], "an ipBlock's cidr");
        assert!(
            matches!(cidr, "0.0.0.0/0" | "::/0"),
            "only whole families are opened: {cidr}"
        );
        excepted.extend(
            list(&block["ipBlock"]["except"])
                .iter()
                .filter_map(Yaml::as_str)
                .map(str::to_owned),
        );
    }
    for range in &excepted {
        let net: ipnet::IpNet = range.parse().expect("an except entry is a CIDR");
        assert!(
            engine_shared::egress::special_range(net.network()).is_some(),
            "{range} is shut out by the cluster but allowed by the worker"
        );
    }
    for refused in engine_shared::egress::refused_ranges() {
        assert!(
            excepted
                .iter()
                .any(|range| range.parse::<ipnet::IpNet>().ok() == Some(refused)),
            "{refused} is refused by the worker but not shut out by the cluster"
        );
    }
}

#[test]
fn secrets_come_from_the_secret_and_settings_from_the_config_map() {
    let manifests = Manifests::load();

    for (what, pod) in manifests.pods() {
        for container in list(&pod["containers"]) {
            let what = format!("{what}/{}", text(&container["name"], "a container's name"));
            for variable in list(&container["env"]) {
                let name = text(&variable["name"], "an env name");
                let sensitive = SECRET_VARIABLES.contains(&name) || name.ends_with("_SECRET");
                assert!(
                    !(sensitive && variable["value"].as_str().is_some()),
                    "{what}: {name} must come from the Secret, not a literal"
                );
                if sensitive {
                    assert!(
                        !variable["valueFrom"]["secretKeyRef"].is_badvalue(),
                        "{what}: {name}"
                    );
                }
            }
            assert!(
                list(&container["envFrom"]).is_empty(),
                "{what}: name each variable, so a pod gets only the secrets it needs"
            );
            // Resolving every reference fails on a Secret or ConfigMap key that is not there,
            // and the settings must pass the binaries' own validation.
            manifests.container_settings(pod, container, &what);
        }
    }

    let secret = manifests.only("Secret");
    for (key, value) in secret["stringData"].as_hash().expect("stringData") {
        let key = text(key, "a Secret key");
        let value = text(value, key);
        assert!(
            value.contains("REPLACE_ME") || value.contains("replace-me"),
            "{key} in the Secret template must be a marked placeholder"
        );
    }
    let config = manifests.config_file();
    for line in config.lines() {
        let key = line.split('=').next().unwrap().trim();
        assert!(
            ![
                "url",
                "access_key_id",
                "secret_access_key",
                "webhook_signing_secret"
            ]
            .contains(&key),
            "the ConfigMap holds a secret setting: {key}"
        );
    }

    let api_image = |pod: &Yaml| text(&list(&pod["containers"])[0]["image"], "an image").to_owned();
    let api = api_image(&manifests.deployment("api")["spec"]["template"]["spec"]);
    for (what, pod) in manifests.pods() {
        let args = list(&list(&pod["containers"])[0]["args"]);
        if matches!(
            args.first().and_then(Yaml::as_str),
            Some("migrate" | "backup")
        ) {
            assert_eq!(
                api_image(pod),
                api,
                "{what} runs engine-api: the api's image"
            );
        }
    }
}

#[test]
fn the_containerfile_builds_small_non_root_images_without_build_tools() {
    let containerfile =
        Containerfile::parse(&read(&repository().join("infra/container/Containerfile")));

    let build = containerfile.stage("build");
    let rust = containerfile.resolve(&build.base);
    let rust_version = version_in(&rust);
    let required = workspace_rust_version();
    assert!(
        rust_version >= required,
        "{rust} is older than rust-version {required:?}"
    );
    let cargo = build
        .instructions
        .iter()
        .find(|(keyword, text)| keyword == "RUN" && text.contains("cargo build"))
        .map(|(_, text)| text)
        .expect("the build stage runs cargo build");
    for part in [
        "--release",
        "-p engine-api",
        "-p engine-worker",
        "--mount=type=cache",
    ] {
        assert!(cargo.contains(part), "cargo build without {part}");
    }

    for (stage, binary) in [("api", "engine-api"), ("worker", "engine-worker")] {
        let runtime = containerfile.stage(stage);
        let base = containerfile.resolve(&runtime.base);
        assert!(
            !base.contains("rust") && base != rust,
            "{stage} runs on {base}"
        );
        let user = runtime
            .instructions
            .iter()
            .rev()
            .find(|(keyword, _)| keyword == "USER")
            .map(|(_, user)| user.split(':').next().unwrap().trim())
            .unwrap_or_else(|| panic!("{stage}: no USER"));
        assert!(
            user.parse::<u32>().is_ok_and(|uid| uid != 0),
            "{stage}: USER {user} must be a numeric non-root uid (runAsNonRoot checks it)"
        );
        for (keyword, text) in &runtime.instructions {
            assert_ne!(keyword, "RUN", "{stage}: a runtime stage runs nothing");
            assert!(
                !text.contains("cargo") && !text.contains("rustc"),
                "{stage}: {keyword} {text}"
            );
        }
        let copies: Vec<&String> = runtime
            .instructions
            .iter()
            .filter(|(keyword, _)| keyword == "COPY")
            .map(|(_, text)| text)
            .collect();
        assert_eq!(copies.len(), 1, "{stage}: {copies:?}");
        assert!(
            copies[0].starts_with("--from=build ") && copies[0].contains(binary),
            "{stage} copies only its binary: {}",
            copies[0]
        );
        let entrypoint = runtime
            .instructions
            .iter()
            .find(|(keyword, _)| keyword == "ENTRYPOINT")
            .map(|(_, text)| text)
            .unwrap_or_else(|| panic!("{stage}: no ENTRYPOINT"));
        assert!(entrypoint.contains(binary), "{stage}: {entrypoint}");
    }

    let ignored = read(&repository().join(".dockerignore"));
    for path in ["target", ".git", ".env"] {
        assert!(
            ignored.lines().any(|line| line.trim() == path),
            ".dockerignore must leave out {path}"
        );
    }
}

#[test]
fn compose_runs_the_stack_with_health_checks_and_the_production_settings() {
    let compose = &load_yaml(&repository().join("infra/compose.yaml"))[0];
    let services = &compose["services"];

    for service in ["postgres", "rabbitmq", "redis", "minio", "api", "worker"] {
        assert!(
            !list(&services[service]["healthcheck"]["test"]).is_empty(),
            "{service}: no health check"
        );
    }
    assert_eq!(
        text(
            &list(&services["migrate"]["command"])[0],
            "migrate's command"
        ),
        "migrate"
    );
    assert_eq!(
        text(
            &services["migrate"]["depends_on"]["postgres"]["condition"],
            "migrate waits for postgres"
        ),
        "service_healthy"
    );
    for service in ["api", "worker"] {
        assert_eq!(
            text(
                &services[service]["depends_on"]["migrate"]["condition"],
                "waits for migrate"
            ),
            "service_completed_successfully",
            "{service}"
        );
        let environment: Vec<(String, String)> = services[service]["environment"]
            .as_hash()
            .unwrap_or_else(|| panic!("{service}: environment as a mapping"))
            .iter()
            .map(|(name, value)| {
                let name = text(name, "a variable's name").to_owned();
                let value = text(value, &name).to_owned();
                (name, value)
            })
            .collect();
        for name in [
            "DATABASE_URL",
            "AMQP_URL",
            "REDIS_URL",
            "AWS_S3_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_S3_BUCKET_NAME",
        ] {
            assert!(
                environment.iter().any(|(variable, _)| variable == name),
                "{service}: {name}"
            );
        }
        let settings = settings_from(String::new(), &environment, service);
        let health = list(&services[service]["healthcheck"]["test"])
            .last()
            .map(|url| text(url, "the health check's URL"))
            .unwrap();
        if service == "api" {
            let port = port_of_address(&settings.api.listen);
            assert!(health.contains(&format!(":{port}/healthz")), "{health}");
            assert!(
                list(&services["api"]["ports"])
                    .iter()
                    .any(|mapping| text(mapping, "a port").ends_with(&format!(":{port}"))),
                "the api's port is published"
            );
        } else {
            let listen = settings
                .worker
                .health_listen
                .as_deref()
                .expect("health_listen");
            assert!(
                health.contains(&format!(":{}/healthz", port_of_address(listen))),
                "{health}"
            );
            let stop = text(
                &services["worker"]["stop_grace_period"],
                "stop_grace_period",
            );
            let stop = Duration::from_secs(stop.trim_end_matches('s').parse().unwrap());
            assert!(
                stop >= settings.worker.grace_period + LOG_DRAIN,
                "stop_grace_period {stop:?} must cover the drain"
            );
        }
    }
}

// --- the manifests ------------------------------------------------------------------------

/// Every document of every `infra/k8s/*.yaml`, with its file name.
struct Manifests {
    documents: Vec<(String, Yaml)>,
}

impl Manifests {
    fn load() -> Self {
        let mut files: Vec<PathBuf> = std::fs::read_dir(k8s_dir())
            .expect("infra/k8s exists")
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
            .collect();
        files.sort();
        let documents = files
            .iter()
            .flat_map(|path| {
                let file = path.file_name().unwrap().to_string_lossy().into_owned();
                load_yaml(path)
                    .into_iter()
                    .map(move |document| (file.clone(), document))
            })
            .collect();
        Self { documents }
    }

    fn kinds(&self) -> Vec<&str> {
        self.documents
            .iter()
            .filter_map(|(_, document)| document["kind"].as_str())
            .collect()
    }

    fn of_kind(&self, kind: &str) -> impl Iterator<Item = &Yaml> + use<'_> {
        let kind = kind.to_owned();
        self.documents
            .iter()
            .map(|(_, document)| document)
            .filter(move |document| document["kind"].as_str() == Some(kind.as_str()))
    }

    fn only(&self, kind: &str) -> &Yaml {
        let found: Vec<&Yaml> = self.of_kind(kind).collect();
        assert_eq!(found.len(), 1, "exactly one {kind}");
        found[0]
    }

    fn named(&self, kind: &str, name: &str) -> &Yaml {
        self.of_kind(kind)
            .find(|document| document["metadata"]["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no {kind} named {name}"))
    }

    /// The Deployment labelled `app.kubernetes.io/component: <component>`.
    fn deployment(&self, component: &str) -> &Yaml {
        self.of_kind("Deployment")
            .find(|deployment| {
                deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
                    .as_str()
                    == Some(component)
            })
            .unwrap_or_else(|| panic!("no {component} Deployment"))
    }

    /// The pod spec of every workload: Deployments, Jobs and CronJobs.
    fn pods(&self) -> Vec<(String, &Yaml)> {
        self.documents
            .iter()
            .filter_map(|(file, document)| {
                let pod = match document["kind"].as_str()? {
                    "Deployment" | "Job" => &document["spec"]["template"]["spec"],
                    "CronJob" => &document["spec"]["jobTemplate"]["spec"]["template"]["spec"],
                    _ => return None,
                };
                Some((
                    format!("{file}: {}", document["metadata"]["name"].as_str()?),
                    pod,
                ))
            })
            .collect()
    }

    fn secret_value(&self, name: &str, key: &str) -> &str {
        text(
            &self.named("Secret", name)["stringData"][key],
            &format!("key {key} of Secret {name}"),
        )
    }

    fn config_value(&self, name: &str, key: &str) -> &str {
        text(
            &self.named("ConfigMap", name)["data"][key],
            &format!("key {key} of ConfigMap {name}"),
        )
    }

    /// The ConfigMap's settings file.
    fn config_file(&self) -> &str {
        let map = self.only("ConfigMap");
        self.config_value(text(&map["metadata"]["name"], "its name"), "engine.toml")
    }

    /// A container's environment as its process sees it: literal values, and Secret and
    /// ConfigMap references resolved (a missing key fails). Field references are left out.
    fn environment(&self, container: &Yaml) -> Vec<(String, String)> {
        list(&container["env"])
            .iter()
            .filter_map(|variable| {
                let name = text(&variable["name"], "an env name").to_owned();
                let from = &variable["valueFrom"];
                let value = if let Some(value) = variable["value"].as_str() {
                    value
                } else if !from["secretKeyRef"].is_badvalue() {
                    let reference = &from["secretKeyRef"];
                    self.secret_value(
                        text(&reference["name"], &name),
                        text(&reference["key"], &name),
                    )
                } else if !from["configMapKeyRef"].is_badvalue() {
                    let reference = &from["configMapKeyRef"];
                    self.config_value(
                        text(&reference["name"], &name),
                        text(&reference["key"], &name),
                    )
                } else {
                    assert!(!from["fieldRef"].is_badvalue(), "{name} has no value");
                    return None;
                };
                Some((name, value.to_owned()))
            })
            .collect()
    }

    /// The file `ENGINE_CONFIG` names, read from the ConfigMap volume mounted there.
    fn config_file_at(&self, pod: &Yaml, container: &Yaml, path: &str) -> &str {
        for mount in list(&container["volumeMounts"]) {
            let directory = text(&mount["mountPath"], "a mountPath");
            let Some(file) = path.strip_prefix(&format!("{directory}/")) else {
                continue;
            };
            let volume = volume(pod, text(&mount["name"], "a mount's volume"));
            let map = &volume["configMap"];
            let name = text(&map["name"], &format!("{path}: a ConfigMap volume"));
            let key = match list(&map["items"]) {
                [] => file,
                items => items
                    .iter()
                    .find(|item| item["path"].as_str() == Some(file))
                    .map(|item| text(&item["key"], "an item's key"))
                    .unwrap_or_else(|| panic!("{path} is not among {name}'s items")),
            };
            return self.config_value(name, key);
        }
        panic!("ENGINE_CONFIG {path} is not on a mounted volume")
    }

    /// What a container's binary would load: its `ENGINE_CONFIG` file (from the ConfigMap)
    /// overridden by its environment, validated like at start-up.
    fn container_settings(&self, pod: &Yaml, container: &Yaml, what: &str) -> Settings {
        let environment = self.environment(container);
        let file = environment
            .iter()
            .find(|(name, _)| name == "ENGINE_CONFIG")
            .map(|(_, path)| self.config_file_at(pod, container, path).to_owned())
            .unwrap_or_else(|| panic!("{what}: no ENGINE_CONFIG"));
        settings_from(file, &environment, what)
    }
}

fn assert_runs_as_non_root(pod: &Yaml, container: &Yaml, what: &str) {
    let setting = |key: &str| {
        let own = &container["securityContext"][key];
        if own.is_badvalue() {
            pod["securityContext"][key].clone()
        } else {
            own.clone()
        }
    };
    assert_eq!(setting("runAsNonRoot").as_bool(), Some(true), "{what}");
    assert_ne!(setting("runAsUser").as_i64(), Some(0), "{what}");
}

fn volume<'a>(pod: &'a Yaml, name: &str) -> &'a Yaml {
    list(&pod["volumes"])
        .iter()
        .find(|volume| volume["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no volume {name}"))
}

/// The paths where `container` mounts an emptyDir.
fn empty_dir_mounts<'a>(pod: &Yaml, container: &'a Yaml) -> Vec<&'a str> {
    list(&container["volumeMounts"])
        .iter()
        .filter(|mount| {
            !volume(pod, text(&mount["name"], "a mount's volume"))["emptyDir"].is_badvalue()
        })
        .map(|mount| text(&mount["mountPath"], "a mountPath"))
        .collect()
}

/// The number of a container port named by `port` (a name or a number), which must be
/// one the container declares.
fn container_port(container: &Yaml, port: &Yaml, what: &str) -> i64 {
    list(&container["ports"])
        .iter()
        .find(|declared| match port {
            Yaml::String(name) => declared["name"].as_str() == Some(name.as_str()),
            _ => declared["containerPort"].as_i64() == port.as_i64(),
        })
        .and_then(|declared| declared["containerPort"].as_i64())
        .unwrap_or_else(|| panic!("{what}: port {port:?} is not a container port"))
}

// --- settings -----------------------------------------------------------------------------

/// `file` with `environment` laid over it the way `Settings::load` does, validated by
/// `Settings::from_toml`.
fn settings_from(file: String, environment: &[(String, String)], what: &str) -> Settings {
    let merged =
        environment
            .iter()
            .fold(file, |toml, (variable, value)| match setting_of(variable) {
                Some((table, key)) => set_toml(&toml, &table, &key, value),
                None => toml,
            });
    Settings::from_toml(&merged).unwrap_or_else(|error| panic!("{what}: {error}"))
}

/// Where `Settings::load` puts an environment variable: (table, key), the root table being
/// `""`. `None` for a variable the settings do not read.
fn setting_of(variable: &str) -> Option<(String, String)> {
    let seed = match variable {
        "DATABASE_URL" => Some(("database", "url")),
        "AMQP_URL" => Some(("amqp", "url")),
        "REDIS_URL" => Some(("redis", "url")),
        "AWS_S3_ENDPOINT_URL" => Some(("storage", "endpoint_url")),
        "AWS_ACCESS_KEY_ID" => Some(("storage", "access_key_id")),
        "AWS_SECRET_ACCESS_KEY" => Some(("storage", "secret_access_key")),
        "AWS_S3_BUCKET_NAME" => Some(("storage", "bucket")),
        "AWS_REGION" => Some(("storage", "region")),
        _ => None,
    };
    if let Some((table, key)) = seed {
        return Some((table.to_owned(), key.to_owned()));
    }
    let path = variable.strip_prefix("ENGINE__")?.to_lowercase();
    let (table, key) = path.rsplit_once("__").unwrap_or(("", &path));
    Some((table.replace("__", "."), key.to_owned()))
}

/// `toml` with `key = value` in `[table]`: the key's line replaced if the table has one,
/// else added under the table's header (the root table: at the top), else a new table.
/// Values that read as integers or booleans stay bare, as the config crate parses them.
fn set_toml(toml: &str, table: &str, key: &str, value: &str) -> String {
    let value = if value.parse::<i64>().is_ok() || value == "true" || value == "false" {
        value.to_owned()
    } else {
        serde_json::to_string(value).unwrap()
    };
    let assignment = format!("{key} = {value}");
    let mut lines: Vec<String> = toml.lines().map(str::to_owned).collect();
    let headers: Vec<(usize, String)> = lines
        .iter()
        .enumerate()
        .filter(|(_, line)| line.trim_start().starts_with('['))
        .map(|(index, line)| (index, line.trim().to_owned()))
        .collect();
    let section = if table.is_empty() {
        Some((0, headers.first().map_or(lines.len(), |(index, _)| *index)))
    } else {
        let header = format!("[{table}]");
        headers
            .iter()
            .position(|(_, line)| *line == header)
            .map(|at| {
                let end = headers.get(at + 1).map_or(lines.len(), |(index, _)| *index);
                (headers[at].0 + 1, end)
            })
    };
    match section {
        Some((start, end)) => {
            let existing = (start..end).find(|&index| {
                lines[index].split('=').next().map(str::trim) == Some(key)
                    && lines[index].contains('=')
            });
            match existing {
                Some(index) => lines[index] = assignment,
                None => lines.insert(start, assignment),
            }
        }
        None => lines.extend([String::new(), format!("[{table}]"), assignment]),
    }
    lines.join("\n") + "\n"
}

#[test]
fn set_toml_lays_a_variable_over_the_file_like_the_environment_does() {
    let file = "log_format = \"json\"\n\n[worker]\nconcurrency = 32\n";

    let replaced = set_toml(file, "worker", "concurrency", "8");
    let added = set_toml(file, "worker", "grace_period_secs", "45");
    let root = set_toml(file, "", "app_prefix", "tl:");
    let new_table = set_toml(file, "namespaces.acme", "vhost", "acme");

    assert!(replaced.contains("concurrency = 8") && !replaced.contains("32"));
    assert!(added.contains("[worker]\ngrace_period_secs = 45\nconcurrency = 32"));
    assert!(root.starts_with("app_prefix = \"tl:\"\nlog_format"));
    assert!(new_table.ends_with("[namespaces.acme]\nvhost = \"acme\"\n"));
    assert_eq!(
        setting_of("ENGINE__NAMESPACES__ACME__WEBHOOK_SIGNING_SECRET"),
        Some(("namespaces.acme".into(), "webhook_signing_secret".into()))
    );
    assert_eq!(
        setting_of("ENGINE__LOG_FORMAT"),
        Some((String::new(), "log_format".into()))
    );
    assert_eq!(setting_of("ENGINE_CONFIG"), None);
}

// --- the Containerfile --------------------------------------------------------------------

/// A Containerfile's global `ARG` defaults and its stages, instructions joined across
/// line continuations.
struct Containerfile {
    arguments: BTreeMap<String, String>,
    stages: Vec<Stage>,
}

struct Stage {
    name: String,
    base: String,
    instructions: Vec<(String, String)>,
}

impl Containerfile {
    fn parse(text: &str) -> Self {
        let joined = text
            .lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
            .replace("\\\n", " ");
        let mut file = Self {
            arguments: BTreeMap::new(),
            stages: Vec::new(),
        };
        for line in joined
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
        {
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let keyword = keyword.to_uppercase();
            let rest = rest.trim().to_owned();
            match (keyword.as_str(), file.stages.last_mut()) {
                ("FROM", _) => {
                    let words: Vec<&str> = rest.split_whitespace().collect();
                    let name = match words.as_slice() {
                        [_, r#as, name] if r#as.eq_ignore_ascii_case("as") => *name,
                        _ => "",
                    };
                    file.stages.push(Stage {
                        name: name.to_owned(),
                        base: words[0].to_owned(),
                        instructions: Vec::new(),
                    });
                }
                ("ARG", None) => {
                    let (name, default) = rest.split_once('=').unwrap_or((&rest, ""));
                    file.arguments
                        .insert(name.to_owned(), default.trim_matches('"').to_owned());
                }
                (_, Some(stage)) => stage.instructions.push((keyword, rest)),
                (_, None) => {}
            }
        }
        file
    }

    fn stage(&self, name: &str) -> &Stage {
        self.stages
            .iter()
            .find(|stage| stage.name == name)
            .unwrap_or_else(|| panic!("no stage {name}"))
    }

    /// An image reference with `${ARG}` replaced by the argument's default.
    fn resolve(&self, image: &str) -> String {
        self.arguments
            .iter()
            .fold(image.to_owned(), |image, (name, default)| {
                image.replace(&format!("${{{name}}}"), default)
            })
    }
}

/// The first `major.minor` in `text` (an image tag such as `rust:1.95-slim`).
fn version_in(text: &str) -> (u32, u32) {
    text.split(|c: char| !c.is_ascii_digit() && c != '.')
        .find_map(|word| {
            let (major, minor) = word.split_once('.')?;
            Some((major.parse().ok()?, minor.split('.').next()?.parse().ok()?))
        })
        .unwrap_or_else(|| panic!("no version in {text}"))
}

fn workspace_rust_version() -> (u32, u32) {
    let manifest = read(&repository().join("Cargo.toml"));
    let line = manifest
        .lines()
        .find(|line| line.starts_with("rust-version"))
        .expect("the workspace's rust-version");
    version_in(line)
}

// --- YAML and files -----------------------------------------------------------------------

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn k8s_dir() -> PathBuf {
    repository().join("infra/k8s")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document in a YAML file; a file that does not parse fails the test.
fn load_yaml(path: &Path) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()))
}

fn text<'a>(node: &'a Yaml, what: &str) -> &'a str {
    node.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, found {node:?}"))
}

fn list(node: &Yaml) -> &[Yaml] {
    node.as_vec().map_or(&[], Vec::as_slice)
}

fn labels(node: &Yaml) -> BTreeMap<String, String> {
    node.as_hash()
        .map(|hash| {
            hash.iter()
                .map(|(key, value)| {
                    (
                        text(key, "a label").to_owned(),
                        text(value, "a label's value").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every label of `wanted` is in `labels` with the same value.
fn contains(labels: &BTreeMap<String, String>, wanted: &BTreeMap<String, String>) -> bool {
    !wanted.is_empty()
        && wanted
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
}

fn port_of_address(address: &str) -> i64 {
    address
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("{address} has no port"))
}

"""The trace backend's deployment files (deploy/) keep their promises, read without a Docker engine.

What is checked is what a reviewer of deploy/ would check by hand before a DevOps engineer runs
``docker compose --env-file deploy/.env -f deploy/compose.yaml up``: which ports are published
where, which containers share which network, that tail sampling keeps errors, slow traces and a
configurable percentage, that the collector tier routes by trace ID to more than one sampler, the
Cassandra TTLs in both the units Jaeger reads and the units the schema job reads, and that no
secret is committed. Each check fails when the files break the promise.
"""

from __future__ import annotations

import ipaddress
import json
import re
from urllib.parse import urlsplit

import pytest

from .deploy_files import (
    COLLECTOR,
    COLLECTOR_VAR,
    COMPOSE_VAR,
    DEPLOY,
    EXAMPLE_ENV,
    GATEWAY,
    PROXY,
    QUERY,
    SCHEMA_JOBS,
    cassandra_backends,
    collector_default,
    compose,
    doc_section,
    env_example,
    environment,
    hours,
    image_tag,
    interpolate,
    load_yaml,
    main_and_archive,
    members,
    mounts,
    networks_of,
    policies_by_type,
    proxy_config,
    published,
    sampler_services,
    seconds,
    services,
    services_mounting,
    tail_sampling,
    yaml,
)

SIX_WEEKS_HOURS = 6 * 7 * 24  # 1008
NEVER_PUBLISHED = {
    16686: "Jaeger UI / query HTTP",
    16685: "Jaeger query gRPC",
    4317: "OTLP gRPC",
    4318: "OTLP HTTP",
    9042: "Cassandra CQL",
}
REQUIRED_GROUPS = {"developers", "devops", "support"}
SECRETS = (
    "OAUTH2_PROXY_CLIENT_SECRET",
    "OAUTH2_PROXY_COOKIE_SECRET",
    "RABBITMQ_DEFAULT_PASS",
    "CASSANDRA_PASSWORD",
)


# --- files and images ------------------------------------------------------------------------------


def test_every_deploy_file_parses_and_every_mounted_file_exists() -> None:
    """Every YAML, JSON and TOML file in deploy/ parses, and every file compose mounts is there."""
    for path in sorted(DEPLOY.rglob("*.yaml")):
        assert isinstance(yaml.safe_load(path.read_text(encoding="utf-8")), dict), path
    for path in sorted(DEPLOY.rglob("*.json")):
        assert isinstance(json.loads(path.read_text(encoding="utf-8")), dict), path
    assert proxy_config()
    for name, service in services().items():
        for source in mounts(service).values():
            if source.startswith("./") and "secrets" not in source:
                assert (DEPLOY / source).is_file(), f"{name} mounts missing {source}"


def test_every_image_is_pinned_to_a_release() -> None:
    """Each service runs an image pinned to a numbered release, never a floating tag."""
    for name, service in services().items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name}: {image} has no tag"
        assert "/" not in tag, f"{name}: {image} has no tag"
        assert re.search(r"\d+\.\d+", tag), f"{name}: {image} is not pinned to a release"
        assert "latest" not in tag, f"{name}: {image}"


# Jaeger 2.x releases up to 2.13.0 were cut from the same commit as a 1.x release, and the release
# job tagged the jaeger-cassandra-schema image with that 1.x version (BRANCH=$(make echo-v1) in
# .github/workflows/ci-release.yml; `git tag --points-at` on each v2 tag). From v2.14.0 the job
# uses `make echo-version`, the v2 version, and the table below is no longer needed.
SCHEMA_IMAGE_TAG_OF_JAEGER = {
    "2.8.0": "1.71.0",
    "2.9.0": "1.72.0",
    "2.10.0": "1.73.0",
    "2.11.0": "1.74.0",
    "2.12.0": "1.75.0",
    "2.13.0": "1.76.0",
}


def _release(tag: str) -> tuple[int, ...]:
    return tuple(int(part) for part in tag.split("."))


def test_the_schema_jobs_run_the_schema_image_jaeger_published_for_its_release() -> None:
    """The schema jobs use the jaeger-cassandra-schema tag that exists for the pinned Jaeger (1.71.0 for 2.8.0)."""
    jaeger_tags = {image_tag(name) for name in (COLLECTOR, QUERY)}
    assert len(jaeger_tags) == 1, f"collector and query run different releases: {jaeger_tags}"
    (jaeger,) = jaeger_tags
    for job in SCHEMA_JOBS:
        repository = services()[job]["image"].rpartition(":")[0]
        assert repository == "jaegertracing/jaeger-cassandra-schema"
    schema_tags = {image_tag(job) for job in SCHEMA_JOBS}
    assert len(schema_tags) == 1, schema_tags
    (schema,) = schema_tags
    if _release(jaeger) >= (2, 14, 0):
        assert schema == jaeger
    else:
        assert jaeger in SCHEMA_IMAGE_TAG_OF_JAEGER, (
            f"Jaeger {jaeger}: look up the v1 tag on the same commit before pinning it"
        )
        assert schema == SCHEMA_IMAGE_TAG_OF_JAEGER[jaeger], (
            f"jaegertracing/jaeger-cassandra-schema:{schema} is not the image of Jaeger {jaeger}"
        )


# --- what is published where -----------------------------------------------------------------------


def test_only_the_proxy_publishes_a_port() -> None:
    """oauth2-proxy is the only service with a published port."""
    publishing = {name for name, service in services().items() if service.get("ports")}
    assert publishing == {PROXY}


def test_query_otlp_and_cassandra_ports_are_published_nowhere() -> None:
    """No service publishes the Jaeger query, OTLP or CQL ports, nor shares the host's network."""
    for name, service in services().items():
        assert service.get("network_mode") is None, f"{name} uses network_mode"
        for _address, host_port, container_port in published(service):
            for port in (host_port, container_port):
                assert port not in NEVER_PUBLISHED, (
                    f"{name} publishes {port} ({NEVER_PUBLISHED[port]})"
                )


def test_the_proxy_publishes_only_on_the_internal_bind_address() -> None:
    """The proxy's port binds the required JAEGER_UI_BIND_ADDRESS, never every interface."""
    (raw,) = services()[PROXY]["ports"]
    assert str(raw).startswith("${JAEGER_UI_BIND_ADDRESS:?"), "the bind address must be required"
    ((address, _host_port, container_port),) = published(services()[PROXY])
    assert address == EXAMPLE_ENV["JAEGER_UI_BIND_ADDRESS"]
    https_port = int(proxy_config()["https_address"].rpartition(":")[2])
    assert container_port == https_port
    with pytest.raises(LookupError):
        interpolate(
            str(raw), {k: v for k, v in EXAMPLE_ENV.items() if k != "JAEGER_UI_BIND_ADDRESS"}
        )
    assert "JAEGER_UI_BIND_ADDRESS" in env_example()
    assert env_example()["JAEGER_UI_BIND_ADDRESS"] == "", "no committed default bind address"


# --- networks --------------------------------------------------------------------------------------


def test_every_network_but_edge_is_internal() -> None:
    """Every network except the proxy's `edge` is internal, and only the proxy is on `edge`."""
    networks = compose()["networks"]
    for name, network in networks.items():
        if name == "edge":
            continue
        assert (network or {}).get("internal") is True, f"network {name} is not internal"
    assert members("edge") == {PROXY}
    used = set().union(*(networks_of(service) for service in services().values()))
    assert used <= set(networks), f"undeclared networks: {used - set(networks)}"


def test_the_ui_network_holds_only_the_proxy_and_jaeger_query() -> None:
    """Jaeger's UI sits on a network that only the proxy shares with it."""
    assert members("ui") == {PROXY, QUERY}
    shared = networks_of(services()[PROXY]) & networks_of(services()[QUERY])
    assert shared == {"ui"}


def test_jaeger_query_listens_only_on_its_ui_address() -> None:
    """The UI and query API bind jaeger-query's fixed address on `ui`, inside the `ui` subnet."""
    query = load_yaml("jaeger/query.yaml")["extensions"]["jaeger_query"]
    for listener in ("http", "grpc"):
        host, _, port = query[listener]["endpoint"].rpartition(":")
        assert host == "${env:JAEGER_QUERY_UI_ADDRESS}", f"{listener} binds {host}"
        assert port in ("16686", "16685")
    service = services()[QUERY]
    configured = environment(service)["JAEGER_QUERY_UI_ADDRESS"]
    assigned = service["networks"]["ui"]["ipv4_address"]
    assert configured == assigned
    address = ipaddress.ip_address(interpolate(assigned, {}))
    (subnet,) = compose()["networks"]["ui"]["ipam"]["config"]
    assert address in ipaddress.ip_network(interpolate(subnet["subnet"], {}))
    example = env_example()
    assert ipaddress.ip_address(example["JAEGER_QUERY_UI_ADDRESS"]) in ipaddress.ip_network(
        example["JAEGER_UI_SUBNET"]
    )


def test_the_proxy_forwards_to_jaeger_query_over_the_ui_network() -> None:
    """The proxy's only upstream is jaeger-query's UI port, reached over `ui`."""
    (upstream,) = proxy_config()["upstreams"]
    url = urlsplit(upstream)
    assert (url.hostname, url.port) == (QUERY, 16686)


def test_cassandra_is_reachable_only_from_the_storage_network() -> None:
    """Cassandra shares a network only with the schema jobs and Jaeger."""
    assert networks_of(services()["cassandra"]) == {"storage"}
    assert members("storage") == {"cassandra", *SCHEMA_JOBS, COLLECTOR, QUERY}


def test_services_reach_rabbitmq_and_the_gateway_on_the_apps_network() -> None:
    """Services join the named `otel-apps` network to reach RabbitMQ and the gateway's OTLP ports."""
    apps = compose()["networks"]["apps"]
    assert apps["name"] == "otel-apps"
    assert members("apps") == {"rabbitmq", GATEWAY}
    protocols = load_yaml("otel/gateway.yaml")["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")


# --- the collector tier ----------------------------------------------------------------------------


def test_the_gateway_routes_spans_by_trace_id_to_more_than_one_sampler() -> None:
    """The gateway's traces go through `loadbalancing` keyed by traceID to two or more samplers."""
    gateway = load_yaml("otel/gateway.yaml")
    balancer = gateway["exporters"]["loadbalancing"]
    assert balancer["routing_key"] == "traceID"
    hostnames = balancer["resolver"]["static"]["hostnames"]
    assert len(hostnames) > 1
    assert gateway["service"]["pipelines"]["traces"]["exporters"] == ["loadbalancing"]
    assert "tail_sampling" not in gateway.get("processors", {})
    samplers = set(sampler_services())
    gateway_networks = networks_of(services()[GATEWAY])
    for hostname in hostnames:
        host, _, port = hostname.rpartition(":")
        assert host in samplers, f"{hostname} is not a sampling collector"
        assert port == "4317"
        assert networks_of(services()[host]) & gateway_networks, f"{host} is unreachable"
    assert set(services_mounting("otel/gateway.yaml")) == {GATEWAY}


def test_every_sampler_runs_the_same_tail_sampling_configuration() -> None:
    """The sampler services differ only in name: same image, config, environment and networks."""
    samplers = [services()[name] for name in sampler_services()]
    assert len(samplers) > 1
    first = samplers[0]
    for other in samplers[1:]:
        for key in ("image", "command", "volumes", "environment", "networks"):
            assert other[key] == first[key], key
    pipeline = load_yaml("otel/sampler.yaml")["service"]["pipelines"]["traces"]
    assert "tail_sampling" in pipeline["processors"]


def test_tail_sampling_keeps_errors_slow_traces_and_a_percentage_of_the_rest() -> None:
    """The samplers keep every trace with an ERROR span, every slow trace, and a percentage."""
    policies = policies_by_type()
    assert set(policies) == {"status_code", "latency", "probabilistic"}
    assert policies["status_code"]["status_code"]["status_codes"] == ["ERROR"]
    threshold = collector_default(policies["latency"]["latency"]["threshold_ms"])
    assert isinstance(threshold, int)
    assert threshold > 0
    percentage = collector_default(
        policies["probabilistic"]["probabilistic"]["sampling_percentage"]
    )
    assert isinstance(percentage, (int, float))
    assert 0 < percentage < 100


def test_the_sampling_percentage_and_latency_threshold_come_from_the_env_file() -> None:
    """TAIL_SAMPLING_PERCENTAGE and the latency threshold are read from the environment."""
    policies = policies_by_type()
    settings = {
        "TAIL_SAMPLING_PERCENTAGE": policies["probabilistic"]["probabilistic"][
            "sampling_percentage"
        ],
        "TAIL_SAMPLING_LATENCY_THRESHOLD_MS": policies["latency"]["latency"]["threshold_ms"],
        "TAIL_SAMPLING_DECISION_WAIT": tail_sampling()["decision_wait"],
    }
    for variable, setting in settings.items():
        match = COLLECTOR_VAR.fullmatch(str(setting))
        assert match, f"{setting} does not read a variable"
        assert match.group(1) == variable, f"{setting} does not read {variable}"
        assert variable in env_example(), f"{variable} is not in .env.example"
        for name in sampler_services():
            passed = environment(services()[name]).get(variable, "")
            assert passed.startswith(f"${{{variable}:-"), f"{name} does not pass {variable}"


# The OpenTelemetry SDK's BatchSpanProcessor exports every OTEL_BSP_SCHEDULE_DELAY (5000 ms by
# default, opentelemetry-specification sdk-environment-variables.md); the span that ends last in
# a hop can wait for the next export, hence two of them.
SDK_EXPORT_DELAY_S = 5.0


def test_decision_wait_covers_a_whole_mes_hop_in_link_mode() -> None:
    """A sampler waits for a hop's handler, two SDK exports and the gateway batch before deciding."""
    wait = seconds(str(collector_default(tail_sampling()["decision_wait"])))
    gateway_batch = seconds(str(load_yaml("otel/gateway.yaml")["processors"]["batch"]["timeout"]))
    handler_budget = wait - 2 * SDK_EXPORT_DELAY_S - gateway_batch
    assert handler_budget >= 30, f"only {handler_budget:.0f} s left for the MES handler"
    assert wait <= 600, "longer waits hold whole production cycles in memory: use link mode"


def test_num_traces_holds_every_trace_until_its_decision_with_headroom() -> None:
    """num_traces is at least twice the traces that arrive during one decision_wait."""
    config = tail_sampling()
    wait = seconds(str(collector_default(config["decision_wait"])))
    held = collector_default(config["num_traces"])
    expected = collector_default(config["expected_new_traces_per_sec"])
    assert held >= 2 * expected * wait


def test_a_kept_trace_is_remembered_and_a_dropped_one_is_forgotten_at_once() -> None:
    """Late spans of kept traces stay kept; a late ERROR span of a dropped trace is decided anew."""
    config = tail_sampling()
    cache = config["decision_cache"]
    assert cache["sampled_cache_size"] >= collector_default(config["num_traces"])
    # 0 disables the cache, which leaves the dropped trace in the map until num_traces evicts it;
    # 1 is the smallest LRU the processor accepts and makes it forget each drop at the next one.
    assert cache["non_sampled_cache_size"] == 1


def test_the_error_policy_is_unconditional_and_decides_each_trace() -> None:
    """Any ERROR span keeps its trace (in link mode: its hop), whatever the other policies say."""
    policies = tail_sampling()["policies"]
    errors = [p for p in policies if p["type"] == "status_code"]
    assert len(errors) == 1
    assert errors[0]["status_code"]["status_codes"] == ["ERROR"]
    # a drop/and/composite/not policy could veto or narrow it
    assert {p["type"] for p in policies} <= {"status_code", "latency", "probabilistic"}


def test_the_docs_make_link_mode_the_default_for_the_mes_hop() -> None:
    """docs/deploy.md's example service for MES consumes in link mode, so its hop is a trace of its own."""
    section = doc_section("deploy.md", "Point the services at it")
    block = section.split("```yaml", 1)[1].split("```", 1)[0]
    example = yaml.safe_load(block)
    mes = example["services"]["mes"]["environment"]
    assert mes["OTEL_PYTHON_RABBITMQ_CONSUMER_CONTEXT"] == "link"
    assert mes["OTEL_PYTHON_RABBITMQ_BAGGAGE_ATTRIBUTES"] == "order.id"


def test_samplers_decide_before_batching_and_send_to_jaeger() -> None:
    """Samplers run memory_limiter, then tail_sampling, then batch, and export to jaeger-collector."""
    sampler = load_yaml("otel/sampler.yaml")
    pipeline = sampler["service"]["pipelines"]["traces"]
    processors = pipeline["processors"]
    assert processors[0] == "memory_limiter"
    assert processors.index("tail_sampling") < processors.index("batch")
    (exporter,) = pipeline["exporters"]
    host, _, port = sampler["exporters"][exporter]["endpoint"].rpartition(":")
    assert host == COLLECTOR
    receiver = load_yaml("jaeger/collector.yaml")["receivers"]["otlp"]["protocols"]["grpc"]
    assert receiver["endpoint"].endswith(f":{port}")
    for name in sampler_services():
        assert networks_of(services()[name]) & networks_of(services()[COLLECTOR])


# --- Jaeger and Cassandra --------------------------------------------------------------------------


def test_traces_live_six_weeks_written_as_hours_for_jaeger_and_seconds_for_the_schema_job() -> None:
    """The main keyspace's TTL is six weeks: 1008h in Jaeger's config, 3628800 s in the schema job."""
    main, _archive = main_and_archive()
    (collector_backend,) = cassandra_backends("jaeger/collector.yaml").values()
    for backend in (main, collector_backend):
        assert hours(backend["schema"]["trace_ttl"]) == SIX_WEEKS_HOURS
    job = environment(services()["cassandra-schema"])
    assert job["KEYSPACE"] == main["schema"]["keyspace"]
    assert int(job["TRACE_TTL"]) == SIX_WEEKS_HOURS * 3600


def test_the_archive_keyspace_keeps_traces_longer() -> None:
    """The archive keyspace has its own, longer TTL, the same in Jaeger's config and its schema job."""
    main, archive = main_and_archive()
    archive_hours = hours(archive["schema"]["trace_ttl"])
    assert archive_hours > hours(main["schema"]["trace_ttl"])
    job = environment(services()["cassandra-schema-archive"])
    assert job["KEYSPACE"] == archive["schema"]["keyspace"] != main["schema"]["keyspace"]
    assert int(job["TRACE_TTL"]) == archive_hours * 3600


def test_jaeger_uses_the_keyspaces_the_schema_jobs_create() -> None:
    """Jaeger never creates the schema; it starts after the jobs and reads their datacenter."""
    datacenter = environment(services()["cassandra"])["CASSANDRA_DC"]
    for relative in ("jaeger/collector.yaml", "jaeger/query.yaml"):
        for name, backend in cassandra_backends(relative).items():
            assert backend["schema"]["create"] is False, f"{relative}:{name}"
            assert backend["schema"]["datacenter"] == datacenter
            connection = backend["connection"]
            assert connection["servers"] == ["cassandra:9042"]
            assert connection["local_dc"] == datacenter
            assert connection["tls"]["insecure"] is True, "plain CQL on the internal network"
    for job in SCHEMA_JOBS:
        env = environment(services()[job])
        assert env["MODE"] == "prod"
        assert env["DATACENTER"] == datacenter
    assert services()[COLLECTOR]["depends_on"]["cassandra-schema"] == {
        "condition": "service_completed_successfully"
    }
    for job in SCHEMA_JOBS:
        assert services()[QUERY]["depends_on"][job]["condition"] == (
            "service_completed_successfully"
        )
    main, _archive = main_and_archive()
    (collector_backend,) = cassandra_backends("jaeger/collector.yaml").values()
    assert collector_backend == main, "collector and query must use the same main keyspace"


def test_the_collector_writes_and_the_query_reads_with_archive() -> None:
    """jaeger-collector only writes (no UI), jaeger-query serves the UI with archive storage."""
    collector = load_yaml("jaeger/collector.yaml")
    assert "jaeger_query" not in collector["extensions"]
    assert "jaeger_query" not in collector["service"]["extensions"]
    exporter = collector["exporters"]["jaeger_storage_exporter"]
    assert exporter["trace_storage"] in collector["extensions"]["jaeger_storage"]["backends"]
    query = load_yaml("jaeger/query.yaml")
    assert "jaeger_query" in query["service"]["extensions"]
    assert "otlp" not in query.get("receivers", {}), "the query role receives no spans"
    ui = json.loads((DEPLOY / "jaeger" / "ui-config.json").read_text(encoding="utf-8"))
    assert ui["archiveEnabled"] is True
    mounted = mounts(services()[QUERY])
    assert mounted[query["extensions"]["jaeger_query"]["ui"]["config_file"]] == (
        "./jaeger/ui-config.json"
    )


# --- the proxy -------------------------------------------------------------------------------------


def test_the_proxy_admits_only_developers_devops_and_support() -> None:
    """oauth2-proxy signs users in over OIDC and requires one of the three groups."""
    config = proxy_config()
    assert config["provider"] == "oidc"
    assert set(config["allowed_groups"]) == REQUIRED_GROUPS
    assert config["oidc_groups_claim"]
    proxy_env = environment(services()[PROXY])
    for overridable in ("ALLOWED_GROUPS", "EMAIL_DOMAINS", "UPSTREAMS", "SKIP_AUTH_ROUTES"):
        assert f"OAUTH2_PROXY_{overridable}" not in proxy_env
    for bypass in (
        "skip_auth_routes",
        "skip_auth_regex",
        "skip_jwt_bearer_tokens",
        "htpasswd_file",
    ):
        assert bypass not in config, f"{bypass} would let requests around the group check"


def test_the_proxy_serves_https_with_secure_cookies() -> None:
    """The proxy's reachable listener is HTTPS with secure cookies; plain HTTP stays on loopback."""
    config = proxy_config()
    assert config["https_address"].startswith("0.0.0.0:")
    assert config["http_address"].startswith("127.0.0.1:")
    assert config["cookie_secure"] is True
    proxy_mounts = mounts(services()[PROXY])
    for key in ("tls_cert_file", "tls_key_file"):
        directory = config[key].rpartition("/")[0]
        assert directory in proxy_mounts, f"{config[key]} is not in a mounted directory"
        assert proxy_mounts[directory] == "./secrets/tls", (
            "TLS material comes from JAEGER_UI_TLS_DIR"
        )


# --- secrets and settings --------------------------------------------------------------------------


def test_secrets_come_from_the_env_file_and_none_is_committed() -> None:
    """Secrets are read from the env file (required ones fail `up` when unset) and never committed."""
    compose_text = (DEPLOY / "compose.yaml").read_text(encoding="utf-8")
    example = env_example()
    for secret in SECRETS:
        assert example.get(secret) == "", f".env.example must leave {secret} empty"
        references = re.findall(r"\$\{" + secret + r"(:?[-?])?", compose_text)
        assert references, f"compose.yaml does not read {secret}"
    for required in (
        "OAUTH2_PROXY_CLIENT_SECRET",
        "OAUTH2_PROXY_COOKIE_SECRET",
        "RABBITMQ_DEFAULT_PASS",
    ):
        assert f"${{{required}:?" in compose_text, f"{required} must be required"
    config = proxy_config()
    for key in ("client_secret", "cookie_secret", "client_id"):
        assert key not in config, f"{key} belongs in the env file"
    for relative in ("jaeger/collector.yaml", "jaeger/query.yaml"):
        for backend in cassandra_backends(relative).values():
            basic = backend["connection"]["auth"]["basic"]
            assert basic["password"] == "${env:CASSANDRA_PASSWORD}"
    ignored = (DEPLOY / ".gitignore").read_text(encoding="utf-8").split()
    assert ".env" in ignored
    assert "secrets/" in ignored


def test_every_variable_the_stack_reads_is_documented_in_the_env_example() -> None:
    """Each variable compose.yaml or a mounted config reads is listed in .env.example."""
    compose_text = (DEPLOY / "compose.yaml").read_text(encoding="utf-8")
    # $$ is a literal $ for the container, not a variable of the env file
    read = set(COMPOSE_VAR.findall(compose_text.replace("$$", "")))
    names = {name for name, _operator, _argument in read}
    for relative in ("otel/sampler.yaml", "jaeger/collector.yaml", "jaeger/query.yaml"):
        text = (DEPLOY / relative).read_text(encoding="utf-8")
        for variable, _default in COLLECTOR_VAR.findall(text):
            for name in services_mounting(relative):
                assert variable in environment(services()[name]), (
                    f"{name} runs {relative}, which reads {variable}, but is not given it"
                )
    assert names <= set(env_example()), f"undocumented: {sorted(names - set(env_example()))}"
    # the example env file, filled in, is enough to render the compose file
    filled = {**{name: value for name, value in env_example().items() if value}, **EXAMPLE_ENV}
    interpolate(compose_text, filled)

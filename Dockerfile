# fleetmeter: one image for the agent (`fleetmeter run ID`, the default) and the API
# (`fleetmeter-api`, see docker-compose.yml). Multi-stage: a Rust build stage (host binaries
# and the wasm32-wasip2 plugins) and a small non-root runtime stage.
#
# Builds with BuildKit and with the classic builder alike (no `# syntax=` line, which BuildKit
# would pull from a registry, and no RUN --mount: the crates downloaded by the dependency layer
# stay in that layer of the build stage, never in the runtime image). scripts/compose-check
# builds it for real; agent/tests/deploy.rs checks that every path copied from the build
# context exists, every workspace member's manifest reaches the dependency layer, and the stub
# layout of that layer resolves with --locked.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
RUN rustup target add wasm32-wasip2
WORKDIR /src

# 1. Dependencies: manifests, lockfiles and empty crate sources only, so that this layer (the
#    long part of the build) is rebuilt only when a manifest or a lockfile changes.
COPY Cargo.toml Cargo.lock ./
COPY agent/Cargo.toml agent/
COPY testkit/Cargo.toml testkit/
COPY api/Cargo.toml api/
COPY wire/Cargo.toml wire/
COPY serve/Cargo.toml serve/
COPY sensor-sdk/Cargo.toml sensor-sdk/build.rs sensor-sdk/
COPY wit wit
COPY plugins/Cargo.toml plugins/Cargo.lock plugins/
COPY plugins/random-temperature/Cargo.toml plugins/random-temperature/
COPY plugins/mean/Cargo.toml plugins/mean/
COPY plugins/median/Cargo.toml plugins/median/
COPY plugins/trimmed-mean/Cargo.toml plugins/trimmed-mean/
COPY plugins/thermal-zone/Cargo.toml plugins/thermal-zone/
COPY plugins/modbus-tcp/Cargo.toml plugins/modbus-tcp/
COPY plugins/http-json/Cargo.toml plugins/http-json/
COPY plugins/prometheus/Cargo.toml plugins/prometheus/
COPY plugins/file/Cargo.toml plugins/file/
COPY plugins/fixtures/misbehaving-sensor/Cargo.toml plugins/fixtures/misbehaving-sensor/
COPY plugins/fixtures/nondeterministic-aggregator/Cargo.toml plugins/fixtures/nondeterministic-aggregator/
COPY plugins/fixtures/future-contract/Cargo.toml plugins/fixtures/future-contract/
COPY plugins/fixtures/raw-sensor/Cargo.toml plugins/fixtures/raw-sensor/
COPY plugins/fixtures/misbehaving-aggregator/Cargo.toml plugins/fixtures/misbehaving-aggregator/
COPY plugins/fixtures/stuck-describe/Cargo.toml plugins/fixtures/stuck-describe/
COPY plugins/fixtures/contract-0-1-mean/Cargo.toml plugins/fixtures/contract-0-1-mean/
COPY plugins/fixtures/raw-aggregator/Cargo.toml plugins/fixtures/raw-aggregator/
COPY scripts/stub-sources scripts/
RUN scripts/stub-sources \
 && cargo build --release --locked -p fleetmeter -p fleetmeter-api \
 && cargo build --release --locked --target wasm32-wasip2 --manifest-path plugins/Cargo.toml

# 2. The sources. Cargo decides by modification time: touch them so that none is taken for
#    older than the stub build above. The binaries lose their debug info (the release
#    profile's line tables: 132 MB -> 29 MB for the agent) and keep their symbols.
COPY . .
RUN find agent api wire serve sensor-sdk plugins -name '*.rs' -not -path '*/target/*' -exec touch {} + \
 && cargo build --release --locked -p fleetmeter -p fleetmeter-api \
 && scripts/build-plugins --locked \
 && mkdir -p /out \
 && for b in fleetmeter fleetmeter-api; do strip --strip-debug -o "/out/$b" "target/release/$b"; done
# Marks this stage's last image (untagged, GBs of build output) so that scripts/compose-check can
# remove the ones older builds left; here, after the long steps, it costs them no cache.
LABEL io.fleetmeter.stage=build

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# openssl: the compose file's `secrets` service makes the API's TLS certificates with it
# (deploy/compose/api-tls.yml turns TLS on). ca-certificates: the system's roots, which an
# agent trusts for an https:// API without `[publish] tls_ca`.
RUN apt-get update \
 && apt-get install -y --no-install-recommends openssl ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent fleetmeter \
 && mkdir -p /var/cache/fleetmeter \
 && chown fleetmeter:fleetmeter /var/cache/fleetmeter
COPY --from=build /out/fleetmeter /out/fleetmeter-api /usr/local/bin/
COPY --from=build /src/plugins/dist/*.wasm /opt/fleetmeter/plugins/
COPY agent.toml /etc/fleetmeter/agent.toml
ENV FLEETMETER_CONFIG=/etc/fleetmeter/agent.toml \
    FLEETMETER_PLUGIN_DIR=/opt/fleetmeter/plugins \
    XDG_CACHE_HOME=/var/cache
USER fleetmeter
WORKDIR /opt/fleetmeter
# Warm the compile cache: an agent then loads its plugins in about a millisecond instead of
# compiling them. (A host whose CPU differs from the build host's compiles them once, then
# uses its own cache entry.)
RUN for plugin in /opt/fleetmeter/plugins/*.wasm; do fleetmeter plugin inspect "$plugin" >/dev/null; done
# 9464: the agent's /metrics and /healthz. 4000: fleetmeter-api.
EXPOSE 9464 4000
ENTRYPOINT ["fleetmeter", "run"]
# The device id is the command: `docker run fleetmeter 1`, or `command: ["1"]` in compose.
CMD []

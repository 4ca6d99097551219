# syntax=docker/dockerfile:1
# The renderfarm broker (HTTP API, scheduler, MongoDB or embedded store).
# Build from the repository root: docker build -t renderfarm-broker .

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# Caches keep the registry and build output between builds; the binary is
# copied out of the cache so the next stage can take it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p renderfarm --bin renderfarm \
    && cp target/release/renderfarm /usr/local/bin/renderfarm

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin renderfarm \
    && mkdir -p /farm \
    && chown renderfarm:renderfarm /farm
COPY --from=build /usr/local/bin/renderfarm /usr/local/bin/renderfarm
USER renderfarm
# /farm is shared with the workers at the same path: blend files, and the
# default outputs under /farm/renders/<render id>/.
ENV RENDERFARM_BIND=0.0.0.0:8080 \
    RENDERFARM_DATA_DIR=/farm
EXPOSE 8080
# Ready = the store answers and its schema is current.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/ready >/dev/null || exit 1
ENTRYPOINT ["renderfarm"]
CMD ["serve"]

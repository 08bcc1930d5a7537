# syntax=docker/dockerfile:1
#
# The jobctl server image: jobctl-server (entrypoint) and the jobctl CLI, on
# distroless (glibc, no shell, no package manager), as a numeric non-root user.
#
#   docker build -t jobctl-server:dev .
#   docker run --rm -p 50051:50051 -p 9090:9090 \
#     -e JOBCTL_REDIS_URL=redis://host.docker.internal:6379 jobctl-server:dev
#
# The proto crate compiles the .proto files with protox (pure Rust), so the
# build needs no protoc; the Redis client is built without TLS, so no OpenSSL.

ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-slim-bookworm AS build
ARG RUST_VERSION
# Use the image's toolchain as is: rust-toolchain.toml would also fetch
# rustfmt and clippy, which a release build does not need.
ENV RUSTUP_TOOLCHAIN=${RUST_VERSION} \
    CARGO_TERM_COLOR=never
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the target dir between builds; the
# binaries are copied out of the cached target dir inside the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
        -p jobctl-server --bin jobctl-server \
        -p jobctl-client --bin jobctl \
    && install -D -m 0755 target/release/jobctl-server /out/jobctl-server \
    && install -D -m 0755 target/release/jobctl /out/jobctl

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/jobctl-server /out/jobctl /usr/local/bin/
# distroless's "nonroot" user, by number so that Kubernetes' runAsNonRoot
# can verify it.
USER 65532:65532
# gRPC (and gRPC-Web), then HTTP: /metrics, /healthz, /readyz.
EXPOSE 50051 9090
ENV JOBCTL_LISTEN=0.0.0.0:50051 \
    JOBCTL_HTTP_LISTEN=0.0.0.0:9090
ENTRYPOINT ["/usr/local/bin/jobctl-server"]

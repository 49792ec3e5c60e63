# The flotilla image: one static-ish binary on a distroless base. Used by deploy/ for both the
# scheduler (`flotilla server`) and the executors (`flotilla executor`).
#
#   docker build -t ghcr.io/<you>/flotilla:0.1.0 .
#
# Code generation uses protox, so no protoc is needed; ring (TLS to the Kubernetes API) needs
# the C compiler the Rust image ships.
FROM rust:1.90-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p flotilla

FROM gcr.io/distroless/cc-debian12:nonroot
# On PATH: the manifests in deploy/ run `command: ["flotilla"]`.
COPY --from=build /src/target/release/flotilla /usr/local/bin/flotilla
USER nonroot
ENTRYPOINT ["/usr/local/bin/flotilla"]

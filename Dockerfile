# Multi-stage build: `docker build --target server` or `--target operator`.
FROM rust:1.90-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --workspace \
 && cp target/release/parley-server target/release/parley-operator /usr/local/bin/

FROM gcr.io/distroless/cc-debian12:nonroot AS server
COPY --from=build /usr/local/bin/parley-server /usr/local/bin/parley-server
USER 65532:65532
EXPOSE 5060/udp 5060/tcp 5061/tcp 8080/tcp
ENTRYPOINT ["/usr/local/bin/parley-server"]

FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /usr/local/bin/parley-operator /usr/local/bin/parley-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/parley-operator"]

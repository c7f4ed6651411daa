# Multi-stage build: `docker build --target server`, `--target operator` or `--target directory`.
FROM rust:1.90-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --workspace \
 && cp target/release/parley-server target/release/parley-operator target/release/parley-directory /usr/local/bin/

FROM gcr.io/distroless/cc-debian12:nonroot AS server
COPY --from=build /usr/local/bin/parley-server /usr/local/bin/parley-server
USER 65532:65532
EXPOSE 5060/udp 5060/tcp 5061/tcp 8080/tcp
ENTRYPOINT ["/usr/local/bin/parley-server"]

FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /usr/local/bin/parley-operator /usr/local/bin/parley-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/parley-operator"]

# The managed directory (spec.directory.managed): Debian's OpenLDAP slapd under the shell-free
# parley-directory entrypoint, which writes cn=config and the base entries on the volume at the
# first start and then execs slapd. Runs as 65532; the package's own config and database go, the
# operator's ConfigMap and Secret provide them.
FROM debian:bookworm-slim AS directory
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slapd \
 && rm -rf /var/lib/apt/lists/* /etc/ldap/slapd.d /var/lib/ldap/* \
 && mkdir -p /run/slapd && chown 65532:65532 /var/lib/ldap /run/slapd
COPY --from=build /usr/local/bin/parley-directory /usr/local/bin/parley-directory
USER 65532:65532
EXPOSE 1636/tcp
ENTRYPOINT ["/usr/local/bin/parley-directory"]

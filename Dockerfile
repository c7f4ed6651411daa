# Parley's three images from one file (BuildKit: Docker 23+, or DOCKER_BUILDKIT=1 on 20.10):
#
#   docker build --target server    -t REGISTRY/parley-server:VERSION    --build-arg VERSION=VERSION .
#   docker build --target operator  -t REGISTRY/parley-operator:VERSION  --build-arg VERSION=VERSION .
#   docker build --target directory -t REGISTRY/parley-directory:VERSION --build-arg VERSION=VERSION .
#
# `make images` runs these (scripts/build-images.sh). Where the binaries come from, BINARIES:
#   builder  (default) compiled here once, in the `build` stage (release, --locked); the three
#            targets share that stage, so Rust is compiled once for all of them
#   host     taken from host-bin/parley-{server,operator,directory} in the build context, binaries
#            already built on the host (CI builds them for its tests; BuildKit then skips `build`),
#            and the web client from host-bin/web (`make web`; BuildKit then skips `web-builder`)
#
# Base images are pinned by digest; each is an ARG so a machine without a registry can name
# local ones (scripts/seed-base-images.sh seeds them from Debian). All images run as 65532:65532.

ARG RUST_IMAGE=docker.io/library/rust:1.90-bookworm@sha256:3914072ca0c3b8aad871db9169a651ccfce30cf58303e5d6f2db16d1d8a7e58f
ARG DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim@sha256:7b140f374b289a7c2befc338f42ebe6441b7ea838a042bbd5acbfca6ec875818
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f
ARG BINARIES=builder

# ---- build: the workspace's release binaries, dependencies in their own layer ----
FROM ${RUST_IMAGE} AS build
WORKDIR /src
# The manifests and stub sources first: the dependencies compile in a layer that only a change of
# Cargo.toml or Cargo.lock invalidates.
COPY Cargo.toml Cargo.lock ./
COPY config/Cargo.toml config/
COPY sip/Cargo.toml sip/
COPY server/Cargo.toml server/
COPY operator/Cargo.toml operator/
COPY bench/Cargo.toml bench/
COPY directory-image/Cargo.toml directory-image/
RUN for c in config sip server operator; do mkdir -p $c/src && : > $c/src/lib.rs; done \
 && for c in server operator bench directory-image; do mkdir -p $c/src && echo 'fn main() {}' > $c/src/main.rs; done \
 && cargo build --release --locked -p parley-server -p parley-operator -p parley-directory \
 && rm -rf config/src sip/src server/src operator/src bench/src directory-image/src
COPY . .
# The real sources may be older than the stubs' build: touched, so cargo rebuilds the workspace's crates.
RUN find config sip server operator bench directory-image -name '*.rs' -exec touch {} + \
 && cargo build --release --locked -p parley-server -p parley-operator -p parley-directory \
 && mkdir -p /out \
 && for b in parley-server parley-operator parley-directory; do objcopy --strip-debug target/release/$b /out/$b; done

FROM scratch AS binaries-builder
COPY --from=build /out/ /usr/local/bin/

FROM scratch AS binaries-host
COPY host-bin/parley-server host-bin/parley-operator host-bin/parley-directory /usr/local/bin/

FROM binaries-${BINARIES} AS binaries

# ---- the web client's static files (web/dist): bundled here with Debian's Node and npm from
# web/package-lock.json, or (BINARIES=host) as `make web` built them on the host ----
FROM ${DEBIAN_IMAGE} AS web-builder
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs npm ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src/web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY web/src src/
RUN npm run build && mkdir -p /out && cp dist/* /out/

FROM scratch AS web-files-builder
COPY --from=web-builder /out/ /

FROM scratch AS web-files-host
COPY host-bin/web/ /

FROM web-files-${BINARIES} AS web-files

# ---- slapd: Debian's OpenLDAP server, its mdb backend and schemas, with the libraries they need
# (those of libc6 and libgcc-s1 the runtime base has); /var/lib/ldap and /run/slapd for 65532 ----
FROM ${DEBIAN_IMAGE} AS slapd
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slapd \
 && rm -rf /var/lib/apt/lists/* \
 && libdir=/usr/lib/$(basename "$(dirname "$(ldd /usr/sbin/slapd | awk '$1 == "libc.so.6" {print $3}')")") \
 && mkdir -p /out/usr/sbin /out/usr/lib/ldap "/out$libdir" /out/etc/ldap/schema \
 && cp /usr/sbin/slapd /out/usr/sbin/ \
 && cp -a /usr/lib/ldap/back_mdb* /out/usr/lib/ldap/ \
 && cp /etc/ldap/schema/*.ldif /out/etc/ldap/schema/ \
 && for lib in $(ldd /usr/sbin/slapd /usr/lib/ldap/back_mdb.so | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u); do \
      case $(dpkg -S "$lib" 2>/dev/null || dpkg -S "$(readlink -f "$lib")" 2>/dev/null) in \
        libc6:*|libgcc-s1:*) ;; \
        *) cp -L "$lib" "/out$libdir/" ;; \
      esac; \
    done \
 && mkdir -p /out/var/lib/ldap /out/run/slapd \
 && chown 65532:65532 /out/var/lib/ldap /out/run/slapd

# ---- runtime images ----
FROM ${RUNTIME_IMAGE} AS runtime
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.version=${VERSION} \
      org.opencontainers.image.revision=${REVISION} \
      org.opencontainers.image.source="https://example.invalid/parley" \
      org.opencontainers.image.url="https://example.invalid/parley" \
      org.opencontainers.image.vendor="Parley" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 65532:65532

FROM runtime AS server
LABEL org.opencontainers.image.title="parley-server" \
      org.opencontainers.image.description="Parley's SIP server (instant messaging and presence): Home Server and Front-End"
COPY --from=binaries /usr/local/bin/parley-server /usr/local/bin/parley-server
# The web client, for `web.root = "/usr/share/parley/web"` with `listen.web`.
COPY --from=web-files / /usr/share/parley/web/
EXPOSE 5060/udp 5060/tcp 5061/tcp 5062/tcp 8080/tcp
ENTRYPOINT ["/usr/local/bin/parley-server"]

FROM runtime AS operator
LABEL org.opencontainers.image.title="parley-operator" \
      org.opencontainers.image.description="Kubernetes operator for Parley: CommunicationsDomain, HomeServer and FrontEnd"
COPY --from=binaries /usr/local/bin/parley-operator /usr/local/bin/parley-operator
EXPOSE 8080/tcp
ENTRYPOINT ["/usr/local/bin/parley-operator"]

# The managed directory (spec.directory.managed): Debian's slapd under the shell-free
# parley-directory entrypoint, which writes cn=config and the base entries on the volume at the
# first start and then execs slapd. The operator's ConfigMap and Secrets provide the config, seed
# and certificate (operator/src/build/directory.rs); /var/lib/ldap is the volume.
FROM runtime AS directory
LABEL org.opencontainers.image.title="parley-directory" \
      org.opencontainers.image.description="Parley's managed directory: Debian's OpenLDAP slapd, non-root, shell-free"
COPY --from=slapd /out/ /
COPY --from=binaries /usr/local/bin/parley-directory /usr/local/bin/parley-directory
EXPOSE 1636/tcp
ENTRYPOINT ["/usr/local/bin/parley-directory"]

# syntax=docker/dockerfile:1
# ferry's container image: the `ferry` binary, the shared libraries it loads, CA certificates and a passwd entry for
# uid/gid 65532; no shell, no package manager. Why it is built this way: docs/adr/0025-container-image.md.
#
#   docker build -t ferry .     compiles ferry in the Rust builder stage below (what a CI with network access runs)
#   scripts/image build         here, with no registry: packages the binary of `cargo build --release` instead
#                               (--build-arg FERRY_BINARY=prebuilt, a build context holding only that binary)
#
# Runs as 65532:65532 with ENTRYPOINT ["ferry"] and, unless told otherwise, `run --config
# /etc/ferry/config/ferry.yaml` (where the Helm chart mounts its ConfigMap). Writes nothing outside the volumes
# mounted for it, so the root filesystem can be read-only; the working directory /var/lib/ferry is meant to be a
# volume for the file checkpoint store.

# The builder and the runtime libraries come from the same Debian release, so the binary finds at run time the
# libssl and glibc it was linked against.
ARG DEBIAN_RELEASE=bookworm
ARG RUST_VERSION=1.95
# Where the binary comes from: `builder` (compiled below) or `prebuilt` (the file `ferry` at the root of the build
# context, from `cargo build --release` on a machine whose glibc is not newer than the runtime's).
ARG FERRY_BINARY=builder

FROM docker.io/library/rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
# protoc and the well-known .proto files for etcd-client; headers for openssl-sys and libz-sys; make and perl for
# librdkafka's and jemalloc's own builds, and g++: librdkafka's configure refuses to run without a C++ compiler
# (its `make libs` builds the C++ wrapper too).
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        protobuf-compiler libprotobuf-dev libssl-dev zlib1g-dev pkg-config make perl g++ \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# .git is not in the build context: `ferry version` shows the commit passed here
# (docker build --build-arg FERRY_GIT_COMMIT=$(git rev-parse --short=12 HEAD) .), or "unknown".
ARG FERRY_GIT_COMMIT=unknown
ENV FERRY_GIT_COMMIT=${FERRY_GIT_COMMIT}
# The cache mounts keep the crate downloads and the build between runs on one builder; the binary leaves through
# /out because the target directory is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin ferry \
    && mkdir -p /out \
    && cp target/release/ferry /out/ferry

FROM scratch AS prebuilt
COPY ferry /out/ferry

# The stage the binary is taken from; BuildKit and buildah build only the one FERRY_BINARY names.
FROM ${FERRY_BINARY} AS binary

# The final image's whole file tree, assembled under /rootfs from Debian packages.
FROM docker.io/library/debian:${DEBIAN_RELEASE}-slim AS rootfs
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g binutils \
    && rm -rf /var/lib/apt/lists/*
COPY --from=binary /out/ferry /usr/local/bin/ferry
RUN set -eu; \
    mkdir -p /rootfs/usr/local/bin /rootfs/etc/ssl/certs /rootfs/usr/lib/ssl /rootfs/usr/share/doc; \
    # The release profile keeps line tables (about 90 MB of the binary); the symbols stay, so a panic's backtrace
    # still names its functions.
    strip --strip-debug -o /rootfs/usr/local/bin/ferry /usr/local/bin/ferry; \
    # Exactly the libraries the dynamic loader resolves for this binary, at the paths it resolves them from (the
    # loader itself included). A library missing here, or a binary built against a newer glibc, stops the build.
    if ldd /usr/local/bin/ferry | grep "not found"; then \
        echo "ferry needs libraries this Debian release lacks (above); was it built on a newer system?" >&2; \
        exit 1; \
    fi; \
    for lib in $(ldd /usr/local/bin/ferry | grep -oE '/[^ ]+'); do \
        cp --parents -L "$lib" /rootfs/; \
        # The licence of every Debian package shipped in the image travels with it.
        pkg=$(dpkg -S "$lib" 2>/dev/null || dpkg -S "$(readlink -f "$lib")"); \
        pkg=${pkg%%:*}; \
        mkdir -p "/rootfs/usr/share/doc/$pkg"; \
        cp "/usr/share/doc/$pkg/copyright" "/rootfs/usr/share/doc/$pkg/"; \
    done; \
    cp /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/; \
    mkdir -p /rootfs/usr/share/doc/ca-certificates; \
    cp /usr/share/doc/ca-certificates/copyright /rootfs/usr/share/doc/ca-certificates/; \
    # OpenSSL (librdkafka) looks in its own directory; Debian points it at /etc/ssl/certs the same way.
    ln -s /etc/ssl/certs /rootfs/usr/lib/ssl/certs; \
    ln -s /etc/ssl/certs/ca-certificates.crt /rootfs/usr/lib/ssl/cert.pem; \
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/var/lib/ferry:/sbin/nologin\n' \
        > /rootfs/etc/passwd; \
    printf 'root:x:0:\nnonroot:x:65532:\n' > /rootfs/etc/group; \
    # Without this file glibc asks DNS before /etc/hosts, which would hide Kubernetes' hostAliases.
    printf 'passwd: files\ngroup: files\nhosts: files dns\n' > /rootfs/etc/nsswitch.conf; \
    mkdir -p /rootfs/tmp /rootfs/var/lib/ferry /rootfs/etc/ferry/config; \
    chmod 1777 /rootfs/tmp; \
    chown 65532:65532 /rootfs/var/lib/ferry; \
    chmod 0750 /rootfs/var/lib/ferry; \
    # The tree must run on its own: its loader, its libraries, nothing from this stage.
    chroot /rootfs /usr/local/bin/ferry --version

FROM scratch
COPY --from=rootfs /rootfs/ /
# No shell resolves `ferry` for the runtime: PATH says where it is. SSL_CERT_FILE is read by OpenSSL (Kafka TLS)
# and by the etcd client's rustls alike.
ENV PATH=/usr/local/bin \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
WORKDIR /var/lib/ferry
# /metrics, /healthz, /readyz (http.listen's default port).
EXPOSE 9464
# ferry drains, writes its final checkpoint and exits 0 on SIGTERM; it runs as PID 1 and starts no child process,
# so no init is needed to forward signals or reap zombies.
STOPSIGNAL SIGTERM
ENTRYPOINT ["ferry"]
CMD ["run", "--config", "/etc/ferry/config/ferry.yaml"]

# syntax=docker/dockerfile:1
# Switchyard's two images, one target each:
#
#   docker build --target operator   --build-arg GIT_COMMIT=$(git rev-parse --short HEAD) -t REPO/operator:TAG .
#   docker build --target node-agent --build-arg GIT_COMMIT=$(git rev-parse --short HEAD) -t REPO/node-agent:TAG .
#
# The root filesystems are made from Debian packages by images/rootfs (the
# package list is images/packages), the script .ci/images uses to build the
# same images without a container engine; binary paths and users are the ones
# there and in config/. The Rust build and the packages use one Debian release,
# so the binaries find the glibc they were linked against.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
# clang and the uapi/libbpf headers compile the agent's eBPF programs (dataplane/build.rs).
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang libbpf-dev linux-libc-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The commit --version prints (the build context carries no .git).
ARG GIT_COMMIT=unknown
ENV SWITCHYARD_GIT_COMMIT=${GIT_COMMIT}
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p switchyard-agent --bin node-agent \
      -p switchyard-operator --bin switchyard-operator \
 && install -D -m 0755 -t /out target/release/node-agent target/release/switchyard-operator

FROM debian:${DEBIAN_RELEASE}-slim AS packages
RUN apt-get update
COPY images/ /images/

FROM packages AS operator-rootfs
RUN /images/rootfs operator /rootfs

FROM packages AS agent-rootfs
RUN /images/rootfs node-agent /rootfs

# The operator: glibc and the binary, non-root (config/operator: runAsUser 65532).
FROM scratch AS operator
COPY --from=operator-rootfs /rootfs/ /
COPY --from=build /out/switchyard-operator /usr/local/bin/switchyard-operator
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/switchyard-operator"]

# The agent: the tools its modes run and the binary, root with the
# capabilities config/agent grants. iptables is the nft flavour; for hosts
# that keep legacy rules, derive an image:
#   FROM REPO/node-agent:TAG
#   RUN ["update-alternatives", "--set", "iptables", "/usr/sbin/iptables-legacy"]
#   RUN ["update-alternatives", "--set", "ip6tables", "/usr/sbin/ip6tables-legacy"]
FROM scratch AS node-agent
COPY --from=agent-rootfs /rootfs/ /
COPY --from=build /out/node-agent /usr/local/bin/node-agent
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
USER 0:0
ENTRYPOINT ["/usr/local/bin/node-agent"]

#!/usr/bin/env bash
# Builds Kubernetes' own programs for the tests from the pinned release (go.mod here)
# into a cache keyed by version, once:
#
#   target/k8s/<version>/bin/{etcd,kube-apiserver,kube-controller-manager,kube-proxy,kubectl}
#   target/k8s/bin -> <version>/bin        (what the tests and the demo use)
#
# Skips what is already built. Usage: e2e/k8s/build.sh [program ...] (default: all).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
version=$(cd "$here" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
etcd_version=$(cd "$here/etcd" && go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
out=$target/k8s/$version/bin
mkdir -p "$out"
programs=("$@")
[ ${#programs[@]} -gt 0 ] || programs=(etcd kube-apiserver kube-controller-manager kube-proxy kubectl)

minor=${version#v1.}; minor=${minor%%.*}
# What Kubernetes' hack/lib/version.sh stamps, so the server reports its real version.
k8s_ldflags="-s -w \
 -X k8s.io/component-base/version.gitVersion=$version \
 -X k8s.io/component-base/version.gitMajor=1 \
 -X k8s.io/component-base/version.gitMinor=$minor \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=$version \
 -X k8s.io/client-go/pkg/version.gitMajor=1 \
 -X k8s.io/client-go/pkg/version.gitMinor=$minor"

for program in "${programs[@]}"; do
  if [ -x "$out/$program" ]; then
    echo "k8s: $program cached"
    continue
  fi
  start=$(date +%s)
  case $program in
    etcd)
      (cd "$here/etcd" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out/etcd.tmp" go.etcd.io/etcd/server/v3) ;;
    kube-apiserver|kube-controller-manager|kube-proxy|kubectl)
      (cd "$here" && CGO_ENABLED=0 go build -trimpath -ldflags "$k8s_ldflags" -o "$out/$program.tmp" "k8s.io/kubernetes/cmd/$program") ;;
    *) echo "k8s: unknown program $program" >&2; exit 2 ;;
  esac
  mv "$out/$program.tmp" "$out/$program"
  echo "k8s: built $program $([ "$program" = etcd ] && echo "$etcd_version" || echo "$version") in $(( $(date +%s) - start ))s"
done
ln -sfn "$version/bin" "$target/k8s/bin"

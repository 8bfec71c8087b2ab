#!/usr/bin/env bash
# Applies or deletes config/default on the cluster of the current kubectl context.
#
#   hack/deploy.sh apply    CRD, RBAC and the manager, running the image IMG
#   hack/deploy.sh delete   every CustomerLoop first, then what apply applied
#
# Environment: KUBECTL (default kubectl), IMG (default customerloop:dev).
#
# The image is set in a throwaway overlay rather than by editing
# config/manager/kustomization.yaml, so a deploy leaves the checkout clean.
set -euo pipefail

kubectl=${KUBECTL:-kubectl}
root=$(cd "$(dirname "$0")/.." && pwd)

apply() {
  local img=${IMG:-customerloop:dev} name tag="" digest="" last
  name=$img
  case $img in
    *@*) name=${img%@*}; digest=${img#*@} ;;
    *) last=${img##*/}
       case $last in *:*) name=${img%:*}; tag=${img##*:} ;; *) tag=latest ;; esac ;;
  esac
  overlay=$(mktemp -d)
  trap 'rm -rf "$overlay"' EXIT
  # kustomize refuses absolute paths to a base.
  {
    echo "resources:"
    echo "  - $(realpath --relative-to="$overlay" "$root/config/default")"
    echo "images:"
    echo "  - name: customerloop"
    echo "    newName: $name"
    if [ -n "$digest" ]; then echo "    digest: $digest"; else echo "    newTag: \"$tag\""; fi
  } > "$overlay/kustomization.yaml"
  "$kubectl" apply --server-side -k "$overlay"
}

delete() {
  # Loops go while the manager still runs, so their finalizers apply deletionPolicy;
  # deleting the CRD first would leave them, and the CRD, stuck terminating.
  if "$kubectl" get crd customerloops.loops.customerloop.dev >/dev/null 2>&1; then
    "$kubectl" delete customerloops --all --all-namespaces --wait --timeout=5m || {
      echo "undeploy: loops are still terminating; is the manager running? A loop whose" >&2
      echo "finalizer cannot run can be released by hand (README, 'Running on a cluster')." >&2
      exit 1
    }
  fi
  "$kubectl" delete -k "$root/config/default" --ignore-not-found
}

case ${1:-} in
  apply) apply ;;
  delete) delete ;;
  *) echo "usage: $0 apply|delete" >&2; exit 2 ;;
esac

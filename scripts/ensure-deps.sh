#!/usr/bin/env bash
# Installs what Stepwise needs when it is missing: from Debian hiredis headers, redis-server,
# redis-tools (redis-cli, redis-benchmark), pkg-config, curl, stunnel4 and openssl (the TLS
# recipe of docs/SECURITY.md and its test), spin and gcc (the protocol model, docs/MODEL.md),
# for the gateway's browser test chromium and chromium-driver; prometheus (the server and
# promtool: the scrape and alert-rule tests), tmux (the `stepwise top` test) and systemd
# (systemd-analyze verify of the units); from PyPI selenium and schemathesis (the gateway's API
# checks), kubernetes-validate, pyyaml and check-jsonschema (offline schema checks of
# deploy/kubernetes and deploy/compose.yaml).
# Idempotent; needs root to install.
set -euo pipefail
missing=()
pkg-config --exists hiredis 2>/dev/null || missing+=(libhiredis-dev)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
command -v redis-benchmark >/dev/null || missing+=(redis-tools)
command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || missing+=(stunnel4)
command -v openssl >/dev/null || missing+=(openssl)
command -v spin >/dev/null || missing+=(spin)
command -v gcc >/dev/null || missing+=(gcc)
command -v curl >/dev/null || missing+=(curl)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v prometheus >/dev/null || missing+=(prometheus)
command -v promtool >/dev/null || missing+=(prometheus)
command -v tmux >/dev/null || missing+=(tmux)
command -v systemd-analyze >/dev/null || missing+=(systemd)
python_missing=()
python3 -c 'import selenium' 2>/dev/null || python_missing+=(selenium)
command -v schemathesis >/dev/null || python_missing+=(schemathesis)
python3 -c 'import kubernetes_validate, yaml' 2>/dev/null || python_missing+=(kubernetes-validate pyyaml)
command -v check-jsonschema >/dev/null || python_missing+=(check-jsonschema)
if [ ${#python_missing[@]} -gt 0 ]; then
  echo "installing ${python_missing[*]} with pip" >&2
  python3 -m pip install -q "${python_missing[@]}" >&2
fi
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "error: missing packages: ${missing[*]}; run as root or: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing ${missing[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
# Debian starts a system redis-server on 6379 after install; Stepwise's scripts start their own.
# prometheus.service may start too (on :9090); the tests start their own prometheus on a free port.
# stunnel4 ships a disabled stunnel4.service; nothing starts until a configuration is given.

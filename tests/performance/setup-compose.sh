#!/usr/bin/env bash
# Start ScyllaDB, Redis and MinIO with Docker Compose and wait until they answer.
set -euo pipefail
cd "$(dirname "$0")/../.."
docker info >/dev/null 2>&1 || { echo "Docker is not running (without Docker: make services-up)"; exit 1; }
docker compose up -d scylla redis minio
echo "waiting for ScyllaDB (30-60 s) ..."
for _ in $(seq 1 60); do
  if docker exec tchat-scylla-performance cqlsh -e "DESCRIBE KEYSPACES" >/dev/null 2>&1; then
    docker exec tchat-scylla-performance cqlsh -e \
      "CREATE KEYSPACE IF NOT EXISTS tchat WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}"
    echo "ScyllaDB ready on localhost:9042 (keyspace tchat); Redis on 6379; MinIO S3 on 8333"
    exit 0
  fi
  sleep 2
done
echo "ScyllaDB did not become ready; see: docker logs tchat-scylla-performance"; exit 1

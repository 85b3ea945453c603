#!/usr/bin/env bash
# The guide's legacy script: one ScyllaDB container for the chat suite (T070).
set -euo pipefail
NAME=tchat-scylla-performance
docker info >/dev/null 2>&1 || { echo "Docker is not running (without Docker: tchat services up cassandra)"; exit 1; }
if ! docker ps -a --format '{{.Names}}' | grep -qx "$NAME"; then
  docker run -d --name "$NAME" -p 9042:9042 scylladb/scylla:5.2 --smp 1 --memory 1G
else
  docker start "$NAME" >/dev/null
fi
echo "waiting for ScyllaDB (30-60 s) ..."
for _ in $(seq 1 60); do
  if docker exec "$NAME" cqlsh -e "DESCRIBE KEYSPACES" >/dev/null 2>&1; then
    docker exec "$NAME" cqlsh -e \
      "CREATE KEYSPACE IF NOT EXISTS tchat WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}"
    echo "ScyllaDB ready on localhost:9042, keyspace tchat (tables are created by tchat on start)"
    exit 0
  fi
  sleep 2
done
echo "ScyllaDB did not become ready; see: docker logs $NAME"; exit 1

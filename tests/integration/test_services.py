"""Each development service is the real engine: round trips through its own protocol."""

from __future__ import annotations

import time
import uuid

import boto3
import redis
from cassandra.cluster import Cluster

from tchat.devservices.seaweedfs import ACCESS_KEY, PORT, SECRET_KEY


def test_cql_round_trip_with_ttl(services_answering: dict[str, str]) -> None:
    cluster = Cluster(["127.0.0.1"], port=9042)
    session = cluster.connect()
    try:
        ks = f"it_{uuid.uuid4().hex[:8]}"
        session.execute(
            f"CREATE KEYSPACE {ks} WITH replication = "
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        )
        session.execute(f"CREATE TABLE {ks}.t (k int PRIMARY KEY, v text)")
        session.execute(f"INSERT INTO {ks}.t (k, v) VALUES (1, 'kept') USING TTL 600")
        session.execute(f"INSERT INTO {ks}.t (k, v) VALUES (2, 'gone') USING TTL 1")
        row = session.execute(f"SELECT v, TTL(v) AS ttl FROM {ks}.t WHERE k = 1").one()
        assert row.v == "kept" and 540 <= row.ttl <= 600
        deadline = time.monotonic() + 30  # TTL 1 s: gone soon, however busy the box
        while session.execute(f"SELECT v FROM {ks}.t WHERE k = 2").one() is not None:
            assert time.monotonic() < deadline, "a TTL 1 row outlived its TTL by 30 s"
            time.sleep(0.25)
        session.execute(f"DROP KEYSPACE {ks}")
    finally:
        cluster.shutdown()


def test_redis_pubsub_round_trip(services_answering: dict[str, str]) -> None:
    client = redis.Redis(host="127.0.0.1", port=6379)
    pubsub = client.pubsub()
    channel = f"it-{uuid.uuid4().hex}"
    pubsub.subscribe(channel)
    assert pubsub.get_message(timeout=10)["type"] == "subscribe"  # type: ignore[index]
    client.publish(channel, b"hello")
    message = pubsub.get_message(timeout=10)
    assert message is not None and message["data"] == b"hello"
    pubsub.close()
    client.close()


def test_s3_put_get_list_delete(services_answering: dict[str, str]) -> None:
    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{PORT}",
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )
    bucket = f"it-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="a/b.txt", Body=b"payload", ContentType="text/plain")
    got = s3.get_object(Bucket=bucket, Key="a/b.txt")
    assert got["Body"].read() == b"payload"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="a/")["Contents"]]
    assert keys == ["a/b.txt"]
    s3.delete_object(Bucket=bucket, Key="a/b.txt")
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    s3.delete_bucket(Bucket=bucket)

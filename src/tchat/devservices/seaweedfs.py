"""SeaweedFS `weed mini` (master, volume, filer and S3 in one process) on 127.0.0.1:8333.

A real S3-compatible server that implements bucket lifecycle rules (and stamps an
`Expiration.Days` rule as a TTL on new objects). Built once from the Go module
proxy: `go install` refuses modules whose go.mod has replace directives, so we
download the module and `go build` inside the module cache, as its main module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

from tchat.devservices.base import CACHE_DIR, Service, ServiceError

MODULE = "github.com/seaweedfs/seaweedfs"
VERSION = "v0.0.0-20261109003541-7506e5f91cd6"
PORT = 8333
ACCESS_KEY = "tchat"
SECRET_KEY = "tchat-secret"


class SeaweedService(Service):
    name = "seaweedfs"
    port = PORT
    ready_timeout_s = 90.0

    @property
    def binary(self) -> str:
        return str(CACHE_DIR / "bin" / f"weed-{VERSION}")

    def installed(self) -> bool:
        return os.path.exists(self.binary)

    def install(self) -> None:
        if self.installed():
            return
        if not shutil.which("go"):
            raise ServiceError("seaweedfs: `go` not found; it is needed once to build `weed`")
        found = subprocess.run(["go", "version"], capture_output=True, text=True).stdout
        match = re.search(r"go1\.(\d+)", found)
        if not match or int(match.group(1)) < 26:
            raise ServiceError(
                f"seaweedfs: needs Go >= 1.26 to build (its go.mod), found {found.strip()!r}"
            )
        self.log(f"building weed {VERSION} with go (once; cached in {CACHE_DIR}/bin) …")
        info = subprocess.run(
            ["go", "mod", "download", "-json", f"{MODULE}@{VERSION}"],
            check=True,
            capture_output=True,
            text=True,
        )
        src = json.loads(info.stdout)["Dir"]
        os.makedirs(os.path.dirname(self.binary), exist_ok=True)
        tmp = self.binary + ".tmp"
        subprocess.run(["go", "build", "-o", tmp, "./weed"], cwd=src, check=True)
        os.replace(tmp, self.binary)

    def command(self) -> list[str]:
        if not self.installed():
            raise ServiceError(f"seaweedfs: {self.binary} missing (run `tchat services up`)")
        root = self.data_dir.resolve()
        config = root / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "tchat",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        (root / "data").mkdir(parents=True, exist_ok=True)
        return [
            self.binary,
            "mini",
            f"-dir={root / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={PORT}",
            f"-s3.config={config}",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
        ]

    def probe(self) -> str:
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{PORT}",
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}),
        )
        buckets = client.list_buckets()["Buckets"]
        return f"SeaweedFS S3 on 127.0.0.1:{PORT} ({len(buckets)} buckets)"

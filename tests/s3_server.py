"""A real S3-compatible server on loopback for tests: moto's server mode (its own HTTP
server, the S3 REST API), stopped when the `with` block ends, also when the test fails.

    with s3({"bucket/prefix/a.jpg": data}) as srv:
        srv.endpoint; srv.storage_options   # for input.storage_options
"""
import socket
from contextlib import contextmanager


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def s3(objects):
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    import logging
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        for bucket in sorted({k.split("/", 1)[0] for k in objects}):
            client.create_bucket(Bucket=bucket)
        for key, data in objects.items():
            bucket, name = key.split("/", 1)
            client.put_object(Bucket=bucket, Key=name, Body=data)

        class Server:
            pass
        srv = Server()
        srv.endpoint = endpoint
        srv.storage_options = {"endpoint_url": endpoint, "key": "testing",
                               "secret": "testing-secret-value",
                               "client_kwargs": {"region_name": "us-east-1"}}
        srv.client = client
        yield srv
    finally:
        try:
            _empty(client)
        finally:
            server.stop()


def _empty(client) -> None:
    """Every bucket emptied and removed: moto's servers in one process share their state, so
    what a test wrote would otherwise be there for the next test's server."""
    for b in client.list_buckets().get("Buckets", []):
        name = b["Name"]
        for u in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
            client.abort_multipart_upload(Bucket=name, Key=u["Key"], UploadId=u["UploadId"])
        while True:   # a page at a time, until none is left (versions included)
            page = client.list_object_versions(Bucket=name)
            found = page.get("Versions", []) + page.get("DeleteMarkers", [])
            if not found:
                break
            client.delete_objects(Bucket=name, Delete={"Objects": [
                {"Key": v["Key"], "VersionId": v["VersionId"]} for v in found[:1000]]})
        client.delete_bucket(Bucket=name)


@contextmanager
def s3_checked(objects):
    """An S3 API server that checks credentials (SigV4 signatures, IAM policies): moto's
    server in a process of its own, since moto turns its checks on for a whole process
    (INITIAL_NO_AUTH_ACTION_COUNT: the first N requests go unchecked, every later one is
    checked) and moto servers in one process share their state. Its first three requests make
    an IAM user allowed s3:* and its access key; everything after that, the buckets and
    `objects` included, is signed with that key. srv.storage_options carry it; srv.wrong the
    same key with a wrong secret. Stopped (the process terminated, killed if it lingers) when
    the `with` block ends, also when the test fails."""
    import json
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    import boto3

    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3"))
    try:
        deadline = time.monotonic() + 60
        while True:   # /moto-api/ is not an AWS action: it does not use up the three
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto's server did not start on {endpoint} (exit "
                                       f"{proc.poll()})") from None
                time.sleep(0.1)
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="unchecked", aws_secret_access_key="unchecked")
        iam.create_user(UserName="job")
        key = iam.create_access_key(UserName="job")["AccessKey"]
        iam.put_user_policy(UserName="job", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id=key["AccessKeyId"],
                              aws_secret_access_key=key["SecretAccessKey"])
        for bucket in sorted({k.split("/", 1)[0] for k in objects}):
            client.create_bucket(Bucket=bucket)
        for k, data in objects.items():
            bucket, name = k.split("/", 1)
            client.put_object(Bucket=bucket, Key=name, Body=data)

        class Server:
            pass
        srv = Server()
        srv.endpoint, srv.client = endpoint, client
        srv.storage_options = {"endpoint_url": endpoint, "key": key["AccessKeyId"],
                               "secret": key["SecretAccessKey"],
                               "client_kwargs": {"region_name": "us-east-1"}}
        srv.wrong = dict(srv.storage_options, secret="wrong-" + key["SecretAccessKey"][6:])
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

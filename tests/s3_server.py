"""A real S3-compatible server on loopback for tests: moto's server mode (its own HTTP
server, the S3 REST API), stopped when the `with` block ends, also when the test fails.

    with s3({"bucket/prefix/a.jpg": data}) as srv:
        srv.endpoint; srv.storage_options   # for input.storage_options
"""
from contextlib import contextmanager
from types import SimpleNamespace

from loopback import fill, free_port, server_process


@contextmanager
def s3(objects):
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    import logging
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        fill(objects, lambda b: client.create_bucket(Bucket=b),
             lambda b, k, data: client.put_object(Bucket=b, Key=k, Body=data))
        srv = SimpleNamespace(endpoint=endpoint)
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
    import sys

    import boto3

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    # /moto-api/ is not an AWS action: waiting for it does not use up the three
    with server_process([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                         str(port)], endpoint + "/moto-api/", "moto's server", seconds=60,
                        env=dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")):
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
        fill(objects, lambda b: client.create_bucket(Bucket=b),
             lambda b, k, data: client.put_object(Bucket=b, Key=k, Body=data))
        srv = SimpleNamespace(endpoint=endpoint, client=client)
        srv.storage_options = {"endpoint_url": endpoint, "key": key["AccessKeyId"],
                               "secret": key["SecretAccessKey"],
                               "client_kwargs": {"region_name": "us-east-1"}}
        srv.wrong = dict(srv.storage_options, secret="wrong-" + key["SecretAccessKey"][6:])
        yield srv

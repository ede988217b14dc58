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

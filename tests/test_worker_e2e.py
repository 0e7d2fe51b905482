"""End to end: a producer enqueues, `python -m daemon worker` runs the job, the progress row in
Supabase (PostgreSQL behind our PostgREST layer) reaches completed, the output is in S3, and the
signed callback arrives at a receiver that verifies it with `standardwebhooks`."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

from tests.fixtures_daemon import ROOT, sample_jpeg, wait_until

pytestmark = pytest.mark.slow

NODE_PRODUCER = ROOT / "scripts" / "node" / "enqueue.mjs"


def inspect_spec(file_server, job_id: str, count: int = 3, **extra) -> dict:
    inputs = [
        {"url": file_server.add(f"{job_id}-{i}.jpg", sample_jpeg(i)), "name": f"photo_{i}.jpg"}
        for i in range(count)
    ]
    return {"spec_version": 1, "job_id": job_id, "kind": "inspect", "inputs": inputs, "params": {}, **extra}


def run_node_producer(env: dict, spec: dict) -> dict:
    done = subprocess.run(
        ["node", str(NODE_PRODUCER), "-"],
        input=json.dumps(spec),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_node_producer_to_completed_row_s3_object_and_verified_callback(
    full_env, file_server, start_worker, jobs_rows, s3_bucket, webhook_receiver
):
    # Given a spec sent by the Node producer (as the Next.js API does), with a callback URL
    spec = inspect_spec(
        file_server,
        "e2e-node-1",
        callback_url=f"{webhook_receiver.url}/hooks/jobs",
        metadata={"project_id": "p-42"},
    )
    assert run_node_producer(full_env, spec) == {"job_id": "e2e-node-1", "queue": "default"}

    # When a worker runs (customers' own output prefixes allowed under deliveries/)
    worker = start_worker({**full_env, "LOG_LEVEL": "debug", "S3_OUTPUT_PREFIXES": "deliveries/"})

    # Then the row reaches completed with the output listed
    row = wait_until(
        lambda: next((r for r in jobs_rows(id="e2e-node-1") if r["status"] == "completed"), None),
        timeout=60,
        message=lambda: f"rows: {jobs_rows(id='e2e-node-1')}",
    )
    assert row["progress"] == 100 and row["attempt"] == 1 and row["kind"] == "inspect"
    manifest = row["outputs"]["manifest.json"]
    server, bucket = s3_bucket
    assert manifest["uri"] == f"s3://{bucket}/jobs/e2e-node-1/manifest.json"
    # And the object is in S3, with the content the row describes
    body = server.client().get_object(Bucket=bucket, Key="jobs/e2e-node-1/manifest.json")["Body"].read()
    assert len(body) == manifest["size"]
    assert [f["name"] for f in json.loads(body)["files"]] == ["photo_0.jpg", "photo_1.jpg", "photo_2.jpg"]
    # And the receiver verified a started and a completed callback
    completed = webhook_receiver.wait_for(lambda e: e.type == "job.completed", timeout=30)
    assert completed.json["data"]["outputs"]["manifest.json"]["uri"] == manifest["uri"]
    assert completed.json["data"]["metadata"] == {"project_id": "p-42"}
    assert completed.path == "/hooks/jobs"
    assert any(e.type == "job.started" for e in webhook_receiver.events)
    assert webhook_receiver.rejected == []
    # And no secret reached the log
    logs = worker.logs()
    assert full_env["SUPABASE_SERVICE_ROLE_KEY"] not in logs and full_env["CALLBACK_SECRET"] not in logs
    # And a job naming its own output prefix has its outputs there, and only there
    spec = inspect_spec(file_server, "e2e-node-2", count=1, output={"s3_prefix": "deliveries/p-42"})
    run_node_producer(full_env, spec)
    row = wait_until(
        lambda: next((r for r in jobs_rows(id="e2e-node-2") if r["status"] == "completed"), None),
        timeout=60,
        message=lambda: f"rows: {jobs_rows(id='e2e-node-2')}",
    )
    assert row["outputs"]["manifest.json"]["uri"] == f"s3://{bucket}/deliveries/p-42/e2e-node-2/manifest.json"
    listed = server.client().list_objects_v2(Bucket=bucket, Prefix="deliveries/")["Contents"]
    assert [o["Key"] for o in listed] == ["deliveries/p-42/e2e-node-2/manifest.json"]
    assert "Contents" not in server.client().list_objects_v2(Bucket=bucket, Prefix="jobs/e2e-node-2/")


def test_rq_cli_enqueue_runs_the_job_under_its_kinds_time_limit(
    daemon_env, file_server, start_worker, tmp_path
):
    # Given a job enqueued by hand with `rq enqueue` and the JSON serializer
    spec = inspect_spec(file_server, "e2e-rq-cli", count=2)
    rq = Path(sys.executable).parent / "rq"
    subprocess.run(
        [
            str(rq),
            "enqueue",
            "-u",
            daemon_env["REDIS_URL"],
            "-S",
            "json",
            "-q",
            "default",
            "--job-id",
            "e2e-rq-cli",
            "daemon.entry.run_job",
            ":" + json.dumps(spec),
        ],
        check=True,
        env=daemon_env,
        cwd=ROOT,
        capture_output=True,
    )
    # When the worker runs it
    worker = start_worker(daemon_env)
    row_file = tmp_path / "state" / "jobs" / "e2e-rq-cli.json"
    wait_until(
        lambda: row_file.exists() and json.loads(row_file.read_text())["status"] == "completed",
        timeout=60,
        message=lambda: worker.logs()[-3000:],
    )
    # Then the output is in the local store
    assert (tmp_path / "outputs" / "e2e-rq-cli" / "manifest.json").is_file()
    # And the job ran under its kind's time limit, not rq's 180 s default the CLI left on it
    assert "job e2e-rq-cli: timeout 1800s (kind inspect)" in worker.logs()


def test_daemon_cli_enqueue_validates_and_runs(daemon_env, file_server, start_worker, tmp_path):
    # Given our CLI, which validates before anything reaches Redis
    bad = subprocess.run(
        [sys.executable, "-m", "daemon", "enqueue", json.dumps({"job_id": "x/../y"})],
        env=daemon_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 65 and "job refused" in bad.stderr
    spec = inspect_spec(file_server, "e2e-cli", count=2, priority="high")
    done = subprocess.run(
        [sys.executable, "-m", "daemon", "enqueue", json.dumps(spec)],
        env=daemon_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(done.stdout)["queue"] == "high"
    # When a worker runs
    start_worker(daemon_env)
    row_file = tmp_path / "state" / "jobs" / "e2e-cli.json"
    wait_until(
        lambda: row_file.exists() and json.loads(row_file.read_text())["status"] == "completed", timeout=60
    )
    # Then rq recorded the job as finished with our result: the outputs the row lists, the manifest's
    # bytes among them
    job = Job.fetch("e2e-cli", connection=Redis.from_url(daemon_env["REDIS_URL"]), serializer=JSONSerializer)
    assert wait_until(lambda: job.get_status(refresh=True) == "finished", timeout=30)
    result = job.return_value(refresh=True)
    row = json.loads(row_file.read_text())
    assert (result["status"], result["job_id"], result["attempt"]) == ("completed", "e2e-cli", 1)
    assert result["outputs"] == row["outputs"] and "manifest.json" in result["outputs"]
    manifest = (tmp_path / "outputs" / "e2e-cli" / "manifest.json").read_bytes()
    listed = result["outputs"]["manifest.json"]
    assert (listed["size"], listed["sha256"]) == (len(manifest), hashlib.sha256(manifest).hexdigest())
    assert json.loads(manifest)["job_id"] == "e2e-cli"
    # And `python -m daemon status` shows the job's ledger entry and row
    status = subprocess.run(
        [sys.executable, "-m", "daemon", "status", "e2e-cli"],
        env=daemon_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    shown = json.loads(status.stdout)
    assert shown["ledger"]["attempt"] == 1 and shown["ledger"]["status"] == "completed"
    assert shown["row"]["status"] == "completed" and shown["row"]["outputs"] == result["outputs"]


def test_s3_key_inputs_and_a_presigned_put_output_on_seaweedfs(
    daemon_env, seaweed_s3, start_worker, tmp_path, webhook_receiver
):
    # Given an input uploaded to the daemon's bucket and a presigned PUT URL for the output, on an S3
    # server that checks signatures (SeaweedFS)
    bucket = seaweed_s3.create_bucket(f"e2e-{int(time.time() * 1000) % 10**9}")
    client = seaweed_s3.client()
    client.put_object(Bucket=bucket, Key="uploads/u1/IMG_1.jpg", Body=sample_jpeg(5))
    put_url = client.generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": "deliveries/scan-7/manifest.json"}, ExpiresIn=600
    )
    env = {
        **daemon_env,
        "S3_BUCKET": bucket,
        "S3_ENDPOINT_URL": seaweed_s3.endpoint_url,
        "AWS_ACCESS_KEY_ID": seaweed_s3.access_key,
        "AWS_SECRET_ACCESS_KEY": seaweed_s3.secret_key,
        "AWS_REGION": seaweed_s3.region,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    spec = {
        "spec_version": 1,
        "job_id": "e2e-presigned",
        "kind": "inspect",
        "inputs": [{"s3_key": "uploads/u1/IMG_1.jpg", "name": "IMG_1.jpg"}],
        "output": {"presigned_put": {"manifest.json": put_url}},
        "callback_url": webhook_receiver.url,
    }
    subprocess.run(
        [sys.executable, "-m", "daemon", "enqueue", json.dumps(spec)], env=env, cwd=ROOT, check=True
    )
    # When the worker runs it
    worker = start_worker(env)
    completed = webhook_receiver.wait_for(lambda e: e.type == "job.completed", timeout=60)
    # Then the manifest went to the presigned URL, and describes the S3 input
    body = client.get_object(Bucket=bucket, Key="deliveries/scan-7/manifest.json")["Body"].read()
    assert json.loads(body)["files"][0]["name"] == "IMG_1.jpg"
    uri = completed.json["data"]["outputs"]["manifest.json"]["uri"]
    assert uri.endswith("/deliveries/scan-7/manifest.json") and "?" not in uri  # no signature leaked
    assert "X-Amz-Signature" not in worker.logs()

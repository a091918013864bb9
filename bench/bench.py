#!/usr/bin/env python3
"""godwit side by side with rclone, s5cmd, s3sync and the AWS CLI, on one local S3 server.

Run through bench/run.sh, which installs the peers and builds godwit. This script starts s3s-fs,
makes the datasets, runs every tool against a fresh bucket per run, checks each result is
complete (object count and bytes), and writes bench/RESULTS.md. Medians of --runs runs.

With PostgreSQL (--postgres, or found on 127.0.0.1), the small case also runs godwit with its
ledger there, and the "ledger" case measures the ledger alone (crates/state/examples/ledger_bench.rs).
"""

import argparse
import base64
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import boto3
from botocore.config import Config

ROOT = Path(__file__).resolve().parent.parent
GODWIT = ROOT / "target" / "release" / "godwit"
LEDGER_BENCH = ROOT / "target" / "release" / "examples" / "ledger_bench"
KEY, SECRET = "bench-key", "bench-secret-not-a-secret"
MIB = 1 << 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, work, data_dir):
        # On tmpfs by default: the server's disk writes would otherwise dominate and add noise.
        self.dir = Path(data_dir)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = open(work / "s3s-fs.log", "w")
        self.proc = subprocess.Popen(
            ["s3s-fs", "--host", "127.0.0.1", "--port", str(self.port),
             "--access-key", KEY, "--secret-key", SECRET, str(self.dir)],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.client = boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
            region_name="us-east-1", config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 10}))
        for _ in range(100):
            try:
                self.client.list_buckets()
                return
            except Exception:
                time.sleep(0.1)
        raise SystemExit("s3s-fs did not start; see " + self.log.name)

    def bucket(self, name):
        self.client.create_bucket(Bucket=name)
        return name

    def drop_bucket(self, name):
        # s3s-fs keeps each object's metadata as files named .bucket-<base64 name>.* in its root
        # directory; left there, they pile up and slow every later run. Remove both.
        shutil.rmtree(self.dir / name, ignore_errors=True)
        tag = base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")
        with os.scandir(self.dir) as entries:
            for entry in entries:
                if entry.name.startswith(f".bucket-{tag}."):
                    os.unlink(entry.path)

    def count(self, bucket):
        """Objects and bytes in a bucket, read from the server's directory: s3s-fs keeps each
        object as a file, and its ListObjectsV2 grows too slow to check 200,000 objects."""
        return dataset_size(self.dir / bucket)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def shown(text):
    """Text with the password of any URL in it taken out, for logs and results."""
    return re.sub(r"(://[^:/@\s]+):[^@\s]*@", r"\1@", text)


class Postgres:
    """A PostgreSQL database for godwit's ledger. Each run gets a fresh schema, made and dropped
    with psql outside the timed command."""

    def __init__(self, url):
        self.url = url
        self.schemas = []

    @staticmethod
    def find(given):
        """The database to use, and where it came from: --postgres, else GODWIT_BENCH_POSTGRES,
        else the local server's test database if pg_isready finds one; (None, why) without."""
        if shutil.which("psql") is None:
            return None, "psql is not installed: it makes and drops the schemas"
        if given is not None:
            return (given or None), f"--postgres {shlex.quote(given)}"
        if os.environ.get("GODWIT_BENCH_POSTGRES"):
            return os.environ["GODWIT_BENCH_POSTGRES"], "GODWIT_BENCH_POSTGRES"
        try:
            ready = subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"], timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ready = False
        if not ready:
            return None, "no --postgres, no GODWIT_BENCH_POSTGRES, and pg_isready finds no server on 127.0.0.1"
        user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
        return f"postgres://{user}@127.0.0.1:5432/test", "pg_isready -h 127.0.0.1"

    def psql(self, sql):
        sql = "SET client_min_messages = warning; " + sql
        subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", self.url, "-c", sql], check=True, stdout=subprocess.DEVNULL)

    def fresh(self, tag):
        """The URL of a new, empty schema of the database."""
        schema = re.sub(r"\W", "_", f"godwit_bench_{os.getpid()}_{tag}")
        self.psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")
        self.schemas.append(schema)
        separator = "&" if "?" in self.url else "?"
        return f"{self.url}{separator}options=-csearch_path%3D{schema}"

    def drop(self):
        while self.schemas:
            self.psql(f"DROP SCHEMA IF EXISTS {self.schemas.pop()} CASCADE")


def tool_env():
    env = dict(os.environ)
    env.update({
        "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
    })
    env.pop("AWS_CA_BUNDLE", None)  # rclone 1.60 fails when it is set
    return env


def run_measured(cmd, env):
    timefile = "/tmp/godwit-bench-time.txt"
    full = ["/usr/bin/time", "-f", "%e %M", "-o", timefile] + cmd
    started = time.monotonic()
    proc = subprocess.run(full, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wall = time.monotonic() - started
    elapsed, rss_kib = open(timefile).read().split()[-2:]
    return {"seconds": wall, "rss_mib": int(rss_kib) / 1024, "code": proc.returncode,
            "stdout": proc.stdout.decode(errors="replace"), "stderr": proc.stderr.decode(errors="replace")}


def done_marker(path):
    return path.with_name(path.name + ".done")


def make_small(path, n_files, size=4096):
    if done_marker(path).exists():
        return
    shutil.rmtree(path, ignore_errors=True)
    block = os.urandom(size)
    for i in range(n_files):
        d = path / f"d{i % 100:02d}" / f"e{(i // 100) % 10}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:07d}.bin").write_bytes(block[:size - 8] + i.to_bytes(8, "little"))
    done_marker(path).write_text("")


def make_large(path, n_files, size):
    if done_marker(path).exists():
        return
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    chunk = os.urandom(MIB)
    for i in range(n_files):
        with open(path / f"big{i}.bin", "wb") as f:
            for j in range(size // MIB):
                f.write(chunk[:-8] + (i * 100000 + j).to_bytes(8, "little"))
    done_marker(path).write_text("")


def warm(path):
    """Reads the dataset so every tool starts with it in the page cache, not the first one cold."""
    subprocess.run(f"find '{path}' -type f -print0 | xargs -0 cat > /dev/null", shell=True, check=True)


def dataset_size(path):
    n = size = 0
    for p in path.rglob("*"):
        if p.is_file():
            n += 1
            size += p.stat().st_size
    return n, size


# Each tool: how to copy a local directory or a bucket into a bucket.
def godwit_cmd(server, src, bucket, work, extra=(), state=None):
    """godwit's command; its ledger is a fresh SQLite file unless `state` names another."""
    if state is None:
        state = work / f"ledger-{bucket}.db"
        for suffix in ("", "-wal", "-shm", ".lock"):
            Path(str(state) + suffix).unlink(missing_ok=True)
    src_arg = src if isinstance(src, str) else str(src)
    return [str(GODWIT), "migrate", src_arg, f"s3://{bucket}", "--state", str(state),
            "--source-endpoint", server.endpoint, "--dest-endpoint", server.endpoint,
            "--json", "--no-progress", *extra]


def rclone_cmd(server, src, bucket, work):
    src_arg = f"x:{src[5:]}" if isinstance(src, str) else str(src)
    return ["rclone", "copy", src_arg, f"x:{bucket}", "--transfers", "32", "--checkers", "32",
            "--s3-no-check-bucket", "--config", "/dev/null"]


def rclone_env(server):
    env = tool_env()
    env.update({"RCLONE_CONFIG_X_TYPE": "s3", "RCLONE_CONFIG_X_PROVIDER": "Other",
                "RCLONE_CONFIG_X_ENDPOINT": server.endpoint, "RCLONE_CONFIG_X_FORCE_PATH_STYLE": "true",
                "RCLONE_CONFIG_X_ACCESS_KEY_ID": KEY, "RCLONE_CONFIG_X_SECRET_ACCESS_KEY": SECRET,
                "RCLONE_CONFIG_X_REGION": "us-east-1"})
    return env


def s5cmd_cmd(server, src, bucket, work, large=False):
    src_arg = f"{src}/*"
    cp = ["cp", "--part-size", "512", "--concurrency", "8"] if large else ["cp"]
    return ["s5cmd", "--endpoint-url", server.endpoint, "--numworkers", "256", *cp, src_arg, f"s3://{bucket}/"]


def s3sync_cmd(server, src, bucket, work, extra=()):
    cmd = ["s3sync", "--target-endpoint-url", server.endpoint, "--target-force-path-style",
           "--worker-size", "64", *extra]
    if isinstance(src, str):
        cmd += ["--source-endpoint-url", server.endpoint, "--source-force-path-style"]
    return cmd + [str(src) if not isinstance(src, str) else src + "/", f"s3://{bucket}/"]


def aws_cmd(server, src, bucket, work):
    return ["aws", "--endpoint-url", server.endpoint, "s3", "cp", "--recursive", "--only-show-errors",
            str(src), f"s3://{bucket}/"]


def aws_env(work, large=False):
    env = tool_env()
    config = work / ("aws-config-large" if large else "aws-config")
    threshold = "  multipart_threshold = 512MB\n" if large else ""
    config.write_text("[default]\nregion = us-east-1\ns3 =\n  max_concurrent_requests = 64\n  max_queue_size = 10000\n" + threshold)
    env["AWS_CONFIG_FILE"] = str(config)
    return env


# Flags that make each tool send a 256 MiB object in one PUT, for the large cases: on s3s-fs a
# multipart upload costs the server about twice the CPU of a single PUT, so every tool gets the
# same documented knob. godwit also runs with its defaults (multipart above 64 MiB).
SINGLE_PUT = {
    "godwit": ["--multipart-threshold", "512MiB"],
    "rclone": ["--s3-upload-cutoff", "512M"],
    "s5cmd": [],  # set on the cp subcommand, see s5cmd_cmd
    "s3sync": ["--multipart-threshold", "512MiB"],
}


def tools(server, work, large=False, postgres=None):
    base = tool_env()
    extra = (lambda tool: SINGLE_PUT.get(tool, [])) if large else (lambda tool: [])
    aws = aws_env(work, large)
    found = {
        "godwit": (lambda s, b: godwit_cmd(server, s, b, work, extra("godwit")), base),
        # The same command with its ledger on PostgreSQL; the schema is made before the timed run.
        **({"godwit (postgres)": (lambda s, b: godwit_cmd(server, s, b, work, extra("godwit"),
                                                          state=postgres.fresh(b)), base)}
           if postgres else {}),
        "rclone": (lambda s, b: rclone_cmd(server, s, b, work) + extra("rclone"), rclone_env(server)),
        "s5cmd": (lambda s, b: s5cmd_cmd(server, s, b, work, large), base),
        "s3sync": (lambda s, b: s3sync_cmd(server, s, b, work, extra("s3sync")), base),
        "aws s3 cp": (lambda s, b: aws_cmd(server, s, b, work), aws),
    }
    if large:
        found["godwit (defaults)"] = (lambda s, b: godwit_cmd(server, s, b, work), base)
    return found


RUN_ID = [0]


def fresh_bucket(server, tag):
    RUN_ID[0] += 1
    return server.bucket(f"{tag}-{RUN_ID[0]}")


def case(server, work, name, src, expected, runs, selected, log, large=False, postgres=None):
    """Runs every selected tool `runs` times on src; returns {tool: summary}. With `postgres`,
    godwit also runs with its ledger there."""
    results = {}
    for tool, (make_cmd, env) in tools(server, work, large, postgres).items():
        if tool.split(" (")[0] not in selected:
            continue
        samples = []
        for r in range(runs):
            if not isinstance(src, str):
                warm(src)
            bucket = fresh_bucket(server, "b")
            cmd = make_cmd(src, bucket)
            m = run_measured(cmd, env)
            n, size = server.count(bucket)
            complete = (n, size) == expected
            log.write(f"{name} | {tool} | run {r + 1} | {m['seconds']:.2f}s | {m['rss_mib']:.0f} MiB | exit {m['code']} | {n} objects {size} bytes | complete={complete}\n")
            log.flush()
            if not complete or m["code"] != 0:
                log.write(f"  command: {shown(' '.join(cmd))}\n  stderr: {m['stderr'][-2000:]}\n")
            samples.append({**m, "complete": complete})
            server.drop_bucket(bucket)
            if postgres:
                postgres.drop()
        # s3sync exits 3 when it finished with warnings (EXIT_CODE_WARNING in its source); the
        # objects are then all there, as the server's count shows, so the run counts.
        ok_codes = {0, 3} if tool.startswith("s3sync") else {0}
        good = [s for s in samples if s["complete"] and s["code"] in ok_codes]
        if not good:
            results[tool] = {"complete": False, "seconds": None, "rss_mib": max(s["rss_mib"] for s in samples)}
            print(f"  {name:<28} {tool:<17} INCOMPLETE", flush=True)
            continue
        seconds = statistics.median(s["seconds"] for s in good)
        results[tool] = {"complete": len(good) == len(samples), "seconds": seconds,
                         "warned": any(s["code"] != 0 for s in good),
                         "rss_mib": max(s["rss_mib"] for s in good),
                         "objects_per_s": expected[0] / seconds, "mib_per_s": expected[1] / MIB / seconds,
                         "runs": len(good)}
        print(f"  {name:<28} {tool:<17} {seconds:7.2f}s {expected[0] / seconds:9.0f} obj/s "
              f"{expected[1] / MIB / seconds:8.1f} MiB/s {results[tool]['rss_mib']:6.0f} MiB", flush=True)
    return results


def populate(server, src_dir, bucket, work):
    """Fills a source bucket with godwit (verified), for the bucket-to-bucket cases."""
    server.bucket(bucket)
    m = run_measured(godwit_cmd(server, src_dir, bucket, work), tool_env())
    if m["code"] != 0:
        raise SystemExit(f"populating {bucket} failed: {m['stderr'][-2000:]}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default="/tmp/godwit-bench")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cases", default="small,large,s3-small,s3-large,scale,resume,ledger")
    parser.add_argument("--tools", default="godwit,rclone,s5cmd,s3sync,aws s3 cp")
    parser.add_argument("--small-files", type=int, default=10_000)
    parser.add_argument("--large-files", type=int, default=8)
    parser.add_argument("--large-mib", type=int, default=256)
    parser.add_argument("--scale-plan", type=int, default=1_000_000)
    parser.add_argument("--scale-copy", type=int, default=200_000)
    parser.add_argument("--ledger-objects", type=int, default=200_000)
    parser.add_argument("--ledger-clients", default="1,4,8")
    parser.add_argument("--postgres", default=None,
                        help="PostgreSQL URL for godwit's ledger ('' for none); default: $GODWIT_BENCH_POSTGRES, "
                             "else postgres://$(id -un)@127.0.0.1:5432/test if pg_isready -h 127.0.0.1 succeeds")
    parser.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    parser.add_argument("--server-dir", default="/dev/shm/godwit-bench-s3", help="s3s-fs data directory")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cases = args.cases.split(",")
    if "ledger" in cases and not LEDGER_BENCH.exists():
        raise SystemExit(f"{LEDGER_BENCH} is missing: build it with "
                         "cargo build --release -p godwit-state --example ledger_bench (bench/run.sh does)")
    selected = args.tools.split(",")
    log = open(work / "bench.log", "a")
    log.write(f"\n=== {datetime.datetime.now().isoformat()} {shown(' '.join(sys.argv))}\n")
    url, found_by = Postgres.find(args.postgres)
    postgres = Postgres(url) if url else None
    args.postgres_note = (f"PostgreSQL: {shown(url)} (from {found_by})" if url else
                          f"PostgreSQL: none ({found_by}): godwit runs on SQLite only, and the ledger case measures SQLite only")
    print(args.postgres_note, flush=True)

    small, large = work / "data-small", work / "data-large"
    print("making datasets", flush=True)
    make_small(small, args.small_files)
    make_large(large, args.large_files, args.large_mib * MIB)
    expected_small, expected_large = dataset_size(small), dataset_size(large)

    server = Server(work, args.server_dir)
    table = {}
    try:
        if "small" in cases:
            table["small"] = case(server, work, f"{args.small_files} x 4 KiB local->S3", small, expected_small, args.runs, selected, log,
                                  postgres=postgres)
        if "large" in cases:
            table["large"] = case(server, work, f"{args.large_files} x {args.large_mib} MiB local->S3", large, expected_large, args.runs, selected, log, large=True)
        if "s3-small" in cases:
            populate(server, small, "src-small", work)
            table["s3-small"] = case(server, work, f"{args.small_files} x 4 KiB S3->S3", "s3://src-small", expected_small, args.runs, selected, log)
        if "s3-large" in cases:
            populate(server, large, "src-large", work)
            table["s3-large"] = case(server, work, f"{args.large_files} x {args.large_mib} MiB S3->S3", "s3://src-large", expected_large, args.runs, selected, log, large=True)
        if "scale" in cases:
            table["scale"] = scale(server, work, args, log)
        if "resume" in cases:
            table["resume"] = resume(server, work, large, expected_large, log)
        if "ledger" in cases:
            table["ledger"] = ledger(work, args, postgres, log)
    finally:
        server.stop()
        if postgres:
            postgres.drop()
    write_results(Path(args.out), table, args, expected_small, expected_large)
    print(f"wrote {args.out}")


def scale(server, work, args, log):
    out = {}
    plan_dir = work / f"data-plan-{args.scale_plan}"
    print(f"making {args.scale_plan} files for the plan-only run", flush=True)
    make_small(plan_dir, args.scale_plan, size=64)
    bucket = fresh_bucket(server, "plan")
    m = run_measured(godwit_cmd(server, plan_dir, bucket, work, ["--dry-run"]), tool_env())
    plan = json.loads(m["stdout"]) if m["code"] == 0 else {}
    out["plan"] = {"seconds": m["seconds"], "rss_mib": m["rss_mib"], "scanned": plan.get("scanned"), "code": m["code"]}
    log.write(f"scale plan: {out['plan']}\n")
    print(f"  plan {args.scale_plan}: {m['seconds']:.1f}s {m['rss_mib']:.0f} MiB scanned={plan.get('scanned')}", flush=True)

    copy_dir = work / f"data-copy-{args.scale_copy}"
    print(f"making {args.scale_copy} files for the scale copy", flush=True)
    make_small(copy_dir, args.scale_copy, size=1024)
    expected = dataset_size(copy_dir)
    out["copy"] = case(server, work, f"{args.scale_copy} x 1 KiB local->S3", copy_dir, expected, 1,
                       [t for t in ("godwit", "s5cmd", "rclone") if t in args.tools.split(",")], log)
    return out


def resume(server, work, large, expected, log):
    """A large run killed at ~90% of its bytes, then re-run: the re-run's time."""
    full_bucket = fresh_bucket(server, "full")
    full = run_measured(godwit_cmd(server, large, full_bucket, work), tool_env())
    server.drop_bucket(full_bucket)
    bucket = fresh_bucket(server, "resume")
    cmd = godwit_cmd(server, large, bucket, work)
    proc = subprocess.Popen(cmd, env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = cmd[cmd.index("--state") + 1]
    target = 0.9 * expected[1]
    import sqlite3
    killed_at = 0
    while proc.poll() is None:
        time.sleep(0.05)
        try:
            db = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=0.2)
            done = db.execute("SELECT COALESCE(SUM(size),0) FROM objects WHERE state = 2").fetchone()[0]
            parts = db.execute("SELECT COALESCE(SUM(size),0) FROM parts").fetchone()[0]
            db.close()
        except Exception:
            continue
        if done + parts >= target:
            killed_at = done + parts
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    rerun = run_measured(cmd, tool_env())
    n, size = server.count(bucket)
    summary = json.loads(rerun["stdout"]) if rerun["code"] == 0 else {}
    out = {"full_seconds": full["seconds"], "rerun_seconds": rerun["seconds"], "killed_at_bytes": killed_at,
           "complete": (n, size) == expected, "rerun_bytes_copied": summary.get("bytes_copied_this_run")}
    log.write(f"resume: {out}\n")
    print(f"  resume: full {full['seconds']:.2f}s, killed at {killed_at / MIB:.0f} MiB, re-run {rerun['seconds']:.2f}s "
          f"({100 * rerun['seconds'] / full['seconds']:.0f}%), complete={out['complete']}", flush=True)
    return out


def ledger(work, args, postgres, log):
    """The ledger alone, on PostgreSQL and, for reference, on SQLite: {store: {command, rows}}."""
    out = {}
    states = ([("postgres", postgres.url)] if postgres else []) + [("sqlite", str(work / "ledger-bench.db"))]
    for store, state in states:
        cmd = [str(LEDGER_BENCH.relative_to(ROOT)), "--state", state, "--objects", str(args.ledger_objects),
               "--clients", args.ledger_clients]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        out[store] = {"command": shown(shlex.join(cmd)), "rows": rows, "code": proc.returncode}
        log.write(f"ledger {store}: exit {proc.returncode}\n{proc.stdout}{proc.stderr[-2000:]}")
        for r in rows:
            print(f"  ledger {store:<8} {r['clients']:>2} clients: scan {r['scan_objects_per_s']:8.0f} obj/s, "
                  f"claim {r['claim_objects_per_s']:8.0f} obj/s, outcomes {r['outcome_objects_per_s']:8.0f} obj/s, "
                  f"end to end {r['end_to_end_objects_per_s']:8.0f} obj/s", flush=True)
        if proc.returncode != 0:
            print(f"  ledger {store}: FAILED (exit {proc.returncode}): {proc.stderr.strip()[-500:]}", flush=True)
    return out


def versions():
    def v(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        except Exception as e:
            return f"unavailable ({e})"
    return {"godwit": v([str(GODWIT), "--version"]), "rclone": v(["rclone", "--version"]),
            "s5cmd": v(["s5cmd", "version"]), "s3sync": v(["s3sync", "--version"]),
            "aws": v(["aws", "--version"]), "s3s-fs": "s3s-fs 0.14.1"}


def write_results(out, table, args, expected_small, expected_large):
    lines = ["# Benchmark results", "",
             f"Date: {datetime.date.today().isoformat()}. Machine: {os.cpu_count()} cores, "
             f"{platform.machine()}, {platform.system()} {platform.release()}. Server: s3s-fs 0.14.1 on loopback, "
             "one fresh bucket per run. Figures are medians of the runs; every run's result was checked "
             "complete (object count and bytes) before it counted.", "",
             "Command: `bash bench/run.sh " + shown(" ".join(sys.argv[1:])) + "`", "",
             "Tools: " + "; ".join(f"{k}: {v}" for k, v in versions().items()), "", args.postgres_note, ""]
    titles = {"small": "small: local → S3", "large": "large: local → S3", "s3-small": "small: S3 → S3 (same endpoint)",
              "s3-large": "large: S3 → S3 (same endpoint)"}
    for key, title in titles.items():
        if key not in table:
            continue
        rows = table[key]
        lines += [f"## {title}", "", "| tool | seconds | objects/s | MiB/s | peak RSS MiB | complete |", "| --- | --- | --- | --- | --- | --- |"]
        for tool, r in rows.items():
            if r["seconds"] is None:
                lines.append(f"| {tool} | — | — | — | {r['rss_mib']:.0f} | no |")
            else:
                lines.append(f"| {tool} | {r['seconds']:.2f} | {r['objects_per_s']:.0f} | {r['mib_per_s']:.1f} | {r['rss_mib']:.0f} | {('yes' if r['complete'] else 'some runs not') + (' (exit 3: warnings)' if r.get('warned') else '')} |")
        peers = {t: r for t, r in rows.items() if not t.startswith("godwit") and r["seconds"]}
        if "godwit" in rows and rows["godwit"]["seconds"] and peers:
            best = min(peers, key=lambda t: peers[t]["seconds"])
            ratio = peers[best]["seconds"] / rows["godwit"]["seconds"]
            lines += ["", f"godwit / fastest peer ({best}): **{ratio:.2f}x**"]
            if key.startswith("s3-") and "s3sync" in peers:
                # rclone, s5cmd and aws s3 cp have the server copy each object (CopyObject, with no
                # condition on the destination key); s3sync streams the bytes through itself, as
                # godwit does on s3s-fs, which ignores If-None-Match on CopyObject.
                ratio = peers["s3sync"]["seconds"] / rows["godwit"]["seconds"]
                lines += ["", f"godwit / fastest peer that streams the bytes through itself (s3sync): **{ratio:.2f}x**. "
                          "rclone, s5cmd and aws s3 cp copy server-side with unconditional CopyObject; godwit copies "
                          "server-side only where the server refuses a copy onto an existing key, which s3s-fs does not, "
                          "so here it streams."]
        if rows.get("godwit", {}).get("seconds") and rows.get("godwit (postgres)", {}).get("seconds"):
            ratio = rows["godwit"]["seconds"] / rows["godwit (postgres)"]["seconds"]
            lines += ["", f"godwit on PostgreSQL / godwit on SQLite: **{ratio:.2f}x** (target ≥ 0.8x)"]
        lines.append("")
    if "scale" in table:
        s = table["scale"]
        lines += ["## scale", "", f"- plan only (dry run) of {args.scale_plan} objects: {s['plan']['seconds']:.1f} s, "
                  f"peak RSS {s['plan']['rss_mib']:.0f} MiB, scanned {s['plan']['scanned']}", ""]
        lines += ["| tool | seconds | objects/s | peak RSS MiB | complete |", "| --- | --- | --- | --- | --- |"]
        for tool, r in s["copy"].items():
            if r["seconds"]:
                lines.append(f"| {tool} ({args.scale_copy} × 1 KiB) | {r['seconds']:.1f} | {r['objects_per_s']:.0f} | {r['rss_mib']:.0f} | yes |")
            else:
                lines.append(f"| {tool} ({args.scale_copy} × 1 KiB) | — | — | {r['rss_mib']:.0f} | no |")
        lines.append("")
    if "resume" in table:
        r = table["resume"]
        lines += ["## resume", "", f"A godwit run of the large dataset killed (SIGKILL) once {r['killed_at_bytes'] / MIB:.0f} MiB "
                  f"were recorded, then re-run: re-run {r['rerun_seconds']:.2f} s against a full run of {r['full_seconds']:.2f} s "
                  f"(**{100 * r['rerun_seconds'] / r['full_seconds']:.0f}%**); bytes of the objects the re-run completed: {r['rerun_bytes_copied']}; "
                  f"complete: {r['complete']}.", ""]
    if "ledger" in table:
        lines += ledger_lines(table["ledger"], table.get("small", {}).get("godwit"))
    out.write_text("\n".join(lines) + "\n")


def ledger_lines(results, godwit_small):
    lines = ["## ledger alone", "",
             "The ledger with no storage behind it (crates/state/examples/ledger_bench.rs): clients record the "
             "scan in pages of 1000, one shard each, then claim packets of 64 and record each packet's outcomes in "
             "one commit until the queue is empty. A call's rate is its objects over the clients' time in it, "
             "divided by the clients; end to end is the claim and outcome phase over its wall clock.", ""]
    names = {"postgres": "PostgreSQL", "sqlite": "SQLite (reference; its clients share one store)"}
    for store, result in results.items():
        lines += [f"### {names[store]}", "", f"Command: `{result['command']}`", ""]
        if result["code"] != 0:
            lines += [f"Failed (exit {result['code']}); see bench.log.", ""]
        lines += ["| clients | scan objects/s | claim objects/s | claim packets/s | outcome objects/s | commits/s | end-to-end objects/s |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in result["rows"]:
            lines.append(f"| {r['clients']} | {r['scan_objects_per_s']:.0f} | {r['claim_objects_per_s']:.0f} | "
                         f"{r['claim_packets_per_s']:.0f} | {r['outcome_objects_per_s']:.0f} | "
                         f"{r['outcome_commits_per_s']:.0f} | {r['end_to_end_objects_per_s']:.0f} |")
        lines.append("")
    rows = results.get("postgres", {}).get("rows")
    if rows:
        row = next((r for r in rows if r["clients"] == 8), max(rows, key=lambda r: r["clients"]))
        if godwit_small and godwit_small.get("seconds"):
            target = 10 * godwit_small["objects_per_s"]
            lines.append(f"PostgreSQL end to end at {row['clients']} clients / 10x godwit's small-case rate "
                         f"(10 × {godwit_small['objects_per_s']:.0f} objects/s): "
                         f"**{row['end_to_end_objects_per_s'] / target:.2f}x** (target ≥ 1x)")
        else:
            lines.append(f"PostgreSQL end to end at {row['clients']} clients: {row['end_to_end_objects_per_s']:.0f} objects/s "
                         "(the small case with godwit did not run in this invocation: no comparison with its rate)")
        lines.append("")
    return lines


if __name__ == "__main__":
    main()

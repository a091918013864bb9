#!/usr/bin/env python3
"""godwit side by side with rclone, s5cmd, s3sync and the AWS CLI, on a local S3 server.

Run through bench/run.sh, which installs the peers and builds godwit. This script makes the
datasets and, for every timed run of every tool, starts a fresh server (s3s-fs, or `godwit
serve-s3` for the cases that need conditional copies) on a new empty directory on tmpfs, runs the
tool, checks the result is complete (object count and bytes), then stops the server and deletes
its directory: s3s-fs slows as its directory fills, so a shared server would favour whichever
tool ran first. Each tool runs with its own defaults and tuned. Figures are medians of --runs
runs; beside the wall clock, each run records the CPU seconds of the tool and of the server.
Writes --out (bench/RESULTS.md by default).

With PostgreSQL (--postgres, or found on 127.0.0.1), the small case also runs godwit with its
ledger there, and the "ledger" case measures the ledger alone (crates/state/examples/ledger_bench.rs).
"""

import argparse
import concurrent.futures
import dataclasses
import datetime
import itertools
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

import boto3
from botocore.config import Config

ROOT = Path(__file__).resolve().parent.parent
KEY, SECRET = "bench-key", "bench-secret-not-a-secret"
MIB = 1 << 20
DEFAULT_CASES = "small,large,s3-small,s3-large,s3-small-cond,s3-large-cond,resume,million,plan,ledger"
ALL_CASES = DEFAULT_CASES.split(",") + ["scale"]
PEERS = ["rclone", "s5cmd", "s3sync", "aws s3 cp"]
# The binary under test; set from --godwit in main().
GODWIT = None


def default_godwit():
    """$GODWIT_BIN, else the release build where cargo puts it ($CARGO_TARGET_DIR or target/)."""
    if os.environ.get("GODWIT_BIN"):
        return os.environ["GODWIT_BIN"]
    target = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
    return str(target / "release" / "godwit")


def ledger_bench_bin():
    # Built by the same cargo invocation as godwit, so it sits beside it.
    return Path(GODWIT).parent / "examples" / "ledger_bench"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_cpu_seconds(pid):
    """User plus system CPU seconds a live process has used, all its threads included."""
    # The command name (field 2) may hold spaces; the fields after its ')' start at field 3, so
    # utime (field 14) and stime (field 15) are the 12th and 13th of them.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def s3_client(endpoint):
    # No request checksums unless required: the populated objects then carry a plain MD5 ETag,
    # as a PUT by any of the tools does.
    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET, region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 10}, max_pool_connections=32,
                      request_checksum_calculation="when_required"))


class Server:
    """One S3 server process on a directory of its own under `base`, deleted when it stops.

    kind "s3s-fs" is the s3s-fs binary; "serve-s3" is `godwit serve-s3`: s3s-fs in-process, plus
    a refused CopyObject with If-None-Match onto an existing key, so godwit copies server-side
    there. `template`, if given, is a server directory copied in before the server starts (the
    source bucket of the S3 -> S3 cases, populated once)."""

    serial = itertools.count(1)

    def __init__(self, kind, base, work, template=None):
        self.kind = kind
        self.dir = Path(base) / f"run-{next(Server.serial)}"
        shutil.rmtree(self.dir, ignore_errors=True)
        if template:
            subprocess.run(["cp", "-a", str(template), str(self.dir)], check=True)
        else:
            self.dir.mkdir(parents=True)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = open(Path(work) / f"{kind}.log", "a")
        self.log.write(f"=== {datetime.datetime.now().isoformat()} {self.dir} port {self.port}\n")
        self.log.flush()
        if kind == "s3s-fs":
            cmd = ["s3s-fs", "--host", "127.0.0.1", "--port", str(self.port),
                   "--access-key", KEY, "--secret-key", SECRET, str(self.dir)]
        else:
            cmd = [GODWIT, "serve-s3", str(self.dir), "--listen", f"127.0.0.1:{self.port}"]
        self.proc = subprocess.Popen(cmd, env=tool_env(), stdout=self.log, stderr=subprocess.STDOUT)
        self.client = s3_client(self.endpoint)
        for _ in range(200):
            try:
                self.client.list_buckets()
                return
            except Exception:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        raise SystemExit(f"{kind} did not start; see {self.log.name}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def bucket(self, name):
        self.client.create_bucket(Bucket=name)
        return name

    def cpu_seconds(self):
        return process_cpu_seconds(self.proc.pid)

    def count(self, bucket):
        """Objects and bytes in a bucket, read from the server's directory: s3s-fs keeps each
        object as a file, and its ListObjectsV2 grows too slow to check many objects."""
        return dataset_size(self.dir / bucket)

    def stop(self, keep_dir=False):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()
        self.log.close()
        if not keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


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


def run_measured(cmd, env, timeout):
    """Runs cmd under /usr/bin/time: wall seconds, peak RSS, and the CPU seconds of the tool
    (user + system, its child processes included)."""
    timefile = "/tmp/godwit-bench-time.txt"
    full = ["/usr/bin/time", "-f", "%e %M %U %S", "-o", timefile] + cmd
    started = time.monotonic()
    # A session of its own, so a run that hangs can be stopped with every process it started.
    proc = subprocess.Popen(full, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        stderr += f"\n(killed after {timeout} s)".encode()
    wall = time.monotonic() - started
    try:
        _, rss_kib, user, system = open(timefile).read().split()[-4:]
    except ValueError:  # killed before time wrote its line
        rss_kib, user, system = 0, 0, 0
    return {"seconds": wall, "rss_mib": int(rss_kib) / 1024, "tool_cpu": float(user) + float(system),
            "code": proc.returncode, "stdout": stdout.decode(errors="replace"),
            "stderr": stderr.decode(errors="replace")}


def done_marker(path):
    return path.with_name(path.name + ".done")


def make_small(path, n_files, size=4096):
    """n_files files of `size` bytes, at most 1,000 to a directory (d00/e0 .. d99/e9)."""
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
    """Files and bytes below path (os.scandir: a million files in seconds, not minutes)."""
    n = size = 0
    stack = [str(path)]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except FileNotFoundError:
            continue
        with entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    n += 1
                    size += entry.stat(follow_symlinks=False).st_size
    return n, size


# How each tool copies a local directory, or a bucket ("s3://NAME"), into a bucket. Each takes the
# flags of its row: none for its defaults (only what reaches the server), TUNED for the tuned row.
def godwit_cmd(server, src, bucket, work, extra=(), state=None):
    """godwit's command; its ledger is a fresh SQLite file unless `state` names another."""
    if state is None:
        state = work / f"ledger-{bucket}.db"
        for suffix in ("", "-wal", "-shm", ".lock"):
            Path(str(state) + suffix).unlink(missing_ok=True)
    return [GODWIT, "migrate", str(src), f"s3://{bucket}", "--state", str(state),
            "--source-endpoint", server.endpoint, "--dest-endpoint", server.endpoint,
            "--json", "--no-progress", *extra]


def rclone_cmd(server, src, bucket, flags):
    src_arg = f"x:{src[5:]}" if isinstance(src, str) else str(src)
    return ["rclone", "copy", src_arg, f"x:{bucket}", "--config", "/dev/null", *flags]


def rclone_env(server, work):
    # The remote "x" from the environment: its endpoint, keys and path-style addressing.
    env = tool_env()
    env.update({"RCLONE_CONFIG_X_TYPE": "s3", "RCLONE_CONFIG_X_PROVIDER": "Other",
                "RCLONE_CONFIG_X_ENDPOINT": server.endpoint, "RCLONE_CONFIG_X_FORCE_PATH_STYLE": "true",
                "RCLONE_CONFIG_X_ACCESS_KEY_ID": KEY, "RCLONE_CONFIG_X_SECRET_ACCESS_KEY": SECRET,
                "RCLONE_CONFIG_X_REGION": "us-east-1"})
    return env


def s5cmd_cmd(server, src, bucket, flags):
    # s5cmd takes some flags before its subcommand and some after: TUNED gives it both lists.
    global_flags, cp_flags = flags or ([], [])
    return ["s5cmd", "--endpoint-url", server.endpoint, *global_flags, "cp", *cp_flags, f"{src}/*", f"s3://{bucket}/"]


def s3sync_cmd(server, src, bucket, flags):
    cmd = ["s3sync", "--target-endpoint-url", server.endpoint, "--target-force-path-style", *flags]
    if isinstance(src, str):
        cmd += ["--source-endpoint-url", server.endpoint, "--source-force-path-style"]
    return cmd + [src + "/" if isinstance(src, str) else str(src), f"s3://{bucket}/"]


def aws_cmd(server, src, bucket, flags):
    return ["aws", "--endpoint-url", server.endpoint, "s3", "cp", "--recursive", "--only-show-errors",
            str(src), f"s3://{bucket}/"]


def aws_env(server, work, flags):
    # The AWS CLI takes its tuning from a config file, here "[default]" plus the row's lines (none
    # for its defaults), so nothing in ~/.aws changes it. Rows run one at a time: one file does.
    env = tool_env()
    config = work / "aws-config"
    config.write_text("[default]\nregion = us-east-1\n" + flags)
    env["AWS_CONFIG_FILE"] = str(config)
    return env


PEER_COMMANDS = {  # tool: (command(server, src, bucket, flags), env(server, work, flags))
    "rclone": (rclone_cmd, lambda server, work, flags: rclone_env(server, work)),
    "s5cmd": (s5cmd_cmd, lambda server, work, flags: tool_env()),
    "s3sync": (s3sync_cmd, lambda server, work, flags: tool_env()),
    "aws s3 cp": (aws_cmd, lambda server, work, flags: aws_env(server, work, flags)),
}

# The flags of each peer's defaults row: none (what reaches the server is in its command).
DEFAULTS = {"rclone": [], "s5cmd": ([], []), "s3sync": [], "aws s3 cp": ""}
# The flags of each tool's tuned row, as the earlier rounds ran them (for the AWS CLI, lines of
# its config file).
TUNED = {
    "godwit": [],
    "rclone": ["--transfers", "32", "--checkers", "32", "--s3-no-check-bucket"],
    "s5cmd": (["--numworkers", "256"], []),
    "s3sync": ["--worker-size", "64"],
    "aws s3 cp": "s3 =\n  max_concurrent_requests = 64\n  max_queue_size = 10000\n",
}

# Added to the tuned rows of the large cases: flags that make each tool send a large object in
# one PUT. On s3s-fs a multipart upload costs the server about twice the CPU of a single PUT, so
# every tool gets the same documented knob.
SINGLE_PUT = {
    "godwit": ["--multipart-threshold", "512MiB"],
    "rclone": ["--s3-upload-cutoff", "512M"],
    "s5cmd": ([], ["--part-size", "512", "--concurrency", "8"]),
    "s3sync": ["--multipart-threshold", "512MiB"],
    "aws s3 cp": "  multipart_threshold = 512MB\n",
}


def tuned_flags(tool, large):
    flags = TUNED[tool]
    if not large:
        return flags
    extra = SINGLE_PUT[tool]
    if tool == "s5cmd":
        return (flags[0] + extra[0], flags[1] + extra[1])
    return flags + extra


@dataclasses.dataclass
class Case:
    key: str            # as in --cases
    title: str          # the results' heading
    label: str          # the progress lines' label
    src: object         # a local directory (Path), or "s3://src" for the S3 -> S3 cases
    expected: tuple     # (objects, bytes) a complete copy holds
    large: bool = False
    server: str = "s3s-fs"
    template: Path = None  # the server directory holding the source bucket, for S3 -> S3
    postgres: Postgres = None


def case_rows(case, work, selected, racy_flag):
    """The rows of a case, {name: make(server, bucket) -> (command, env)}: godwit's defaults
    (and its other variants), then each peer's defaults and tuned."""
    found = {"godwit": lambda server, bucket: (godwit_cmd(server, case.src, bucket, work), tool_env())}
    if case.postgres:
        # The same command with its ledger on PostgreSQL; the schema is made before the timed run.
        found["godwit (postgres)"] = lambda server, bucket: (
            godwit_cmd(server, case.src, bucket, work, state=case.postgres.fresh(bucket)), tool_env())
    if tuned_flags("godwit", case.large):  # godwit's tuned flags are its defaults in the small cases
        found["godwit (tuned)"] = lambda server, bucket: (
            godwit_cmd(server, case.src, bucket, work, tuned_flags("godwit", case.large)), tool_env())
    if isinstance(case.src, str) and case.server == "s3s-fs" and racy_flag:
        # s3s-fs ignores If-None-Match on CopyObject, so godwit streams there unless told to copy
        # server-side after a HEAD check, racy as the peers' copies are.
        found["godwit (--racy-server-side-copy)"] = lambda server, bucket: (
            godwit_cmd(server, case.src, bucket, work, ["--racy-server-side-copy"]), tool_env())
    for tool in PEERS:
        command, env = PEER_COMMANDS[tool]
        for variant, flags in (("defaults", DEFAULTS[tool]), ("tuned", tuned_flags(tool, case.large))):
            found[f"{tool} ({variant})"] = (lambda server, bucket, command=command, env=env, flags=flags:
                                            (command(server, case.src, bucket, flags), env(server, work, flags)))
    return {name: make for name, make in found.items() if name.split(" (")[0] in selected}


def measure_once(case, make, work, base, timeout):
    """One timed run on a fresh server: the tool's figures, the server's CPU seconds, and
    whether the destination bucket holds every object and byte."""
    with Server(case.server, base, work, case.template) as server:
        bucket = server.bucket("dst")
        if not isinstance(case.src, str):
            warm(case.src)
        cmd, env = make(server, bucket)
        # The server's CPU before the run (starting, creating the bucket) is not the tool's doing.
        server_before = server.cpu_seconds()
        m = run_measured(cmd, env, timeout)
        m["server_cpu"] = server.cpu_seconds() - server_before
        m["objects"], m["bytes"] = server.count(bucket)
    m["complete"] = (m["objects"], m["bytes"]) == case.expected
    m["command"] = cmd
    return m


def summarize(tool, samples, expected):
    """The medians of the runs that count (complete, and a clean exit)."""
    # s3sync exits 3 when it finished with warnings (EXIT_CODE_WARNING in its source); the
    # objects are then all there, as the server's count shows, so the run counts.
    ok_codes = {0, 3} if tool.startswith("s3sync") else {0}
    good = [s for s in samples if s["complete"] and s["code"] in ok_codes]
    if not good:
        return {"complete": False, "seconds": None, "rss_mib": max(s["rss_mib"] for s in samples)}
    seconds = statistics.median(s["seconds"] for s in good)
    return {"complete": len(good) == len(samples), "runs": len(good), "made": len(samples), "seconds": seconds,
            "warned": any(s["code"] != 0 for s in good), "rss_mib": max(s["rss_mib"] for s in good),
            "tool_cpu": statistics.median(s["tool_cpu"] for s in good),
            "server_cpu": statistics.median(s["server_cpu"] for s in good),
            "objects_per_s": expected[0] / seconds, "mib_per_s": expected[1] / MIB / seconds}


def run_case(case, work, base, args, log, runs=None, tools=None):
    """Every selected row of a case, `runs` (default --runs) times each; {row: summary}."""
    results = {}
    for tool, make in case_rows(case, work, tools or args.tools.split(","), args.racy_flag).items():
        samples = []
        for r in range(runs or args.runs):
            m = measure_once(case, make, work, base, args.timeout)
            log.write(f"{case.key} | {tool} | run {r + 1} | {m['seconds']:.2f}s | tool CPU {m['tool_cpu']:.2f}s | "
                      f"server CPU {m['server_cpu']:.2f}s | {m['rss_mib']:.0f} MiB | exit {m['code']} | "
                      f"{m['objects']} objects {m['bytes']} bytes | complete={m['complete']}\n")
            if not m["complete"] or m["code"] != 0:
                log.write(f"  command: {shown(shlex.join(m['command']))}\n  stderr: {m['stderr'][-2000:]}\n")
            log.flush()
            samples.append(m)
            if case.postgres:
                case.postgres.drop()
        results[tool] = summarize(tool, samples, case.expected)
        print_row(case.label, tool, results[tool])
    return results


def print_row(label, tool, r):
    if r["seconds"] is None:
        print(f"  {label:<26} {tool:<34} INCOMPLETE", flush=True)
        return
    print(f"  {label:<26} {tool:<34} {r['seconds']:7.2f}s {r['objects_per_s']:8.0f} obj/s {r['mib_per_s']:7.1f} MiB/s "
          f"CPU tool {r['tool_cpu']:6.2f}s server {r['server_cpu']:6.2f}s {r['rss_mib']:5.0f} MiB", flush=True)


def make_template(base, work, name, src_dir, expected):
    """A server directory holding bucket "src" with every file of src_dir, made once for the
    S3 -> S3 cases and copied into each run's fresh server (cp -a: s3s-fs keeps each object as a
    file below the bucket's directory and its metadata as files in the root directory, so a copy
    of the directory is a copy of the bucket). Filled with boto3, one PUT an object, so the
    source does not depend on the godwit under test; checked by listing a copy with boto3."""
    template = Path(base) / f"template-{name}"
    shutil.rmtree(template, ignore_errors=True)
    server = Server("s3s-fs", base, work)
    try:
        server.bucket("src")
        files = [p for p in sorted(src_dir.rglob("*")) if p.is_file()]

        def put(path):
            with open(path, "rb") as body:
                server.client.put_object(Bucket="src", Key=path.relative_to(src_dir).as_posix(), Body=body)

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(put, files))
    finally:
        server.stop(keep_dir=True)
    server.dir.rename(template)
    with Server("s3s-fs", base, work, template) as copy:
        listed = [o for page in copy.client.get_paginator("list_objects_v2").paginate(Bucket="src")
                  for o in page.get("Contents", [])]
    if (len(listed), sum(o["Size"] for o in listed)) != expected:
        raise SystemExit(f"the {name} source bucket, copied into a fresh server, lists {len(listed)} objects "
                         f"of {sum(o['Size'] for o in listed)} bytes, not {expected}")
    return template


def racy_flag_supported():
    help_text = subprocess.run([GODWIT, "migrate", "--help"], capture_output=True, text=True).stdout
    return "--racy-server-side-copy" in help_text


def million(work, base, args, log):
    """1,000,000 tiny files end to end with godwit's defaults into a fresh s3s-fs, once."""
    src = tiny_dataset(work, args.million_files)
    expected = dataset_size(src)
    # s3s-fs keeps three inodes an object (the file, its metadata and its ETag): check the
    # tmpfs has them before half an hour of copying says so.
    stat = os.statvfs(base)
    if stat.f_favail and stat.f_favail < 3 * expected[0] + 10_000:
        print(f"  million: SKIPPED: {base} has {stat.f_favail} free inodes; s3s-fs needs ~{3 * expected[0]}", flush=True)
        return {"skipped": f"{base} has {stat.f_favail} free inodes; s3s-fs needs about {3 * expected[0]}"}
    warm(src)
    case = Case("million", "", f"{args.million_files} x 64 B", src, expected)
    make = case_rows(case, work, ["godwit"], False)["godwit"]
    m = measure_once(case, make, work, base, args.timeout)
    log.write(f"million: {shown(shlex.join(m['command']))}: {m['seconds']:.1f}s tool CPU {m['tool_cpu']:.1f}s "
              f"server CPU {m['server_cpu']:.1f}s {m['rss_mib']:.0f} MiB exit {m['code']} "
              f"{m['objects']} objects {m['bytes']} bytes complete={m['complete']}\n{m['stderr'][-2000:]}\n")
    result = summarize("godwit", [m], expected)
    result.update(objects=m["objects"], expected=expected, code=m["code"])
    print_row(case.label, "godwit", result)
    return result


def plan(work, base, args, log):
    """A dry run (plan only) of the 1M dataset: the scan and the ledger, nothing copied."""
    src = tiny_dataset(work, args.million_files)
    with Server("s3s-fs", base, work) as server:
        m = run_measured(godwit_cmd(server, src, server.bucket("plan"), work, ["--dry-run"]), tool_env(), args.timeout)
    summary = json.loads(m["stdout"]) if m["code"] == 0 else {}
    out = {"seconds": m["seconds"], "rss_mib": m["rss_mib"], "tool_cpu": m["tool_cpu"],
           "scanned": summary.get("scanned"), "code": m["code"]}
    log.write(f"plan: {out}\n")
    print(f"  plan {args.million_files}: {m['seconds']:.1f}s {m['rss_mib']:.0f} MiB scanned={out['scanned']}", flush=True)
    return out


def tiny_dataset(work, n):
    path = work / f"data-tiny-{n}x64"
    if not done_marker(path).exists():
        print(f"making {n} files of 64 bytes", flush=True)
    make_small(path, n, size=64)
    return path


def scale(work, base, args, log):
    """Not in the default list: --scale-copy files of 1 KiB with godwit, s5cmd and rclone, once."""
    src = work / f"data-small-{args.scale_copy}x1024"
    print(f"making {args.scale_copy} files of 1 KiB for the scale copy", flush=True)
    make_small(src, args.scale_copy, size=1024)
    case = Case("scale", "", f"{args.scale_copy} x 1 KiB", src, dataset_size(src))
    selected = [t for t in ("godwit", "s5cmd", "rclone") if t in args.tools.split(",")]
    return run_case(case, work, base, args, log, runs=1, tools=selected)


def resume_once(case, work, base, timeout, log):
    """A full godwit run; then, on another fresh server, a run killed (SIGKILL) once 90% of the
    bytes are recorded in its ledger, and its re-run, timed."""
    make = case_rows(case, work, ["godwit"], False)["godwit"]
    full = measure_once(case, make, work, base, timeout)
    with Server(case.server, base, work) as server:
        bucket = server.bucket("dst")
        cmd, env = make(server, bucket)
        killed_at = kill_at_fraction(cmd, env, 0.9 * case.expected[1])
        rerun = run_measured(cmd, env, timeout)
        n, size = server.count(bucket)
    summary = json.loads(rerun["stdout"]) if rerun["code"] == 0 else {}
    out = {"full_seconds": full["seconds"], "full_complete": full["complete"], "rerun_seconds": rerun["seconds"],
           "killed_at_bytes": killed_at, "complete": (n, size) == case.expected and rerun["code"] == 0,
           "rerun_bytes_copied": summary.get("bytes_copied_this_run"), "ratio": rerun["seconds"] / full["seconds"],
           "total_bytes": case.expected[1]}
    log.write(f"resume: {out}\n")
    print(f"  resume: full {full['seconds']:.2f}s, killed at {killed_at / MIB:.0f} MiB, re-run {rerun['seconds']:.2f}s "
          f"({100 * out['ratio']:.0f}%), complete={out['complete']}", flush=True)
    return out


def kill_at_fraction(cmd, env, target_bytes):
    """Starts cmd and kills it once its SQLite ledger records target_bytes (objects done plus
    parts uploaded); the bytes recorded then."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = cmd[cmd.index("--state") + 1]
    killed_at = 0
    while proc.poll() is None:
        time.sleep(0.05)
        try:
            db = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=0.2)
            done = db.execute("SELECT COALESCE(SUM(size),0) FROM objects WHERE state = 2").fetchone()[0]
            parts = db.execute("SELECT COALESCE(SUM(size),0) FROM parts").fetchone()[0]
            db.close()
        except sqlite3.Error:
            continue  # not made yet, or busy
        if done + parts >= target_bytes:
            killed_at = done + parts
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    return killed_at


def resume(work, base, args, log):
    src = work / f"data-resume-{args.resume_files}x{args.resume_mib}MiB"
    make_large(src, args.resume_files, args.resume_mib * MIB)
    case = Case("resume", "", "resume", src, dataset_size(src))
    return [resume_once(case, work, base, args.timeout, log) for _ in range(args.resume_runs)]


def ledger(work, args, postgres, log):
    """The ledger alone, on PostgreSQL and, for reference, on SQLite: {store: {command, rows}}."""
    out = {}
    states = ([("postgres", postgres.url)] if postgres else []) + [("sqlite", str(work / "ledger-bench.db"))]
    for store, state in states:
        cmd = [str(ledger_bench_bin()), "--state", state, "--objects", str(args.ledger_objects),
               "--clients", args.ledger_clients]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        out[store] = {"command": shown(shlex.join(cmd)), "rows": lines, "code": proc.returncode}
        log.write(f"ledger {store}: exit {proc.returncode}\n{proc.stdout}{proc.stderr[-2000:]}")
        for r in lines:
            print(f"  ledger {store:<8} {r['clients']:>2} clients: scan {r['scan_objects_per_s']:8.0f} obj/s, "
                  f"claim {r['claim_objects_per_s']:8.0f} obj/s, outcomes {r['outcome_objects_per_s']:8.0f} obj/s, "
                  f"end to end {r['end_to_end_objects_per_s']:8.0f} obj/s", flush=True)
        if proc.returncode != 0:
            print(f"  ledger {store}: FAILED (exit {proc.returncode}): {proc.stderr.strip()[-500:]}", flush=True)
    return out


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/godwit-bench", help="datasets, ledgers and logs")
    parser.add_argument("--godwit", default=default_godwit(),
                        help="the godwit binary (default: $GODWIT_BIN, else $CARGO_TARGET_DIR or target/, /release/godwit)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each row; the tables give medians")
    parser.add_argument("--cases", default=DEFAULT_CASES, help=f"of {','.join(ALL_CASES)}")
    parser.add_argument("--tools", default="godwit," + ",".join(PEERS))
    parser.add_argument("--small-files", type=int, default=5_000, help="files of 4 KiB in the small cases")
    parser.add_argument("--large-files", type=int, default=6)
    parser.add_argument("--large-mib", type=int, default=128)
    parser.add_argument("--resume-files", type=int, default=6)
    parser.add_argument("--resume-mib", type=int, default=192)
    parser.add_argument("--resume-runs", type=int, default=3)
    parser.add_argument("--million-files", type=int, default=1_000_000, help="files of 64 bytes, for million and plan")
    parser.add_argument("--scale-copy", type=int, default=200_000, help="files of 1 KiB in the scale case")
    parser.add_argument("--ledger-objects", type=int, default=200_000)
    parser.add_argument("--ledger-clients", default="1,4,8")
    parser.add_argument("--postgres", default=None,
                        help="PostgreSQL URL for godwit's ledger ('' for none); default: $GODWIT_BENCH_POSTGRES, "
                             "else postgres://$(id -un)@127.0.0.1:5432/test if pg_isready -h 127.0.0.1 succeeds")
    parser.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    parser.add_argument("--server-dir", default="/dev/shm/godwit-bench-s3",
                        help="where each run's server directory is made (tmpfs: disk writes would add noise); "
                             "emptied at the start and the end")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before a run is killed (and counts as failed)")
    args = parser.parse_args()
    unknown = set(args.cases.split(",")) - set(ALL_CASES)
    if unknown:
        parser.error(f"unknown cases {','.join(sorted(unknown))}; known: {','.join(ALL_CASES)}")
    return args


def main():
    global GODWIT
    args = parse_args()
    GODWIT = str(Path(args.godwit).resolve())
    if not Path(GODWIT).exists():
        raise SystemExit(f"{GODWIT} is missing: build it (bench/run.sh does), or set GODWIT_BIN or --godwit")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base = Path(args.server_dir)
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    cases = args.cases.split(",")
    if "ledger" in cases and not ledger_bench_bin().exists():
        raise SystemExit(f"{ledger_bench_bin()} is missing: build it with "
                         "cargo build --release -p godwit-state --example ledger_bench (bench/run.sh does)")
    log = open(work / "bench.log", "a")
    log.write(f"\n=== {datetime.datetime.now().isoformat()} {shown(' '.join(sys.argv))}\n")
    url, found_by = Postgres.find(args.postgres)
    postgres = Postgres(url) if url else None
    args.postgres_note = (f"PostgreSQL: {shown(url)} (from {found_by})" if url else
                          f"PostgreSQL: none ({found_by}): godwit runs on SQLite only, and the ledger case measures SQLite only")
    print(args.postgres_note, flush=True)
    args.racy_flag = racy_flag_supported()
    args.racy_note = ("" if args.racy_flag else
                      f"{GODWIT} has no --racy-server-side-copy (`godwit migrate --help`): its row is left out.")
    if args.racy_note and any(c in cases for c in ("s3-small", "s3-large")):
        print("note: " + args.racy_note, flush=True)

    table = {}
    try:
        run_cases(cases, work, base, args, postgres, log, table)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        if postgres:
            postgres.drop()
    write_results(Path(args.out), table, args)
    print(f"wrote {args.out}")


def run_cases(cases, work, base, args, postgres, log, table):
    """Runs the cases asked for, in the order of DEFAULT_CASES, into table."""
    datasets = {}
    if {"small", "s3-small", "s3-small-cond"} & set(cases):
        small = work / f"data-small-{args.small_files}x4096"
        make_small(small, args.small_files)
        datasets["small"] = (small, dataset_size(small))
    if {"large", "s3-large", "s3-large-cond"} & set(cases):
        large = work / f"data-large-{args.large_files}x{args.large_mib}MiB"
        make_large(large, args.large_files, args.large_mib * MIB)
        datasets["large"] = (large, dataset_size(large))
    sizes = {"small": f"{args.small_files} x 4 KiB", "large": f"{args.large_files} x {args.large_mib} MiB"}
    templates = {}
    for key in ALL_CASES:
        if key not in cases:
            continue
        if key in ("small", "large"):
            src, expected = datasets[key]
            case = Case(key, TITLES[key], f"{sizes[key]} local->S3", src, expected, large=key == "large",
                        postgres=postgres if key == "small" else None)
            table[key] = run_case(case, work, base, args, log)
        elif key.startswith("s3-"):
            size = key.split("-")[1]
            src, expected = datasets[size]
            if size not in templates:
                print(f"populating the {size} source bucket", flush=True)
                templates[size] = make_template(base, work, size, src, expected)
            server = "serve-s3" if key.endswith("-cond") else "s3s-fs"
            case = Case(key, TITLES[key], f"{sizes[size]} S3->S3 {server}", "s3://src", expected,
                        large=size == "large", server=server, template=templates[size])
            table[key] = run_case(case, work, base, args, log)
        elif key == "ledger":
            table[key] = ledger(work, args, postgres, log)
        else:
            table[key] = {"resume": resume, "million": million, "plan": plan, "scale": scale}[key](work, base, args, log)


TITLES = {
    "small": "small: local → S3",
    "large": "large: local → S3",
    "s3-small": "small: S3 → S3 (same endpoint, s3s-fs)",
    "s3-large": "large: S3 → S3 (same endpoint, s3s-fs)",
    "s3-small-cond": "small: S3 → S3 (same endpoint, godwit serve-s3: conditional copies enforced)",
    "s3-large-cond": "large: S3 → S3 (same endpoint, godwit serve-s3: conditional copies enforced)",
}
# Cases of small objects, where the CPU an object says more than the CPU a run.
PER_OBJECT = {"small", "s3-small", "s3-small-cond", "scale"}


def versions():
    def v(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        except Exception as e:
            return f"unavailable ({e})"
    return {"godwit": v([GODWIT, "--version"]), "rclone": v(["rclone", "--version"]),
            "s5cmd": v(["s5cmd", "version"]), "s3sync": v(["s3sync", "--version"]),
            "aws": v(["aws", "--version"]), "s3s-fs": v(["s3s-fs", "--version"])}


def command_line(args):
    """The command that ran, as someone would type it again."""
    if os.environ.get("GODWIT_BENCH_VIA") == "run.sh":
        prefix = "bash bench/run.sh"
    else:
        prefix = "python3 bench/bench.py"
    godwit = f"GODWIT_BIN={shlex.quote(os.environ['GODWIT_BIN'])} " if os.environ.get("GODWIT_BIN") else ""
    return godwit + prefix + "".join(" " + shlex.quote(a) for a in sys.argv[1:])


def write_results(out, table, args):
    lines = ["# Benchmark results", "",
             f"Date: {datetime.date.today().isoformat()}. Machine: {os.cpu_count()} cores, "
             f"{platform.machine()}, {platform.system()} {platform.release()}. Server: for every run a fresh "
             f"server process on a new, empty directory on tmpfs ({args.server_dir}), on loopback: s3s-fs, or "
             "`godwit serve-s3` where the heading says so; stopped and deleted after the run. Figures are "
             f"medians of the runs (--runs {args.runs}); every run's result was checked complete (object count and "
             "bytes) before it counted. Tool CPU s: user + system of the tool (/usr/bin/time); server CPU s: what "
             "the server process used from the tool's start to its exit (/proc/PID/stat). Each tool runs with "
             "its defaults (only what reaches the server) and tuned (the flags of the earlier rounds; in the "
             "large cases also a single PUT an object); godwit's row is its defaults. A ratio \"godwit / peer\" is "
             "the peer's seconds over godwit's: above 1, godwit is faster.", "",
             "Command: `" + shown(command_line(args)) + "`", "",
             "Tools: " + "; ".join(f"{k}: {v}" for k, v in versions().items()), "", args.postgres_note, ""]
    if args.racy_note and ("s3-small" in table or "s3-large" in table):
        lines += [args.racy_note, ""]
    for key, title in TITLES.items():
        if key in table:
            lines += case_lines(title, key, table[key])
    if "million" in table or "plan" in table:
        lines += million_lines(table.get("million"), table.get("plan"), args)
    if "resume" in table:
        lines += resume_lines(table["resume"], args)
    if "scale" in table:
        lines += case_lines(f"scale: {args.scale_copy} × 1 KiB, local → S3 (one run)", "scale", table["scale"])
    if "ledger" in table:
        lines += ledger_lines(table["ledger"], table.get("small", {}).get("godwit"))
    out.write_text("\n".join(lines) + "\n")


def case_lines(title, key, rows):
    per_object = key in PER_OBJECT
    head = ["tool", "seconds", "objects/s", "MiB/s", "tool CPU s", "server CPU s"]
    head += ["tool CPU µs/object", "server CPU µs/object"] if per_object else []
    head += ["peak RSS MiB", "complete"]
    lines = [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for tool, r in rows.items():
        lines.append("| " + " | ".join(row_cells(tool, r, per_object)) + " |")
    lines += [""] + ratio_lines(key, rows)
    return lines


def row_cells(tool, r, per_object):
    if r["seconds"] is None:
        # A run killed at --timeout leaves no peak RSS.
        return [tool] + ["—"] * (7 if per_object else 5) + [f"{r['rss_mib']:.0f}" if r["rss_mib"] else "—", "no"]
    objects = r["objects_per_s"] * r["seconds"]
    cells = [tool, f"{r['seconds']:.2f}", f"{r['objects_per_s']:.0f}", f"{r['mib_per_s']:.1f}",
             f"{r['tool_cpu']:.2f}", f"{r['server_cpu']:.2f}"]
    if per_object:
        cells += [f"{1e6 * r['tool_cpu'] / objects:.0f}", f"{1e6 * r['server_cpu'] / objects:.0f}"]
    complete = "yes" if r["complete"] else f"{r['runs']} of {r['made']} runs"
    return cells + [f"{r['rss_mib']:.0f}", complete + (" (exit 3: warnings)" if r.get("warned") else "")]


def ratio_lines(key, rows):
    """godwit's speed against the fastest peer: peer seconds / godwit seconds (above 1: godwit is faster)."""
    def seconds(tool):
        return rows.get(tool, {}).get("seconds")

    peers = {t: r["seconds"] for t, r in rows.items() if not t.startswith("godwit") and r["seconds"]}
    defaults = {t: s for t, s in peers.items() if t.endswith("(defaults)")}
    lines = []
    for godwit_row in ("godwit", "godwit (tuned)", "godwit (--racy-server-side-copy)"):
        if not seconds(godwit_row) or not peers:
            continue
        best = min(peers, key=peers.get)
        text = f"{godwit_row} / fastest peer, any row ({best}): **{peers[best] / seconds(godwit_row):.2f}x**"
        if defaults:
            best_default = min(defaults, key=defaults.get)
            text += f"; / fastest peer's defaults ({best_default}): **{defaults[best_default] / seconds(godwit_row):.2f}x**"
        lines += [text, ""]
    if seconds("godwit") and seconds("godwit (postgres)"):
        lines += [f"godwit on PostgreSQL / godwit on SQLite: **{seconds('godwit') / seconds('godwit (postgres)'):.2f}x** "
                  "(target ≥ 0.8x)", ""]
    if key in ("s3-small", "s3-large"):
        lines += ["On s3s-fs, rclone, s5cmd and aws s3 cp copy server-side with unconditional CopyObject; s3sync "
                  "streams the bytes through itself, and so does godwit, which copies server-side only where the "
                  "server refuses a copy onto an existing key (s3s-fs ignores If-None-Match on CopyObject) or with "
                  "--racy-server-side-copy (a HEAD check first, racy as the peers' copies are).", ""]
    if key.endswith("-cond"):
        lines += ["`godwit serve-s3` refuses a CopyObject with If-None-Match onto an existing key, so godwit "
                  "copies server-side here with its defaults.", ""]
    return lines


def million_lines(result, plan_result, args):
    lines = [f"## {args.million_files} objects", ""]
    if plan_result:
        lines += [f"- plan only (dry run) of {args.million_files} files of 64 bytes: {plan_result['seconds']:.1f} s, "
                  f"tool CPU {plan_result['tool_cpu']:.1f} s, peak RSS {plan_result['rss_mib']:.0f} MiB, "
                  f"scanned {plan_result['scanned']} (exit {plan_result['code']})"]
    if result and "skipped" in result:
        lines += [f"- copy: skipped: {result['skipped']}"]
    elif result and result["seconds"]:
        objects = result["expected"][0]
        lines += [f"- copy with godwit's defaults, {objects} files of 64 bytes into a fresh s3s-fs, one run: "
                  f"{result['seconds']:.1f} s, {result['objects_per_s']:.0f} objects/s, "
                  f"peak RSS **{result['rss_mib']:.0f} MiB** (target ≤ 64 MiB), "
                  f"tool CPU {result['tool_cpu']:.1f} s ({1e6 * result['tool_cpu'] / objects:.0f} µs/object), "
                  f"server CPU {result['server_cpu']:.1f} s ({1e6 * result['server_cpu'] / objects:.0f} µs/object), "
                  f"complete: yes ({result['objects']} objects on the server)"]
    elif result:
        lines += [f"- copy with godwit's defaults: **incomplete** ({result.get('objects')} of "
                  f"{result['expected'][0]} objects on the server, exit {result['code']}; peak RSS "
                  f"{result['rss_mib']:.0f} MiB); see bench.log"]
    return lines + [""]


def resume_lines(results, args):
    lines = ["## resume", "",
             f"{args.resume_files} × {args.resume_mib} MiB with godwit's defaults: a full run on a fresh server; then, "
             "on another fresh server, a run killed (SIGKILL) once 90% of the bytes were recorded in its ledger, "
             "and its re-run, timed. Re-run seconds / full-run seconds:", "",
             "| full run s | killed at MiB | re-run s | re-run / full | bytes the re-run completed | complete |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r['full_seconds']:.2f} | {r['killed_at_bytes'] / MIB:.0f} | {r['rerun_seconds']:.2f} | "
                     f"{100 * r['ratio']:.0f}% | {r['rerun_bytes_copied']} | "
                     f"{'yes' if r['complete'] and r['full_complete'] else 'no'} |")
    good = [r["ratio"] for r in results if r["complete"] and r["full_complete"]]
    if good:
        lines += ["", f"Median re-run / full run, of {len(good)} complete: **{100 * statistics.median(good):.0f}%**"]
    late = sum(r["killed_at_bytes"] >= r["total_bytes"] for r in results)
    if late:
        # With objects sent whole (one PUT each) the ledger records no parts: bytes arrive an
        # object at a time, and 90% may be reached only with the last one.
        lines += ["", f"In {late} of {len(results)} the run had recorded every byte before it was killed: "
                  "its re-run had nothing left to copy, and measures a re-run of a finished migration."]
    return lines + [""]


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

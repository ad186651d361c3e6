#!/usr/bin/env python3
"""A real single-node Apache Kafka 4 broker (KRaft) as a plain JVM process, no Docker.

The broker jars come from Maven Central via dev/pom.xml (see /work/shared/KAFKA-LOCAL.md),
so any machine with a JDK 17+ and Maven can run integration tests against real Kafka.
Stdlib only: tests import this by putting dev/ on sys.path, and it runs as a script:

    python dev/kafka_local.py fetch                  # download jars into dev/.cache
    python dev/kafka_local.py start --dir DIR        # detached; writes DIR/bootstrap, DIR/pid
    python dev/kafka_local.py stop --dir DIR
    python dev/kafka_local.py run [--port P]         # foreground until Ctrl-C / SIGTERM
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO

DEV_DIR = Path(__file__).resolve().parent
POM = DEV_DIR / "pom.xml"
LOG4J_CONFIG = DEV_DIR / "log4j2.xml"
CACHE_DIR = DEV_DIR / ".cache"
LIBS_DIR = CACHE_DIR / "kafka-libs"
STAMP_NAME = ".stamp"

STOP_GRACE_SECONDS = 15.0
LOG_NAME = "kafka.log"


def kafka_version() -> str:
    """The pinned Kafka version, read from the pom so there is one place to bump it."""
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
    if not match:
        raise RuntimeError(f"no <kafka.version> property in {POM}")
    return match.group(1).strip()


def _stamp_text() -> str:
    # The pom hash catches log4j or plugin bumps too, not only the Kafka version.
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    return f"kafka.version={kafka_version()}\npom.sha256={digest}\n"


def _jars_ready(libs: Path) -> bool:
    stamp = libs / STAMP_NAME
    return stamp.is_file() and stamp.read_text() == _stamp_text() and any(libs.glob("*.jar"))


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise fetches across processes (pytest-xdist workers, parallel shells)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_jars() -> Path:
    """Return the folder of broker jars, running Maven only when it is missing or stale."""
    if _jars_ready(LIBS_DIR):
        return LIBS_DIR
    with _file_lock(CACHE_DIR / "kafka-libs.lock"):
        if _jars_ready(LIBS_DIR):  # another process fetched while we waited
            return LIBS_DIR
        mvn = shutil.which("mvn")
        if mvn is None:
            raise RuntimeError(
                "Maven ('mvn') is not on PATH; it is needed once to download the Kafka "
                "broker jars from Maven Central (apt-get install maven, or set "
                "KAFKA_BOOTSTRAP_SERVERS to use an existing broker)."
            )
        # Fetch into a fresh folder and swap it in: no jars of an older version end up on
        # the classpath, and a failed fetch leaves a working cache untouched.
        staging = CACHE_DIR / f"kafka-libs.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not any(staging.glob("*.jar")):
            shutil.rmtree(staging, ignore_errors=True)
            output = (result.stdout + result.stderr).strip()
            raise RuntimeError(
                f"fetching Kafka jars failed (exit {result.returncode}): {' '.join(cmd)}\n"
                f"{_tail_text(output)}"
            )
        (staging / STAMP_NAME).write_text(_stamp_text())
        old = CACHE_DIR / f"kafka-libs.old-{os.getpid()}"
        if LIBS_DIR.exists():
            LIBS_DIR.rename(old)
        staging.rename(LIBS_DIR)
        shutil.rmtree(old, ignore_errors=True)
    return LIBS_DIR


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1.

    The broker itself must get a fixed port: with port 0 the "port accepts" readiness
    signal is lost and the advertised listener would be wrong.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("no 'java' on PATH and no usable JAVA_HOME; Kafka needs JDK 17+")
    return java


def _tail_text(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _tail_file(path: Path, lines: int = 60) -> str:
    try:
        return _tail_text(path.read_text(errors="replace"), lines)
    except OSError:
        return "(no log)"


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like the JVM's listener: TIME_WAIT leftovers of a just-stopped broker are fine.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _formatted_cluster_id(data_dir: Path) -> str | None:
    """The cluster id of an already formatted log dir.

    A reused workdir (`start --dir` after `stop`) must keep it: format with a new random id
    fails even with --ignore-formatted, and skipping format saves two JVM start-ups.
    """
    try:
        text = (data_dir / "meta.properties").read_text()
    except OSError:
        return None
    match = re.search(r"^cluster\.id=(\S+)", text, re.MULTILINE)
    return match.group(1) if match else None


def server_properties(
    data_dir: Path, port: int, controller_port: int, partitions_default: int
) -> str:
    """Single node, KRaft combined mode, everything sized for one machine and for tests."""
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": str(partitions_default),
        "auto.create.topics.enable": "true",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "num.network.threads": "2",
        "num.io.threads": "2",
        # The 128 MiB default on a 512 MiB heap is a known out-of-memory cause.
        "log.cleaner.dedupe.buffer.size": "33554432",
        "log.cleaner.backoff.ms": "500",
    }
    return "".join(f"{key}={value}\n" for key, value in props.items())


class LocalKafka:
    """One broker+controller JVM in its own process group, with a throwaway or given workdir."""

    def __init__(
        self, workdir: Path | None = None, port: int | None = None, partitions_default: int = 4
    ) -> None:
        self.workdir: Path | None = Path(workdir) if workdir is not None else None
        self.port: int | None = port
        self.partitions_default = partitions_default
        self._owns_workdir = workdir is None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """The client bootstrap address; only valid once started."""
        if self.port is None or self._proc is None:
            raise RuntimeError("LocalKafka is not started")
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path:
        if self.workdir is None:
            raise RuntimeError("LocalKafka has no workdir yet")
        return self.workdir / LOG_NAME

    def _java_cmd(self, libs: Path, main: str, *args: str, heap: str = "512m") -> list[str]:
        return [
            _java(),
            f"-Xms{heap}",
            f"-Xmx{heap}",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            "-cp",
            f"{libs}/*",
            main,
            *args,
        ]

    def _run_tool(self, libs: Path, *args: str, timeout: float) -> str:
        # Short-lived CLI JVMs: a small heap and C1-only JIT start noticeably faster.
        cmd = self._java_cmd(libs, "kafka.tools.StorageTool", *args, heap="128m")
        cmd.insert(1, "-XX:TieredStopAtLevel=1")
        try:
            result = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise TimeoutError(f"StorageTool {args[0]} took longer than {timeout:.0f}s") from exc
        if result.returncode != 0:
            raise RuntimeError(
                f"StorageTool {args[0]} failed (exit {result.returncode}):\n"
                f"{_tail_text(result.stdout + result.stderr)}"
            )
        return result.stdout

    def _format(self, libs: Path, props: Path, deadline: float) -> None:
        remaining = max(deadline - time.monotonic(), 1.0)
        lines = self._run_tool(libs, "random-uuid", timeout=remaining).split()
        cluster_id = lines[-1] if lines else ""
        if not cluster_id:
            raise RuntimeError("StorageTool random-uuid printed no cluster id")
        remaining = max(deadline - time.monotonic(), 1.0)
        self._run_tool(
            libs, "format", "-t", cluster_id, "-c", str(props), "--ignore-formatted",
            timeout=remaining,
        )  # fmt: skip

    def start(self, timeout: float = 90) -> str:
        """Format storage, launch the broker and block until clients can connect."""
        if self._proc is not None:
            return self.bootstrap
        libs = ensure_jars()
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="kafka-local-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._launch(libs, time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)  # no orphaned 512 MiB JVM if the caller forgets stop()
        return self.bootstrap

    def _launch(self, libs: Path, deadline: float) -> None:
        assert self.workdir is not None
        if self.port is None:
            self.port = free_port()
        elif not _port_free(self.port):
            # Otherwise "port accepts" would wrongly report whatever holds it as ready.
            raise RuntimeError(f"port 127.0.0.1:{self.port} is already in use")
        controller_port = free_port()
        while controller_port == self.port:
            controller_port = free_port()
        props = self.workdir / "server.properties"
        props.write_text(
            server_properties(
                self.workdir / "data", self.port, controller_port, self.partitions_default
            )
        )
        if _formatted_cluster_id(self.workdir / "data") is None:
            self._format(libs, props, deadline)

        self._log_handle = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            self._java_cmd(libs, "kafka.Kafka", str(props)),
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,  # own process group: Ctrl-C in a shell reaches us only
        )
        # With a fixed port the client listener opens only once the broker is unfenced,
        # so "port accepts" means ready.
        while True:
            code = self._proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"Kafka broker exited with code {code} during startup; "
                    f"tail of {self.log_path}:\n{_tail_file(self.log_path)}"
                )
            if _port_open(self.port):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Kafka broker not accepting connections on 127.0.0.1:{self.port}; "
                    f"tail of {self.log_path}:\n{_tail_file(self.log_path)}"
                )
            time.sleep(0.2)

    def detach(self) -> None:
        """Leave the broker running after this process exits (the CLI's `start`)."""
        atexit.unregister(self.stop)
        self._owns_workdir = False
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        self._proc = None

    def stop(self) -> None:
        """SIGTERM the broker's process group, SIGKILL after a grace period; idempotent."""
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        if self._owns_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def wait(self) -> int:
        """Block until the broker exits; returns its exit code."""
        if self._proc is None:
            raise RuntimeError("LocalKafka is not started")
        return self._proc.wait()

    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # The broker leads its own session, so its pgid is its pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _alive(pid: int) -> bool:
    """True if pid runs and is not a zombie (a container's PID 1 may never reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _is_our_broker(pid: int) -> bool:
    """Guard against pid reuse: only signal a JVM running kafka.Kafka."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc to check against; trust the pid file
    return b"kafka.Kafka" in cmdline


def _read_pid(directory: Path) -> int | None:
    try:
        return int((directory / "pid").read_text().strip())
    except (OSError, ValueError):
        return None


def stop_detached(directory: Path, grace: float = STOP_GRACE_SECONDS) -> bool:
    """Stop the broker recorded in directory/pid; returns whether one was running."""
    pid = _read_pid(directory)
    running = pid is not None and _alive(pid) and _is_our_broker(pid)
    if pid is not None and running:
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            _signal_group(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
    for name in ("pid", "bootstrap"):
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()
    return running


def _cmd_fetch(args: argparse.Namespace) -> int:
    started = time.monotonic()
    libs = ensure_jars()
    jars = len(list(libs.glob("*.jar")))
    print(f"{libs} ({jars} jars, Kafka {kafka_version()}, {time.monotonic() - started:.1f}s)")
    return 0


def _cmd_start(args: argparse.Namespace) -> int:
    directory: Path = args.dir.resolve()
    pid = _read_pid(directory)
    if pid is not None and _alive(pid) and _is_our_broker(pid):
        print(f"already running (pid {pid})", file=sys.stderr)
        print((directory / "bootstrap").read_text().strip())
        return 0
    kafka = LocalKafka(workdir=directory, port=args.port, partitions_default=args.partitions)
    bootstrap = kafka.start(timeout=args.timeout)
    (directory / "pid").write_text(f"{kafka.pid}\n")
    (directory / "bootstrap").write_text(f"{bootstrap}\n")
    kafka.detach()
    print(bootstrap)
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    directory: Path = args.dir.resolve()
    if not stop_detached(directory):
        print(f"no broker running for {directory}", file=sys.stderr)
    return 0


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _cmd_run(args: argparse.Namespace) -> int:
    # SIGINT explicitly too: a shell's background job starts with SIGINT ignored.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    kafka = LocalKafka(workdir=args.dir, port=args.port, partitions_default=args.partitions)
    try:
        print(kafka.start(timeout=args.timeout), flush=True)
        print(f"log: {kafka.log_path} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        code = kafka.wait()
        print(f"broker exited with code {code}:\n{_tail_file(kafka.log_path)}", file=sys.stderr)
        return code or 1
    except KeyboardInterrupt:
        return 0
    finally:
        kafka.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kafka_local.py", description="Run a real Apache Kafka broker from Maven jars."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    fetch = sub.add_parser("fetch", help="download the broker jars (runs mvn once)")
    fetch.set_defaults(func=_cmd_fetch)

    def broker_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--port", type=int, default=None, help="client port (default: free)")
        p.add_argument("--partitions", type=int, default=4, help="num.partitions default")
        p.add_argument("--timeout", type=float, default=90, help="startup timeout, seconds")

    start = sub.add_parser(
        "start", help="start detached; writes DIR/bootstrap and DIR/pid, exits once ready"
    )
    start.add_argument("--dir", type=Path, required=True, help="workdir (kept on stop)")
    broker_options(start)
    start.set_defaults(func=_cmd_start)

    stop = sub.add_parser("stop", help="stop the broker started with `start --dir DIR`")
    stop.add_argument("--dir", type=Path, required=True)
    stop.set_defaults(func=_cmd_stop)

    run = sub.add_parser("run", help="run in the foreground until Ctrl-C or SIGTERM")
    run.add_argument("--dir", type=Path, default=None, help="workdir (default: temporary)")
    broker_options(run)
    run.set_defaults(func=_cmd_run)

    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except (RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())

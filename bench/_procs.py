"""Process management for benchmarks: children on 127.0.0.1 free ports that cannot outlive the bench.

Every child is started with ``PR_SET_PDEATHSIG`` (the kernel sends it SIGKILL when the bench dies,
even by SIGKILL) and registered, so ``stop_all()`` (called from ``finally`` and ``atexit``) stops
whatever is still running: SIGTERM, then SIGKILL after a grace period. CPU and memory come from
``/proc`` (psutil is not a dependency): user + system time, current RSS and peak RSS (VmHWM).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import getpass
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_CHILDREN: list[Child] = []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:
    """In a child (preexec_fn or multiprocessing target): get SIGKILL when the parent goes away."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass(frozen=True)
class ProcSample:
    cpu_s: float  # user + system time of the process (all its threads)
    rss_kb: int
    hwm_kb: int  # peak RSS since the process started


def proc_sample(pid: int) -> ProcSample | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "; comm may contain spaces
    cpu = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime (fields 14 and 15 of stat)
    kb = {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines()
          if line.startswith(("VmRSS:", "VmHWM:"))}
    return ProcSample(cpu, kb.get("VmRSS", 0), kb.get("VmHWM", 0))


def descendants(pid: int) -> list[int]:
    """The live children of ``pid``, their children and so on (from /proc/<pid>/task/*/children)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                kids = [int(k) for k in task.read_text().split()]
                out += kids
                todo += kids
    return out


def tree_sample(pid: int) -> ProcSample | None:
    """``pid`` with its live descendants (the gateway's MQTT publisher process): CPU and RSS summed,
    peak RSS as the sum of each one's peak (an upper bound of the tree's peak)."""
    own = proc_sample(pid)
    if own is None:
        return None
    cpu, rss, hwm = own.cpu_s, own.rss_kb, own.hwm_kb
    for child in descendants(pid):
        sample = proc_sample(child)
        if sample is not None:
            cpu, rss, hwm = cpu + sample.cpu_s, rss + sample.rss_kb, hwm + sample.hwm_kb
    return ProcSample(cpu, rss, hwm)


class Child:
    """One subprocess with its output in a log file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, cwd: Path | None = None) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=cwd, preexec_fn=die_with_parent)
        _CHILDREN.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def check(self) -> None:
        if not self.alive():
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")

    def stop(self, grace_s: float = 15.0) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        with contextlib.suppress(ValueError):
            _CHILDREN.remove(self)


def stop_all() -> None:
    """Stop every child still registered, newest first (the gateway before the servers it uses)."""
    for child in reversed(list(_CHILDREN)):
        with contextlib.suppress(Exception):
            child.stop(grace_s=5.0)


atexit.register(stop_all)


def wait_until(check: Callable[[], bool], what: str, timeout_s: float, children: Sequence[Child] = (),
               every_s: float = 0.2) -> None:
    """Poll ``check`` until true; fail after ``timeout_s`` or as soon as one of ``children`` dies."""
    deadline = time.monotonic() + timeout_s
    while not check():
        for child in children:
            child.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout_s:.0f} s: {what}")
        time.sleep(every_s)


def http_get(url: str, timeout_s: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return str(resp.read().decode())


def http_ok(url: str) -> bool:
    try:
        http_get(url, 1.0)
        return True
    except (urllib.error.URLError, OSError):
        return False


def tcp_ok(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def start_mosquitto(directory: Path) -> tuple[Child, int]:
    """Mosquitto without persistence and without per-client queue limits: with the default 1,000
    queued QoS 1 messages a subscriber that falls behind loses messages in the broker, which would be
    counted against the gateway. ``max_inflight_messages 1000``: with the default 20 the broker's QoS 1
    window to the measuring subscriber was the bottleneck (at 31,000 values/s p50 latency 900 ms, all
    of it queued in the broker for the subscriber, with the gateway's outbox holding 0.1 s); it is also
    the MQTT 5 Receive Maximum the gateway takes as its in-flight window (``max_inflight`` unset). ``user``:
    started as root, mosquitto switches to user "mosquitto", and a change of credentials clears
    PR_SET_PDEATHSIG."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = directory / "mosquitto.conf"
    conf.write_text("\n".join([
        f"listener {port} {HOST}", "allow_anonymous true", "persistence false", "log_dest stdout",
        "log_type error", "log_type warning", "max_queued_messages 0", "max_queued_bytes 0",
        "max_inflight_messages 1000",
        f"user {getpass.getuser()}",
    ]) + "\n")
    child = Child("mosquitto", ["/usr/sbin/mosquitto", "-c", str(conf)], directory / "mosquitto.log")
    wait_until(lambda: tcp_ok(port), "mosquitto accepting connections", 15, [child], 0.05)
    return child, port


def start_victoria_metrics(directory: Path) -> tuple[Child, str]:
    """``-search.latencyOffset=0s``: by default points of the last 30 s are invisible to queries,
    and the bench counts right after the last write."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://{HOST}:{port}"
    child = Child("victoria-metrics", [
        "victoria-metrics", f"-httpListenAddr={HOST}:{port}", f"-storageDataPath={directory / 'data'}",
        "-loggerLevel=ERROR", "-search.latencyOffset=0s", "-retentionPeriod=1y",
    ], directory / "victoria-metrics.log")
    wait_until(lambda: http_ok(f"{url}/health"), "victoria-metrics healthy", 30, [child], 0.05)
    return child, url

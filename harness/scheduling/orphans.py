"""Ray processes that a killed driver left running.  A run that starts its own local Ray instance records the
instance's processes (PIDs with their start times, so a reused PID is never mistaken for one) in a file of this
machine's state folder; the next run stops the processes of every recorded instance whose driver is gone, with
their children (trial workers), and nothing else: never another live run's, never a cluster's it joined.

Linux only (it reads ``/proc``); elsewhere nothing is recorded or stopped.
"""
from __future__ import annotations

import atexit
import json
import os
import signal
from pathlib import Path

PROC = Path("/proc")


def state_dir() -> Path:
    return Path(os.environ.get("HARNESS_STATE_DIR", "~/.cache/harness")).expanduser() / "ray-local"


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent PID, start time in clock ticks) of a live process, or None."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return int(fields[1]), int(fields[19])


def _alive(pid: int, started: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[1] == started


def _descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            parents.setdefault(stat[0], []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _workers_of(raylet: int, since: int) -> list[int]:
    """Ray's worker processes (trials) started by the raylet ``raylet``: they carry its PID in their environment,
    and outlive it when it is killed (they are then children of init, so not found as its descendants)."""
    marker = f"RAY_RAYLET_PID={raylet}".encode()
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        stat = _stat(int(entry.name))
        if marker in environ.split(b"\0") and stat is not None and stat[1] >= since:
            found.append(int(entry.name))
    return found


def record_local_instance() -> Path | None:
    """Record the processes of the local Ray instance this driver started; the file goes when the driver exits."""
    if not PROC.is_dir():
        return None
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    me = _stat(os.getpid())
    if node is None or me is None:
        return None
    processes = [(info.process.pid, stat[1], kind) for kind, infos in node.all_processes.items() for info in infos
                 if info.process is not None and (stat := _stat(info.process.pid)) is not None]
    folder = state_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{os.getpid()}.json"
    path.write_text(json.dumps({"driver": [os.getpid(), me[1]], "processes": processes}))
    atexit.register(lambda: path.unlink(missing_ok=True))
    return path


def stop_orphans(log=print) -> int:
    """Stop the recorded Ray processes (and their children) of drivers that are gone; returns how many."""
    folder = state_dir()
    if not PROC.is_dir() or not folder.is_dir():
        return 0
    stopped = 0
    for path in folder.glob("*.json"):
        try:
            entry = json.loads(path.read_text())
            driver, processes = entry["driver"], entry["processes"]
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            continue
        if _alive(*driver):
            continue  # a live run: its Ray is its own
        victims: list[int] = []
        for pid, started, kind in processes:
            if kind == "raylet":
                victims += _workers_of(pid, started)
            if _alive(pid, started):
                victims += [*reversed(_descendants(pid)), pid]
        for victim in dict.fromkeys(victims):
            try:
                os.kill(victim, signal.SIGKILL)
                stopped += 1
            except OSError:
                pass
        path.unlink(missing_ok=True)
    if stopped:
        log(f"stopped {stopped} Ray process(es) left running by an earlier run that was killed")
    return stopped

"""The Ray engine: a stage's work units run on the actors of a Ray cluster (docs/architecture.md, "Executors").

Each actor holds one `BatchWorker` (its processor or media loader made once per actor), runs it on every batch
of a unit, and writes the unit's rows with the same `ShardFiles` rule this process uses, so the files are the
same bytes as `--engine local` writes. The driver plans the units, hands each to a free actor, takes the
`WrittenUnit`s back in unit order and checks every row of each is accounted for; `run_stage` then renames the
files into place and commits the folder by writing its state file last.

A unit whose actor dies is retried on the actor Ray restarts; one that fails `UNIT_ATTEMPTS` times stops the
run naming it. A finished unit leaves a marker next to its files, so a rerun of the same job after a killed
driver skips the units already written.

Example:
    >>> run_stage(stage, "out/normalised", RayExecutor(address="auto"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import fsspec

from vlmdata.errors import FatalError
from vlmdata.folders import PARTIAL_SUFFIX
from vlmdata.optional import require
from vlmdata.rows import Reject
from vlmdata.shard_files import DEFAULT_MAX_SHARD_BYTES, ShardFiles, join
from vlmdata.stage import BatchWorker, Tally, WorkUnit, WrittenUnit

UNIT_ATTEMPTS = 3
# What the local executor sets in its worker processes: a thread per CPU the actor holds, sleeping threads.
ACTOR_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}
# Passed on from the driver, as the local executor's processes inherit them (cli.arrow_buffers_from_the_system_allocator).
PASSED_ON = ("ARROW_DEFAULT_MEMORY_POOL",)


@dataclass
class RayExecutor:
    """Runs work units on Ray actors; writes each unit's shard files from the actor that worked on it.

    Attributes:
        address: the cluster to join ("auto": the one this machine belongs to, or "HOST:PORT", "ray://...");
            None starts a Ray of this machine for the run and stops it after.
        num_workers: actors; by default one per CPU of the cluster.
    """

    address: str | None = None
    num_workers: int | None = None
    resumes = True
    workers: int = field(default=0, init=False)
    nodes: int = field(default=0, init=False)
    worker_nodes: int = field(default=0, init=False)
    startup_s: float = field(default=0.0, init=False)
    units_resumed: int = field(default=0, init=False)

    def map(self, worker: BatchWorker, units: Iterable[WorkUnit], units_dir: str | Path) -> Iterator[WrittenUnit]:
        ray = require("ray", "ray", "--engine ray")
        units_dir = str(units_dir)
        if units_dir.startswith("memory://"):
            raise FatalError("A memory:// output lives in this process only; the Ray engine's workers cannot write there.")
        started, self.units_resumed = time.monotonic(), 0
        joined = _join(ray, self.address)
        actors = []
        try:
            self.nodes = len(_alive_nodes(ray))
            if self.nodes > 1:
                check_shared(ray, units_dir)
            actors = self._start_actors(ray, worker, units_dir)
            self.startup_s = round(time.monotonic() - started, 3)
            yield from self._run(ray, actors, units, units_dir)
        finally:
            for actor in actors:
                ray.kill(actor)
            if joined:
                ray.shutdown()

    def describe(self) -> dict:
        return {"engine": "ray", "address": self.address or "local", "workers": self.workers, "nodes": self.nodes,
                "worker_nodes": self.worker_nodes, "startup_s": self.startup_s, "units_resumed": self.units_resumed}

    def _start_actors(self, ray, worker: BatchWorker, units_dir: str) -> list:
        cpus = ray.cluster_resources().get("CPU", 1.0)
        self.workers = self.num_workers or max(1, int(cpus))
        cpus_each = min(1.0, cpus / self.workers)
        threads = str(max(1, int(cpus_each)))
        actor_class = ray.remote(UnitActor).options(
            num_cpus=cpus_each,
            max_restarts=-1,  # a dead actor comes back; the unit it had is what counts the attempts
            max_task_retries=UNIT_ATTEMPTS - 1,
            runtime_env={"env_vars": {**ACTOR_ENV, "OMP_NUM_THREADS": threads, "RAYON_NUM_THREADS": threads,
                                      **{name: os.environ[name] for name in PASSED_ON if name in os.environ}}},
        )
        actors = [actor_class.remote(worker, units_dir) for _ in range(self.workers)]
        self.worker_nodes = len(set(_get(ray, [actor.start.remote() for actor in actors], "starting the workers")))
        return actors

    def _run(self, ray, actors: list, units: Iterable[WorkUnit], units_dir: str) -> Iterator[WrittenUnit]:
        """Each unit to the next free actor; the results in unit order, each checked for lost rows."""
        # One unit at a time per actor: a unit queued behind one that kills its actor would fail with it, and be
        # named for a fault not its own. A unit takes seconds; handing out the next one takes milliseconds.
        free = list(actors)
        running: dict = {}  # ObjectRef -> (unit, actor)
        finished: dict[int, WrittenUnit] = {}
        next_index = 0
        pending = iter(units)
        more = True
        while more or running:
            while more and free:
                unit = next(pending, None)
                if unit is None:
                    more = False
                    break
                written = read_marker(units_dir, unit)
                if written is not None:
                    self.units_resumed += 1
                    finished[unit.index] = written
                    continue
                actor = free.pop()
                running[actor.run.remote(unit)] = (unit, actor)
            if running:
                ready, _ = ray.wait(list(running), num_returns=1)
                unit, actor = running.pop(ready[0])
                finished[unit.index] = _checked(unit, _get(ray, ready[0], _unit_name(unit)))
                free.append(actor)
            while next_index in finished:
                yield finished.pop(next_index)
                next_index += 1
        if finished:  # cannot happen while units are numbered in order; checked, as a lost unit is lost rows
            raise FatalError(f"work unit {next_index} never arrived, though units {sorted(finished)} did; nothing was committed.")


class UnitActor:
    """A Ray actor's state: the stage's worker, whose resources are made once for all the units it runs."""

    def __init__(self, worker: BatchWorker, units_dir: str):
        self.worker, self.units_dir = worker, units_dir

    def start(self) -> str:
        self.worker.resources()
        import ray

        return ray.get_runtime_context().get_node_id()

    def run(self, unit: WorkUnit) -> WrittenUnit:
        files = ShardFiles(self.units_dir, unit_stem(unit.index), self.worker.features, DEFAULT_MAX_SHARD_BYTES)
        rejects: list[Reject] = []
        tally = Tally()
        for batch in unit.batches:
            result = self.worker(batch)
            files.write_table(result.table)
            rejects += result.rejects
            tally.add(result.tally)
        written = WrittenUnit(unit.index, files.close(), rejects, tally)
        write_marker(self.units_dir, written)
        return written


def unit_stem(index: int) -> str:
    return f"unit-{index:05d}"


def write_marker(units_dir: str, written: WrittenUnit) -> None:
    """Records a finished unit (its files, rejects and tally) next to its files, once they are all written."""
    marker = {
        "files": [path.rsplit("/", 1)[-1] for path in written.paths],
        "rejects": [reject.to_dict() for reject in written.rejects],
        "rows_read": written.tally.rows_read,
        "rows_written": written.tally.rows_written,
        "counts": dict(written.tally.counts),
        "lengths": {str(length): count for length, count in written.tally.lengths.items()},
    }
    fs, folder = fsspec.core.url_to_fs(units_dir)
    # Written aside, then moved: a marker is either whole or absent (an object store's write is whole anyway).
    temporary = join(folder, f".{unit_stem(written.index)}.{uuid.uuid4().hex}.tmp")
    fs.pipe(temporary, json.dumps(marker).encode())
    fs.mv(temporary, join(folder, f"{unit_stem(written.index)}.json"))


def read_marker(units_dir: str, unit: WorkUnit) -> WrittenUnit | None:
    """The unit a killed run finished, if its marker and every file it names are there."""
    fs, folder = fsspec.core.url_to_fs(units_dir)
    try:
        marker = json.loads(fs.cat(join(folder, f"{unit_stem(unit.index)}.json")))
    except (OSError, ValueError):
        return None
    paths = [join(units_dir, name) for name in marker["files"]]
    if not all(fs.isfile(join(folder, name)) for name in marker["files"]):
        return None
    tally = Tally(marker["rows_read"], marker["rows_written"], Counter(marker["counts"]),
                  Counter({int(length): count for length, count in marker["lengths"].items()}))
    rejects = [Reject(**reject) for reject in marker["rejects"]]
    return _checked(unit, WrittenUnit(unit.index, paths, rejects, tally))


def _checked(unit: WorkUnit, written: WrittenUnit) -> WrittenUnit:
    """The unit's result, once every row of it is written or rejected."""
    tally = written.tally
    if tally.rows_read != unit.rows or tally.rows_read != tally.rows_written + len(written.rejects):
        raise FatalError(
            f"{_unit_name(unit)} lost rows: {unit.rows} sent, {tally.rows_read} read, {tally.rows_written} written "
            f"and {len(written.rejects)} rejected; nothing was committed."
        )
    return written


def _unit_name(unit: WorkUnit) -> str:
    return f"work unit {unit.index} (input rows {unit.first_row}-{unit.first_row + unit.rows - 1})"


def _get(ray, refs, what: str):
    """`ray.get`, with a unit that kept failing, or a worker that could not start, said in one sentence."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as error:
        cause = error.cause if isinstance(getattr(error, "cause", None), BaseException) else error
        if isinstance(cause, FatalError):
            raise FatalError(f"{what}: {cause}") from None
        raise FatalError(f"{what} failed: {type(cause).__name__}: {_first_line(cause)}") from None
    except ray.exceptions.RayActorError as error:
        raise FatalError(
            f"{what} failed {UNIT_ATTEMPTS} times: its worker died each time ({_first_line(error)}); "
            "nothing was committed."
        ) from None


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _join(ray, address: str | None) -> bool:
    """Connects to the cluster (or starts a Ray of this machine); True when this run must shut it down."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    except ConnectionError as error:
        raise FatalError(f"Cannot join the Ray cluster at {address}: {_first_line(error)}.") from None
    return True


def _alive_nodes(ray) -> list[dict]:
    return [node for node in ray.nodes() if node.get("Alive")]


def check_shared(ray, units_dir: str) -> None:
    """Refuses an output that the cluster's other nodes cannot see: each node looks for a file written here."""
    probe = join(units_dir, f".probe-{uuid.uuid4().hex}")
    fs, path = fsspec.core.url_to_fs(probe)
    fs.pipe(path, probe.encode())
    try:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        looks = ray.remote(num_cpus=0)(_sees)
        checks = {
            node["NodeID"]: looks.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            ).remote(probe)
            for node in _alive_nodes(ray)
        }
        blind = [node for node, ref in checks.items() if not ray.get(ref)]
    finally:
        fs.rm(path)
    if blind:
        raise FatalError(
            f"The output {units_dir.removesuffix('/.units').removesuffix(PARTIAL_SUFFIX)} is not on storage that every node of the cluster "
            f"shares ({len(blind)} of {len(checks)} nodes cannot see it): write to a shared file system or an "
            "fsspec URL (s3://...)."
        )


def _sees(probe: str) -> bool:
    try:
        fs, path = fsspec.core.url_to_fs(probe)
        return fs.cat(path) == probe.encode()
    except OSError:
        return False

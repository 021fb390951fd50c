"""``--engine ray``: the per-file path of :mod:`mimi_cli.pipeline` on Ray Data, which scales to a cluster.

    from_items(tasks)                       one row per file
    → map(FileActor, concurrency=N)         actor pool: a pipeline.Worker each (weights loaded once,
                                            1 BLAS thread); it reads, checks, encodes or decodes and
                                            writes the file exactly as the local engine does
    → iter_rows()                           one FileResult per file, as each is done

A file that fails is a "failed" result and the run goes on; a weights error would
fail every file, so it stops the run with its one-line message. Manifest and
Parquet shards are written by the driver (:mod:`mimi_cli.batch`), as for the local engine.

Ray is optional: ``pip install "mimi-cli[ray]"``. Without ``RAY_ADDRESS`` a local
Ray instance is started with ``num_cpus`` = the number of actors; with it, the run
joins that cluster (see docs/datasets.md).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator

from mimi_cli.errors import MimiError, WeightsError, first_line, needs_extra
from mimi_cli.pipeline import FileResult, Settings, Task, skipped


# Environment the actors need to find weights as the driver does.
FORWARDED_ENVIRONMENT = ("MIMI_WEIGHTS", "ENCODEC_WEIGHTS", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE",
                         "HF_ENDPOINT")

TRIES = 3  # how many actors a file that kills them may take down: Ray Data's default is forever


class FileActor:
    """One :class:`~mimi_cli.pipeline.Worker` per actor (weights loaded on its first file), one BLAS thread.

    It works in ``folder``, the one the command was run from, where that folder exists on its node (a shared
    file system mounted at the same path, as the inputs and outputs must be): a relative path then names the
    same file as in the driver, and results name files as the local engine's do. (Ray starts an actor in a
    folder of its own session.)"""

    def __init__(self, settings: Settings, folder: str | None = None):
        from mimi_cli.core.threads import keep_freed_memory, set_threads
        from mimi_cli.pipeline import Worker

        if folder is not None and os.path.isdir(folder):
            os.chdir(folder)
        keep_freed_memory()  # as the mimi command does (see cli.main)
        set_threads(settings.threads)
        self.worker = Worker(settings)
        try:
            import ray

            self.node = ray.get_runtime_context().get_node_id()
        except Exception:  # outside Ray (tests call the actor directly)
            self.node = None

    def __call__(self, row: dict) -> dict:
        task = row["task"]
        try:
            result = self.worker.run(task)
            result.node = self.node
            return {"result": result, "fatal": None}
        except WeightsError as exc:  # would fail every file: the driver stops the run with this message
            return {"result": FileResult.of(task, "failed", error=str(exc)), "fatal": str(exc)}


def _not_started(exc: Exception, address: str | None) -> MimiError:
    """Why Ray did not start, and where to look: a cluster's logs are on its head node; a local Ray keeps its
    sessions in RAY_TMPDIR, else (Linux) TMPDIR, else /tmp (Ray's own rule), which a refusal there names."""
    if address:
        return MimiError(f"Ray did not start at RAY_ADDRESS={address}: {first_line(exc, 300)}; its logs are on the "
                         "cluster's head node (/tmp/ray/session_latest/logs by default), or run with --engine local")
    temp = os.environ.get("RAY_TMPDIR") or (sys.platform.startswith("linux") and os.environ.get("TMPDIR")) or "/tmp"
    remedy = f"its logs are in {os.path.join(temp, 'ray', 'session_latest', 'logs')}"
    if isinstance(exc, OSError):  # the folder for its sessions: missing, read-only, full, not a folder
        remedy = f"it keeps its sessions in {os.path.join(temp, 'ray')}: set RAY_TMPDIR to a writable folder"
    return MimiError(f"Ray did not start on this machine: {first_line(exc, 300)}; {remedy}, or run with --engine "
                     "local")


def run_ray(tasks: list[Task], settings: Settings, actors: int) -> Iterator[FileResult]:
    """Run ``tasks`` on Ray Data with ``actors`` actors; each result as it comes (skipped ones first), so
    that the driver can show progress and write Parquet shards as they fill, holding no more than that."""
    ray = _import_ray()
    for name in ("ray", "ray.data"):  # their lines would drown the summary; what matters comes back as results
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or None
        if address is not None:
            _check_answers(address)
        try:  # locally: a CPU per actor, plus one for Ray's own light tasks
            ray.init(address=address, num_cpus=None if address else actors + 1, include_dashboard=False,
                     log_to_driver=False, logging_level=logging.ERROR)
        except Exception as exc:  # Ray's own words (a node that timed out starting, a cluster of another version)
            raise _not_started(exc, address) from None
        _quiet_raylet_messages(ray)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.max_errored_blocks = -1  # a file whose actor died on every try is dropped, and reported below

    for task in tasks:
        if task.skip:
            yield skipped(task, settings)
    pending = [{"task": t} for t in tasks if not t.skip]
    if pending:
        ds = ray.data.from_items(pending, override_num_blocks=len(pending))
        # On a cluster, actors go to different nodes first (every machine works): Ray Data's own default
        # for actor pools, "SPREAD" (asking for it, by ray_remote_args_fn or DataContext, is deprecated
        # since Ray 2.60 and printed a warning). The driver's settings that say where weights are travel
        # with the actors (a node started earlier lacks them).
        env = {key: os.environ[key] for key in FORWARDED_ENVIRONMENT if key in os.environ}
        # A dead actor (killed, out of memory, its node lost) is replaced and its file tried again, but not
        # forever (Ray Data's default): a file that kills every actor it is given fails, and alone (an actor
        # holds one file at a time, so no other file dies with it).
        pool = ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1)
        with warnings.catch_warnings():  # Ray 2.60 names no parameter for it and calls the keyword deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            ds = ds.map(FileActor, fn_constructor_kwargs={"settings": settings, "folder": os.getcwd()}, compute=pool,
                        num_cpus=1, runtime_env={"env_vars": env}, max_task_retries=TRIES - 1)
        returned = set()
        try:
            for row in ds.iter_rows():
                if row["fatal"]:
                    raise WeightsError(row["fatal"])
                returned.add(row["result"].key)
                yield row["result"]
        except Exception as exc:  # Ray wraps what a stage raised; a MimiError inside is the user's message
            raise _as_user_error(exc) from None
        for item in pending:
            if item["task"].key not in returned:
                yield FileResult.of(item["task"], "failed", error=f"its Ray actor died on each of {TRIES} tries "
                                    "(killed, or out of memory)")


def _quiet_raylet_messages(ray) -> None:
    """Ray's driver prints its raylet's messages (an actor died, its task will be tried again) to standard
    output from a thread of its own, whatever ``log_to_driver`` says; each file's result says what
    became of it instead. (A private hook of Ray's: left as it is if a Ray release has moved it.)"""
    module = getattr(getattr(ray, "_private", None), "worker", None)
    show = getattr(module, "print_to_stdstream", None)
    if show is None or getattr(show, "quiet_raylet", False):
        return

    def quiet(data, *args, **kwargs):
        if data.get("pid") != "raylet":
            show(data, *args, **kwargs)

    quiet.quiet_raylet = True
    module.print_to_stdstream = quiet


def _as_user_error(exc: BaseException) -> MimiError:
    """The first MimiError in the chain of causes Ray built around it, or a one-line summary."""
    seen = exc
    while seen is not None:
        if isinstance(seen, MimiError):
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    return MimiError(f"the Ray run failed: {type(exc).__name__}: {first_line(exc, 1000)}")


def _check_answers(address: str, timeout: float = 10.0) -> None:
    """A cluster address (``HOST:PORT``, ``ray://HOST:PORT``; ``auto`` is Ray's to find) that something answers
    at: one that nothing answers at had Ray's driver wait for minutes, and a malformed one was a traceback."""
    import socket

    target = address.removeprefix("ray://")
    if target in ("auto", "local"):
        return
    host, colon, port = target.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise MimiError(f"RAY_ADDRESS={address} is not a Ray cluster's address (HOST:PORT, ray://HOST:PORT or auto)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise MimiError(f"no Ray cluster answers at RAY_ADDRESS={address} ({reason}); start it (ray start --head) "
                        "or unset RAY_ADDRESS to run Ray on this machine") from None


def _import_ray():
    with needs_extra('--engine ray needs Ray Data: pip install "mimi-cli[ray]"', "ray"):
        import ray
        import ray.data  # noqa: F401
    return ray

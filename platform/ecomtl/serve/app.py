"""The typed Serve app builder: ``import_path: ecomtl.serve.app:build_app``.

    serve run serve_configs/demo.yaml                 # args (bundle, autoscaling …) in the YAML
    ecomtl serve ~/ecomtl_results/demo/bundle         # quick local start, default args

Serve passes the YAML's ``args:`` as a dict; they are validated as ``AppArgs`` (unknown
keys fail with their dotted name) before any replica starts.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Optional, Union

from ray.serve import Application

from ecomtl.model.bundle import check_bundle
from ecomtl.serve.deployments import Encoder, Head, read_spec
from ecomtl.serve.http import Ingress
from ecomtl.serve.schemas import AppArgs

__all__ = ["AppArgs", "build_app", "head_deployment_name"]


def head_deployment_name(task: str) -> str:
    return f"head_{task}"


def build_app(args: Union[AppArgs, dict]) -> Application:
    args = AppArgs.model_validate(args.model_dump() if isinstance(args, AppArgs) else args)
    path = bundle_path(args.bundle)
    if "$" in path:
        raise ValueError(f"args.bundle: {args.bundle!r} names an unset environment variable")
    bundle = str(check_bundle(Path(path)).resolve())
    spec = read_spec(bundle)
    unknown = set(args.tasks) - set(spec["tasks"])
    if unknown:
        raise ValueError(f"args.tasks: {sorted(unknown)} not in the bundle; its tasks: {', '.join(spec['tasks'])}")

    # A replica being replaced (rollout, scale-down) finishes what it holds: its requests end
    # within the app's deadline, so Serve must not kill it sooner (a killed ingress is a 500).
    drain = {"graceful_shutdown_timeout_s": args.request_timeout_s + 5}
    encoder = None
    if args.layout == "shared":
        e = args.encoder
        encoder = Encoder.options(name="encoder", **e.serve_options(), **drain).bind(bundle, e.batching, e.torch_threads,
                                                                                   args.precision)
    heads = {}
    for task in spec["tasks"]:
        h = args.head_args(task)
        heads[task] = Head.options(name=head_deployment_name(task), **h.serve_options(), **drain).bind(
            bundle, task, encoder, h.batching, h.torch_threads, args.precision)
    return Ingress.options(name="ingress", **args.ingress.ingress_serve_options(), **drain).bind(
        bundle, heads, encoder, args)


def serve_bundle(args: Union[AppArgs, dict], host: str = "127.0.0.1", port: int = 8000,
                 name: str = "ecomtl", blocking: bool = True, cpus: Optional[float] = None, log=print):
    """``ecomtl serve BUNDLE``: the app on a local Ray (or the cluster of ``RAY_ADDRESS``),
    HTTP on host:port, the OpenAPI page at /docs. Replica sizes not given in ``args`` are
    fitted to the CPUs Ray has (serve/sizing.py). Blocks until Ctrl-C or SIGTERM, then
    deletes the app and shuts Serve (and a Ray it started) down."""
    import ray
    from ray import serve

    from ecomtl.ray_env import init_ray, serve_fast_path_defaults
    from ecomtl.serve.sizing import describe, fit_to_machine

    args = dict(args.model_dump(exclude_unset=True) if isinstance(args, AppArgs) else args)
    build_app(args)  # validate and check the bundle before starting anything
    started_ray = not ray.is_initialized()
    if started_ray and not os.environ.get("RAY_ADDRESS"):  # a cluster has its own setting (cluster.yaml)
        mode = serve_fast_path_defaults()
        log(f"ecomtl serve: Ray Serve throughput mode {mode} (set RAY_SERVE_THROUGHPUT_OPTIMIZED=0 for Ray's "
            "defaults)", flush=True)
    init_ray()
    # after ray.init, which sets its own SIGTERM handler (sys.exit) on the driver
    previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops as Ctrl-C does
    try:
        if not {"ingress", "encoder", "heads"} & set(args):
            have = cpus or ray.available_resources().get("CPU", 0)
            n = len(read_spec(bundle_path(args["bundle"]))["tasks"])
            args.update(fit_to_machine(args.get("layout", "shared"), n, have))
            log(f"ecomtl serve: sized for {have:g} CPUs: {describe(args)}", flush=True)
        app = build_app(args)
        timeout = AppArgs.model_validate(args).request_timeout_s
        # the proxy's own deadline a little past the app's, so that the app's JSON 504 answers first
        serve.start(http_options={"host": host, "port": port, "request_timeout_s": timeout + 5})
        handle = serve.run(app, name=name, route_prefix="/")
        log(f"ecomtl serving at http://{host}:{port}  (API docs: http://{host}:{port}/docs)", flush=True)
        if not blocking:
            return handle
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log("ecomtl serve: stopping", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if blocking:
            serve.shutdown()
            if started_ray:
                ray.shutdown()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def bundle_path(bundle: str) -> str:
    """``~`` and ``$VARS`` expanded (an unset variable stays as ``$NAME``)."""
    return str(Path(os.path.expandvars(bundle)).expanduser())

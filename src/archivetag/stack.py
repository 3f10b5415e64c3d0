"""Run the whole stack on this machine: the three model services and the orchestrator.

Each runs as its own local process (as in a deployment, where each scales on its own).
The model services listen on loopback only. `up` waits until every one is SERVING,
prints the endpoints, and stops all of them cleanly on Ctrl-C / SIGTERM.

Restarts: a service that exits (crash, kill, out of memory) is started again after 1 s,
then 2, 4, ... up to 60 s between tries (each ±20%, runtime/backoff.py); the wait starts afresh once it ran 60 s. Each
restart is printed with the service's log file. A service that is hung (not exited) is
not restarted: the orchestrator fails over around it (see `archivetag status`).

Tokens: given --api-tokens-file or --api-tokens, the orchestrator requires
'authorization: Bearer <token>'; each entry is 'client-name:token', tokens at least 16
characters. Without either, auth is off (one machine, one user).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import grpc

from archivetag.runtime import registry
from archivetag.runtime.backoff import backoff_seconds
from archivetag.runtime.channels import is_loopback_host
from archivetag.runtime.health_client import check_async
from archivetag.runtime.options import MODELS_OPTION
from archivetag.runtime.settings import Option, OptionGroup, parse_bool, parse_list, parse_path
from archivetag.runtime.specs import ServerSpec

MISSING_MODELS_HELP = (
    "run `archivetag models pull` (the real weights; needs network) "
    "or `archivetag models smoke` (small random models, offline; meaningless tags)"
)

UP_OPTIONS = OptionGroup(
    "up",
    (
        MODELS_OPTION,
        Option("orchestrator_host", "127.0.0.1",
               "Address the orchestrator listens on; the model services stay on loopback."),
        *(Option(f"{spec.name}_port", spec.port, f"{spec.title} port.", int) for spec in registry.servers()),
        Option("metrics", True, "Serve Prometheus metrics (on the --*-metrics-port ports).", parse_bool),
        *(Option(f"{spec.name}_metrics_port", spec.metrics_port, f"Prometheus metrics port of {spec.title}; 0: none.",
                 int)
          for spec in registry.servers()),
        Option(
            "api_tokens_file", None,
            "Client tokens file; given, the orchestrator requires tokens (off by default on loopback).",
            parse_path, metavar="FILE",
        ),
        Option(
            "orchestrator_auth", None,
            "Require client tokens. Unset: on with --api-tokens-file, off on loopback, and a non-loopback "
            "--orchestrator-host without tokens refuses to start; --no-orchestrator-auth serves it to anyone.",
            parse_bool,
        ),
        Option(
            "api_tokens", [],
            "Comma-separated 'client-name:token' pairs (tokens of at least 16 characters), as --api-tokens-file; "
            "passed to the orchestrator in its environment, not on its command line.",
            parse_list,
        ),
        Option("log_dir", "~/.cache/archivetag/logs",
               "Folder for the services' logs and pid files.", parse_path),
        Option("start_timeout_seconds", 900.0, "Give up if the stack is not SERVING after this long.", float),
    ),
)
OPTION_GROUPS = [UP_OPTIONS]


def archivetag_command(*args: str) -> list[str]:
    """argv that runs `archivetag ARGS` with this Python. -P keeps the working directory off sys.path,
    so a folder named archivetag/ where `up` was started can never shadow the installed package."""
    return [sys.executable, "-P", "-m", "archivetag", *args]


class StackError(RuntimeError):
    """The stack cannot start; the message says why and what to do."""


def orchestrator_auth(settings) -> bool:
    """Whether the orchestrator requires tokens; StackError when the choice would be unsafe or impossible."""
    auth, host = settings.orchestrator_auth, settings.orchestrator_host
    tokens = settings.api_tokens_file or settings.api_tokens
    if auth is None:
        if not tokens and not is_loopback_host(host):
            raise StackError(
                f"--orchestrator-host {host} is reachable from the network but no client tokens are set: give "
                "--api-tokens-file FILE or --api-tokens, or --no-orchestrator-auth to let anyone who "
                "can reach the port tag photos"
            )
        return bool(tokens)
    if auth and not tokens:
        raise StackError("--orchestrator-auth needs --api-tokens-file FILE or --api-tokens ('client-name:token' pairs)")
    return auth


def missing_models(models: Path) -> list[str]:
    return [name for name in registry.MODEL_NAMES if not (models / name).is_dir() or not any((models / name).iterdir())]


@dataclass
class Service:
    spec: ServerSpec
    argv: list[str]
    port: int
    log_path: Path
    process: subprocess.Popen | None = None
    restarts: int = 0
    exits: int = 0  # exits since it last ran a minute: the backoff's attempt
    restart_at: float | None = None
    started_at: float = field(default_factory=time.monotonic)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class Stack:
    def __init__(self, settings, say=print):
        self.settings = settings
        self.say = say
        self.stopping = False
        self.services: list[Service] = []
        s = settings
        ports = {spec.name: getattr(s, f"{spec.name}_port") for spec in registry.servers()}
        s.log_dir.mkdir(parents=True, exist_ok=True)
        if not any(not spec.is_model for spec in registry.servers()):
            raise StackError("the orchestrator is not installed (pip install archivetag-orchestrator)")
        for spec in registry.servers():
            metrics = getattr(s, f"{spec.name}_metrics_port") if s.metrics else 0
            argv = archivetag_command("serve", spec.name, "--port", str(ports[spec.name]),
                                      "--metrics-port", str(metrics))
            if not spec.is_model:
                argv += ["--host", s.orchestrator_host]
                for backend in registry.models():
                    argv += [f"--{backend.name}-target", f"127.0.0.1:{ports[backend.name]}"]
                argv += ["--auth"] if orchestrator_auth(s) else ["--no-auth"]
                argv += ["--api-tokens-file", str(s.api_tokens_file)] if s.api_tokens_file else []
            else:
                argv += ["--host", "127.0.0.1", "--models", str(s.models)]
            self.services.append(Service(spec, argv, ports[spec.name], s.log_dir / f"{spec.name}.log"))

    # -- processes ----------------------------------------------------------------------
    def _spawn(self, service: Service) -> None:
        log = open(service.log_path, "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if service.name == "orchestrator" and self.settings.api_tokens:
            env["ARCHIVETAG_API_TOKENS"] = ",".join(self.settings.api_tokens)  # not in `ps` output
        service.process = subprocess.Popen(
            service.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
        )
        log.close()
        service.started_at = time.monotonic()
        (self.settings.log_dir / f"{service.name}.pid").write_text(f"{service.process.pid}\n")

    def start(self) -> None:
        missing = missing_models(self.settings.models)
        if missing:
            raise StackError(f"no models for {', '.join(missing)} in {self.settings.models}: {MISSING_MODELS_HELP}")
        for service in self.services:
            self._spawn(service)

    async def supervise(self) -> None:
        """Restart services that exit, with exponential backoff (1 s doubling to 60 s)."""
        while not self.stopping:
            now = time.monotonic()
            for service in self.services:
                code = service.process.poll() if service.process else None
                if code is not None and service.restart_at is None:
                    # It ran for a while: start the backoff afresh.
                    service.exits = 1 if now - service.started_at > 60 else service.exits + 1
                    wait = backoff_seconds(service.exits, 1.0, 60.0)
                    service.restart_at = now + wait
                    self.say(f"{service.name} exited with code {code}; restarting in {wait:.0f} s "
                             f"(log: {service.log_path})")
                elif service.restart_at is not None and now >= service.restart_at:
                    service.restart_at = None
                    service.restarts += 1
                    self._spawn(service)
            await asyncio.sleep(0.25)

    async def stop(self, grace: float = 40.0) -> list[int]:
        """SIGTERM every service, wait for them to drain, SIGKILL what is left."""
        self.stopping = True
        for service in self.services:
            if service.process and service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(s.process and s.process.poll() is None for s in self.services):
            await asyncio.sleep(0.1)
        for service in self.services:
            if service.process and service.process.poll() is None:
                service.process.kill()
                service.process.wait()
        return [s.process.returncode for s in self.services if s.process]

    # -- readiness ----------------------------------------------------------------------
    async def _state(self, service: Service) -> tuple[str, str]:
        """(SERVING / NOT_SERVING / UNREACHABLE, phase text) of one service."""
        async with grpc.aio.insecure_channel(service.address) as channel:
            status, _ = await check_async(channel, service.spec.health_service)
            if status not in ("SERVING", "NOT_SERVING"):
                return status, "starting"
            if status == "SERVING" or not service.spec.is_model:
                return status, "serving" if status == "SERVING" else "starting"
            try:
                info = await service.spec.stub(channel).GetModelInfo(service.spec.model_info_request(), timeout=2)
                state = info.state
            except grpc.aio.AioRpcError:
                return status, "starting"
            if state.phase == "failed":
                raise StackError(f"{service.name} cannot serve: {state.reason} (log: {service.log_path})")
            return status, f"{state.phase}: {state.reason}" if state.reason else state.phase

    async def wait_serving(self, timeout: float) -> None:
        started = time.monotonic()
        shown: dict[str, str] = {}
        while True:
            states = await asyncio.gather(*(self._state(s) for s in self.services))
            for service, (_, phase) in zip(self.services, states):
                if shown.get(service.name) != phase:
                    shown[service.name] = phase
                    self.say(f"  {service.name:12} {phase}  ({time.monotonic() - started:.0f} s)")
            if all(status == "SERVING" for status, _ in states):
                return
            if time.monotonic() - started > timeout:
                waiting = [s.name for s, (st, _) in zip(self.services, states) if st != "SERVING"]
                raise StackError(
                    f"not SERVING after {timeout:.0f} s: {', '.join(waiting)} (logs in {self.settings.log_dir})")
            await asyncio.sleep(0.5)

    def endpoints_text(self) -> str:
        lines = ["endpoints:"]
        for service in self.services:
            host = "127.0.0.1" if service.spec.is_model else self.settings.orchestrator_host
            lines.append(f"  {service.name:12} {host}:{service.port}  ({service.spec.health_service})")
        orchestrator = next(s for s in self.services if not s.spec.is_model)
        # With auth on, the hints carry the token as the tools take it (never the token itself): set
        # ARCHIVETAG_TOKEN to one of the tokens given to `up`, and they work as printed.
        auth = orchestrator_auth(self.settings)
        header = ' -H "authorization: Bearer $ARCHIVETAG_TOKEN"' if auth else ""
        lines += [
            "probe with grpcurl:",
            *(f"  grpcurl -plaintext -d '{{\"service\":\"{s.spec.health_service}\"}}' 127.0.0.1:{s.port} "
              "grpc.health.v1.Health/Check" for s in self.services),
            f"  grpcurl -plaintext 127.0.0.1:{orchestrator.port} list",
            f"  grpcurl -plaintext{header} 127.0.0.1:{orchestrator.port} archivetag.v1.TaggingService/GetStatus",
            f"tag photos:  archivetag tag PATH... --target 127.0.0.1:{orchestrator.port}"
            + ("   (with ARCHIVETAG_TOKEN set to your token)" if auth else ""),
        ]
        if auth:
            lines.insert(1, "clients need a token: export ARCHIVETAG_TOKEN=<one of the tokens given to up>")
        return "\n".join(lines)


async def run_stack(settings) -> int:
    # Line by line even into a pipe or file: a supervisor watching for "SERVING" must see it when it happens.
    cast(io.TextIOWrapper, sys.stdout).reconfigure(line_buffering=True)  # typeshed: a TextIO, which has none
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        stack = Stack(settings)
        stack.start()
    except StackError as exc:
        print(f"archivetag up: {exc}", file=sys.stderr)
        return 2
    supervisor = asyncio.create_task(stack.supervise())
    print(f"starting the stack (models: {settings.models}; logs: {settings.log_dir})")
    waiter = asyncio.create_task(stack.wait_serving(settings.start_timeout_seconds))
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if waiter.done():
        try:
            waiter.result()
            print(f"all {len(stack.services)} services are SERVING\n" + stack.endpoints_text() + "\nCtrl-C stops them.")
            await stop.wait()
        except StackError as exc:
            print(f"archivetag up: {exc}", file=sys.stderr)
            code = 1
    waiter.cancel()
    stopper.cancel()
    print("stopping ...")
    supervisor.cancel()
    await asyncio.gather(supervisor, waiter, stopper, return_exceptions=True)
    exit_codes = await stack.stop()
    print("stopped" + ("" if all(c == 0 for c in exit_codes) else f" (exit codes {exit_codes})"))
    return code


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def run(args: argparse.Namespace) -> int:
    return asyncio.run(run_stack(args))

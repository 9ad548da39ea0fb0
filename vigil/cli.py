"""The ``vigil`` command: the composition root that starts one role, or all of them (demo).

Each role reads one settings object at start (environment ``VIGIL_<ROLE>_*`` and an
optional TOML file's ``[role]`` table) and stops with a message naming any bad setting.
SIGINT and SIGTERM stop a role cleanly: it finishes and acknowledges what it holds.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from pydantic import BaseModel

from wire import ConfigError, RoleSettings

log = logging.getLogger("vigil")


def _settings_help(cls: type[RoleSettings]) -> str:
    """List every setting of a role with its environment variable and default."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    lines = [f"settings (environment variables, or keys of the [{cls.section}] table in --config):"]

    def walk(model: type[BaseModel], path: list[str]) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, [*path, name])
                continue
            env = prefix + "__".join([*path, name]).upper()
            value = field.get_default(call_default_factory=True)
            default = "" if field.is_required() else f" (default {value})"
            lines.append(f"  {env}{default}")

    walk(cls, [])
    return "\n".join(lines)


def _install_signals(stop: threading.Event) -> None:
    first: list[float] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        # A second Ctrl-C means: now. One arriving within a second of the first is the same
        # keypress delivered twice (a wrapper such as make or timeout forwarding it).
        if first and time.monotonic() - first[0] > 1.0:
            log.warning("vigil: second %s, exiting at once", signal.Signals(signum).name)
            raise SystemExit(130)
        if not first:
            first.append(time.monotonic())
            log.info("vigil: %s received, stopping cleanly (Ctrl-C again to force)",
                     signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _role(cls_path: str, run_path: str) -> tuple[Callable[[], type[RoleSettings]], Callable[[], Any]]:
    """Import a role's settings class and run function lazily, so `vigil x --help` is fast
    and one role's dependencies are not loaded by another."""

    def load_attr(path: str) -> Any:
        module, _, attr = path.rpartition(".")
        return getattr(__import__(module, fromlist=[attr]), attr)

    return (lambda: load_attr(cls_path)), (lambda: load_attr(run_path))


ROLES: dict[str, tuple[str, str, str]] = {
    # name: (help, settings class, run function(settings, stop_event))
    "demo": ("everything in one process: embedded broker and store, simulated fleet, API on :8000",
             "vigil.demo.DemoSettings", "vigil.demo.run"),
    "edge": ("an edge agent: reads devices through drivers, publishes over MQTT",
             "edge.settings.EdgeSettings", "edge.runtime.run"),
    "ingest": ("an ingest worker: MQTT telemetry into InfluxDB or the embedded store",
               "ingest.settings.IngestSettings", "ingest.service.run"),
    "api": ("the REST API and dashboard", "api.settings.ApiSettings", "api.server.run"),
    "alerting": ("on-call pages to phones: routing, rotations, escalation, ack links (Apprise channels)",
                 "alerting.settings.AlertingSettings", "alerting.service.run"),
    "sim": ("a simulated fleet of devices driving real edge agents",
            "simulators.settings.SimSettings", "simulators.runner.run"),
    "maintenance": ("the maintenance worker: anomaly events into work orders; SLA timers, the closed "
                    "loop, PM and inspection rounds",
                    "maintenance.settings.MaintenanceSettings", "maintenance.service.run"),
    "analytics": ("an analytics worker: telemetry anomalies into the database and onto _alarm topics",
                  "vigil.analytics_role.AnalyticsRoleSettings", "vigil.analytics_role.run"),
    # security (README, "Security"): broker accounts, API users and tokens
    "agent": ("broker credentials and topic ACLs of edge agents and services (provision|revoke|service|list)",
              "vigil.provision.BrokerAuthSettings", "vigil.provision.run"),
    "user": ("API users: add|passwd|role|disable|enable|list (the API's database_url)",
             "api.settings.ApiSettings", "api.security.cli.run"),
    "token": ("API tokens for integrations: create|revoke|list", "api.settings.ApiSettings",
              "api.security.cli.run"),
}


# One-shot commands under a role: ``vigil <role> <action> [options]``, e.g. ``vigil sim score``.
# Each is a module with ``add_arguments(parser: argparse.ArgumentParser) -> None`` and
# ``main(settings, args: argparse.Namespace) -> int``; it gets the role's settings, loaded
# as for the role itself. Register here: role -> {action: (help, module path)}.
ACTIONS: dict[str, dict[str, tuple[str, str]]] = {}
ACTIONS.setdefault("analytics", {})["replay"] = (
    "run the streaming detectors over recorded CSVs (NAB, SKAB) and write detections", "analytics.replay")
ACTIONS.setdefault("ingest", {})["deadletters"] = (
    "list dead letters, or replay them once fixed (list|replay)", "vigil.deadletters")
ACTIONS.setdefault("sim", {})["score"] = (
    "compare a run's ground truth with the anomalies Vigil raised: precision, recall, time to detect",
    "simulators.score_command")
for _action, _help in (("provision", "new credentials and ACL of one agent (prints its password once)"),
                      ("revoke", "remove an agent's credentials and ACL"),
                      ("service", "credentials and ACL of a Vigil service (ingest, analytics, ...)"),
                      ("list", "accounts in the ACL file")):
    ACTIONS.setdefault("agent", {})[_action] = (_help, "vigil.provision")
for _action, _help in (("add", "add a user with a role (and sites)"), ("passwd", "set a user's password"),
                      ("role", "change a user's role and sites"), ("disable", "disable a user"),
                      ("enable", "enable a user again"), ("list", "list users")):
    ACTIONS.setdefault("user", {})[_action] = (_help, "api.security.cli")
for _action, _help in (("create", "create a token (its secret is shown once)"), ("revoke", "revoke a token"),
                      ("list", "list tokens")):
    ACTIONS.setdefault("token", {})[_action] = (_help, "api.security.cli")
ACTIONS.setdefault("sim", {})["record-anomalies"] = (
    "keep every anomaly published on the _alarm topics as JSON lines, for score", "simulators.record_command")


def _common(name: str) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, metavar="FILE",
                        help=f"TOML file whose [{name}] table holds settings (environment variables win)")
    common.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return common


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vigil", description="Vigil: building equipment and security "
                                     "monitoring that turns faults into work for people.")
    sub = parser.add_subparsers(dest="role", required=True, metavar="ROLE")
    for name, (text, cls_path, _run) in ROLES.items():
        settings_cls, _ = _role(cls_path, _run)
        common = _common(name)
        p = sub.add_parser(name, help=text, description=text, epilog=_settings_help(settings_cls()),
                           formatter_class=argparse.RawDescriptionHelpFormatter, parents=[common])
        actions = ACTIONS.get(name, {})
        if actions:
            acts = p.add_subparsers(dest="action", metavar="ACTION",
                                    help="without one, the role runs until stopped")
            for action, (action_help, module) in actions.items():
                a = acts.add_parser(action, help=action_help, description=action_help, parents=[common])
                __import__(module, fromlist=["add_arguments"]).add_arguments(a)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _text, cls_path, run_path = ROLES[args.role]
    settings_cls, run_fn = _role(cls_path, run_path)
    try:
        settings = settings_cls().load(args.config)
    except ConfigError as e:
        print(f"vigil {args.role}: {e}", file=sys.stderr)
        return 2
    action = getattr(args, "action", None)
    if action is not None:
        module = __import__(ACTIONS[args.role][action][1], fromlist=["main"])
        try:
            return int(module.main(settings, args))
        except Exception as e:
            if not isinstance(e, _start_errors()):
                raise
            print(f"vigil {args.role} {action}: {e}", file=sys.stderr)
            return 2
    stop = threading.Event()
    _install_signals(stop)
    try:
        run_fn()(settings, stop)
    except Exception as e:
        if not isinstance(e, _start_errors()):
            raise
        print(f"vigil {args.role}: {e}", file=sys.stderr)
        return 2
    return 0


def _start_errors() -> tuple[type[Exception], ...]:
    """The errors a role stops with at start that say what to fix: no traceback for them."""
    from alerting.errors import AlertingError
    from analytics import AnalyticsError
    from edge.errors import EdgeError
    from ingest.store import StoreError
    from maintenance.errors import MaintenanceError
    from simulators.errors import SimError
    from vigil.broker import BrokerStartError
    from vigil.demo import DemoError

    return (ConfigError, EdgeError, StoreError, SimError, BrokerStartError, DemoError, MaintenanceError,
            AlertingError, AnalyticsError)


if __name__ == "__main__":
    sys.exit(main())

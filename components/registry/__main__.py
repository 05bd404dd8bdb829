"""CLI: python -m components.registry list | promote VERSION [--force --reason TEXT] | rollback [--reason TEXT]."""

from __future__ import annotations

import argparse

from components.common.cli import StageError, log, run_stage, stage_parser
from components.common.params import Params
from components.common.registry import existing_registry_uri
from components.lib import registry_store
from components.lib.promotion import RegistryRefusal, format_table


def run(params: Params, args: argparse.Namespace) -> None:
    client, name = registry_store.client_for(existing_registry_uri(params)), params.register.model_name
    try:
        if args.command == "list":
            print(format_table(registry_store.rows(client, name)))
            current, history = registry_store.state(client, name)
            print(f"\nchampion: {'v' + current if current else 'none'}; history: "
                  f"{' -> '.join('v' + v for v in history) or 'empty'}")
        elif args.command == "promote":
            log.info(registry_store.promote(client, name, args.version.lstrip("v"), args.force, args.reason).message)
        else:
            log.info(registry_store.rollback(client, name, args.reason).message)
    except RegistryRefusal as exc:
        raise StageError(f"refused: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("List, promote and roll back versions of the registered kidney CT model.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every version with aliases, gate verdict and test metrics")
    promote = sub.add_parser("promote", help="make VERSION the champion (refused if it failed the gates)")
    promote.add_argument("version", help="registry version number, e.g. 3")
    promote.add_argument("--force", action="store_true", help="promote although the gates failed")
    promote.add_argument("--reason", default="", help="justification, recorded on the version (needed with --force)")
    back = sub.add_parser("rollback", help="give the champion alias back to the previous champion")
    back.add_argument("--reason", default="", help="why, recorded on the withdrawn version")
    return run_stage("registry", run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""`bento-fleet`: model operations from the command line, on the service's own settings.

    bento-fleet drift reference --images DIR [--variant NAME]   # profile a known-good set
    bento-fleet drift reference --first N                       # ... or the first N predictions
    bento-fleet drift check [--fail-on-drift]                   # run the drift job once
    bento-fleet drift report [--html drift.html]                # check, table + HTML with plots
    bento-fleet ab report [--control NAME] [--since-hours H] [--html ab.html] [--json ab.json]
    bento-fleet keys new NAME                                   # an API key and its settings entry
    bento-fleet migrate [--grant-to ROLE]                       # schema to head, as its owner
    bento-fleet model import NAME --architecture A --weights FILE [--labels FILE] [--version V]
                                                                # into BentoML's model store

Settings come from the same place as the service's (BENTO_FLEET_CONFIG, BENTO_FLEET_* env),
so on a host provisioned by the bento_service role it reads the same database.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .api.auth import key_digest, new_key
from .settings import ApiKey, get_settings
from .store.db import SchemaBehind, ensure_schema, make_engine, migrate
from .store.dead_letters import DeadLetters
from .store.log import PredictionRecord, insert_ignoring_duplicates

EXIT_DRIFT = 3  # `drift check --fail-on-drift` when a feature drifted: for cron and CI


def _engine(settings):
    """The settings' database, its schema at head: migrated, or checked where the service's
    role may not migrate (database.migrate: false)."""
    engine = make_engine(settings.database_url, settings.database.connect_timeout_s)
    ensure_schema(engine, settings.database.migrate)
    return engine


def migrate_command(args, settings) -> int:
    """Bring the schema to head as the role that owns it, and give the runtime role exactly what
    the service needs. Lines that changed something end in "(changed)" (for Ansible)."""
    from sqlalchemy.exc import SQLAlchemyError

    engine = make_engine(settings.database_url, settings.database.connect_timeout_s)
    try:
        before, head, granted = migrate(engine, grant_to=args.grant_to)
    except (SQLAlchemyError, ValueError) as exc:
        # The driver's message alone: SQLAlchemy's would add the statement, never the password,
        # but the role's task prints this line, so keep it short.
        print(f"not migrated: {getattr(exc, 'orig', None) or exc}".strip(), file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    if before == head:
        print(f"schema: at {head} already")
    else:
        print(f"schema: {before or 'empty'} -> {head} (changed)")
    if args.grant_to:
        state = "set (changed)" if granted else "as wanted already"
        print(f"grants of {args.grant_to}: {state}")
    return 0


def drift_reference(args, settings) -> int:
    from .modelops.drift import Profile
    from .modelops.jobs import reference_from_images
    from .store import drift_runs as drift_store

    engine = _engine(settings)
    try:
        variant = settings.variant(args.variant)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    name, version = variant.model.display_name, variant.model.version
    if args.images:
        profile = reference_from_images(settings, Path(args.images), variant)
        source = f"images in {args.images}"
    else:
        profile = Profile.from_observations(
            *drift_store.first_predictions(engine, version, args.first)
        )
        source = f"first {args.first} predictions"
        if profile.samples < args.first:
            print(
                f"only {profile.samples} predictions of version {version} are logged; "
                f"{args.first} were asked for",
                file=sys.stderr,
            )
            return 2
    drift_store.save_reference(engine, name, version, source, profile)
    print(f"reference for {name} version {version}: {profile.samples} images ({source})")
    return 0


def drift_check(args, settings) -> int:
    from .modelops.jobs import model_versions, run_drift_check
    from .modelops.reports import drift_html, drift_text

    engine = _engine(settings)
    checks = [
        run_drift_check(engine, settings, name, version)
        for name, version in model_versions(settings)
    ]
    print(drift_text(checks))
    if getattr(args, "html", None):
        Path(args.html).write_text(drift_html(checks))
        print(f"HTML report: {args.html}")
    if getattr(args, "fail_on_drift", False) and any(check.drifted for check in checks):
        return EXIT_DRIFT
    return 0


def ab_report_command(args, settings) -> int:
    from .modelops.ab import ab_report
    from .modelops.reports import ab_html, ab_text

    try:
        summaries, comparisons = ab_report(_engine(settings), args.control, args.since_hours)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(ab_text(summaries, comparisons))
    if args.html:
        Path(args.html).write_text(ab_html(summaries, comparisons))
        print(f"HTML report: {args.html}")
    if args.json:
        report = {
            "variants": [summary.as_dict() for summary in summaries],
            "comparisons": [comparison.as_dict() for comparison in comparisons],
        }
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def dead_letters_command(args, settings) -> int:
    """List the rows the database refused (and why); with --replay, insert them again."""
    letters = DeadLetters(settings.spool_dir)
    if args.replay:
        engine = _engine(settings)
        written, refused = letters.replay(
            lambda row: insert_ignoring_duplicates(engine, [PredictionRecord.from_row(row)])
        )
        print(f"replayed: {written} written, {refused} still refused")
        return 1 if refused else 0
    count = 0
    for error, row in letters.entries():
        count += 1
        print(f"{row['id']}  {row['created_at']}  request {row['request_id']}: {error}")
    print(f"{count} dead-lettered rows in {letters.path}")
    return 0


def new_key_command(args, _settings) -> int:
    """A fresh API key for the caller, and the entry of auth.api_keys that lets it in: only the
    digest goes into settings; the key is shown once, here."""
    key = new_key()
    entry = {"name": args.name, "sha256": key_digest(key)}
    try:
        ApiKey(**entry)  # the name must be one settings accept
    except ValueError:
        print(
            f"{args.name!r}: a key's name is letters, digits, _ . @ - (64 at most)", file=sys.stderr
        )
        return 2
    print(f"key (give it to {args.name}; it is not stored anywhere): {key}")
    print(f"auth.api_keys entry: {json.dumps(entry)}")
    return 0


def model_import_command(args, _settings) -> int:
    """Check the model, then put it into BentoML's model store; print the tag to serve."""
    from .serving.stored_models import ImportRefused, import_model

    try:
        tag = import_model(
            args.name,
            args.architecture,
            Path(args.weights),
            Path(args.labels) if args.labels else None,
            args.version,
            input_size=args.input_size,
            resize_size=args.resize_size,
            mean=tuple(args.mean) if args.mean else None,
            std=tuple(args.std) if args.std else None,
        )
    except ImportRefused as exc:
        print(f"not imported: {exc}", file=sys.stderr)
        return 2
    print(f"imported {tag}; serve it with model.tag: {tag} (BENTO_FLEET_MODEL__TAG={tag})")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="bento-fleet", description=__doc__.split("\n\n")[0])
    groups = root.add_subparsers(dest="group", required=True)

    drift = groups.add_parser("drift", help="drift detection").add_subparsers(
        dest="command", required=True
    )
    reference = drift.add_parser("reference", help="store a reference profile")
    source = reference.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", metavar="DIR", help="a folder of known-good images")
    source.add_argument("--first", type=int, metavar="N", help="the first N predictions logged")
    reference.add_argument("--variant", help="whose model profiles the images (default: first)")
    reference.set_defaults(run=drift_reference)
    check = drift.add_parser("check", help="compare the recent window with the reference")
    check.add_argument("--fail-on-drift", action="store_true", help=f"exit {EXIT_DRIFT} on drift")
    check.set_defaults(run=drift_check)
    report = drift.add_parser("report", help="check, then a table and an HTML report")
    report.add_argument("--html", default="drift-report.html", help="where the HTML goes")
    report.set_defaults(run=drift_check)

    ab = groups.add_parser("ab", help="A/B and shadow testing").add_subparsers(
        dest="command", required=True
    )
    ab_report = ab.add_parser("report", help="per-variant figures and a verdict")
    ab_report.add_argument("--control", help="the variant in place (default: most requests)")
    ab_report.add_argument("--since-hours", type=float, help="only predictions this recent")
    ab_report.add_argument("--html", help="also write an HTML report here")
    ab_report.add_argument("--json", help="also write the figures as JSON here")
    ab_report.set_defaults(run=ab_report_command)

    prediction_log = groups.add_parser("log", help="the prediction log").add_subparsers(
        dest="command", required=True
    )
    dead_letters = prediction_log.add_parser(
        "dead-letters", help="rows the database refused for good, and why"
    )
    dead_letters.add_argument(
        "--replay", action="store_true", help="insert them again; exit 1 if any is still refused"
    )
    dead_letters.set_defaults(run=dead_letters_command)

    keys = groups.add_parser("keys", help="API keys for POST /feedback").add_subparsers(
        dest="command", required=True
    )
    new = keys.add_parser("new", help="a new key, and its entry for auth.api_keys")
    new.add_argument("name", help="who holds it (letters, digits, _ . @ -)")
    new.set_defaults(run=new_key_command, needs_settings=False)

    migration = groups.add_parser(
        "migrate", help="bring the schema to head, as the role that owns it"
    )
    migration.add_argument(
        "--grant-to",
        metavar="ROLE",
        help="the service's runtime role: it gets read and insert (update where the code "
        "updates) on the tables, nothing more (PostgreSQL)",
    )
    migration.set_defaults(run=migrate_command)

    model = groups.add_parser("model", help="models in BentoML's model store").add_subparsers(
        dest="command", required=True
    )
    importing = model.add_parser(
        "import", help="a torchvision state_dict, its labels and preprocessing, under a tag"
    )
    importing.add_argument("name", help="the model's name in the store, e.g. pets-resnet50")
    importing.add_argument(
        "--architecture", required=True, help="torchvision's name, e.g. resnet50"
    )
    importing.add_argument(
        "--weights", required=True, metavar="FILE", help="torch.save'd state_dict"
    )
    importing.add_argument("--labels", metavar="FILE", help="class names, one a line (ImageNet)")
    importing.add_argument("--version", help="the tag's version (default: BentoML makes one)")
    importing.add_argument("--input-size", type=int, help="the centre crop's side (224)")
    importing.add_argument("--resize-size", type=int, help="the shorter side before it (+32)")
    importing.add_argument("--mean", type=float, nargs=3, metavar="V", help="on 0-255 pixels")
    importing.add_argument("--std", type=float, nargs=3, metavar="V", help="on 0-255 pixels")
    importing.set_defaults(run=model_import_command, needs_settings=False)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not getattr(args, "needs_settings", True):
        return args.run(args, None)
    try:
        return args.run(args, get_settings())
    except SchemaBehind as exc:
        print(exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""`chexstack models list|init-config|handoff|promote|rollback|export`: versions, serving's models.config,
serving state, stable/canary labels, export."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from chexstack.ab import PLATFORM_LABELS
from chexstack.commands.hub import fail, print_json, service
from chexstack.settings import (
    DEFAULT_MODEL_NAME,
    DEFAULT_SEED,
    DEFAULT_SERVING,
    DEFAULT_WAIT_S,
    HubOpt,
    JsonOpt,
    ModelBaseOpt,
    ModelConfigFileOpt,
    ModelNameOpt,
    ServingOpt,
    WaitOpt,
    default_model_base,
    option,
)

models_app = typer.Typer(
    help="Model versions, serving's models.config, serving state and version labels; CheXNet export.",
    no_args_is_help=True,
)

NameArg = Annotated[str, typer.Argument(help="Model name, e.g. chexnet.")]
VersionArg = Annotated[int, typer.Argument(help="Version: the numbered directory in the model base path.")]
INIT_HEADER = (
    "# Written by `chexstack models init-config`; hand-offs, promote and rollback rewrite the version\n"
    "# policy and labels below, and serving re-reads the file.\n"
)


def _check_label(label: str | None) -> None:
    """A label the platform does not route by is a usage error: refused before serving or TensorFlow."""
    if label is not None and label not in PLATFORM_LABELS:
        typer.echo(f"error: bad --label {label!r}: use one of {', '.join(PLATFORM_LABELS)}", err=True)
        raise typer.Exit(2)


@models_app.command("list")
def list_models(
    name: Annotated[
        str | None, typer.Argument(help="Model name (default: every model in models.config).")
    ] = None,
    as_json: JsonOpt = False,
    hub: HubOpt = None,
    model_config_file: ModelConfigFileOpt = None,
    model_base: ModelBaseOpt = None,
    serving: ServingOpt = DEFAULT_SERVING,
) -> None:
    """Versions on disk, their state in serving, their labels and the train job behind each."""
    with service(hub, model_config_file=model_config_file, model_base=model_base, serving=serving) as svc:
        found = svc.list_models(name)
    if as_json:
        print_json(found)
        return
    for m in found:
        typer.echo(f"{m['name']}  policy: {m['policy'] or '-'}  base: {m['model_base']}")
        if m["serving_error"]:
            typer.echo(f"  serving {m['serving']} unreachable: {m['serving_error']}")
        for v in m["versions"]:
            typer.echo(
                f"  v{v['version']:<4} {v['state'] or '-':<10} {'disk' if v['on_disk'] else 'missing':<8}"
                f" {','.join(v['labels']) or '-':<14} job {v['train_job'] or '-'}"
            )


@models_app.command("init-config")
def init_config(
    model_name: ModelNameOpt = DEFAULT_MODEL_NAME,
    model_base: ModelBaseOpt = None,
    model_config_file: ModelConfigFileOpt = None,
    stable: Annotated[
        int | None, option("--stable", "Version labelled stable (default: the highest).", min=1, env=False)
    ] = None,
    canary: Annotated[
        int | None, option("--canary", "Version labelled canary (default: no canary).", min=1, env=False)
    ] = None,
    force: Annotated[bool, option("--force", "Replace an existing --model-config-file.", env=False)] = False,
) -> None:
    """Write serving's models.config for the versions on disk: all loaded, the highest labelled stable.

    `chexstack serve --model-config-file FILE` serves it; hand-offs, promote and rollback rewrite it.
    """
    from chexstack.hub import modelsconfig
    from chexstack.serve.registry import versions_on_disk

    if model_config_file is None:
        raise fail("name the file to write: --model-config-file FILE (or CHEXSTACK_MODEL_CONFIG_FILE)")
    base = (model_base or default_model_base(model_name)).absolute()
    if not base.is_dir():
        raise fail(
            f"model base path {base} is not a directory (export into it: chexstack models export --out DIR)"
        )
    versions = versions_on_disk(base)
    if not versions:
        raise fail(
            f"no numbered version directory in {base} (export one: chexstack models export --out {base})"
        )
    labels = {"stable": versions[-1] if stable is None else stable}
    if canary is not None:
        labels["canary"] = canary
    for label, version in labels.items():
        if version not in versions:
            raise fail(f"--{label} {version}: no version {version} on disk in {base} (versions there: "
                       f"{', '.join(map(str, versions))})")  # fmt: skip
    if not model_config_file.parent.is_dir():
        raise fail(f"cannot write {model_config_file}: {model_config_file.parent} is not a directory")
    spec = {"name": model_name, "base_path": str(base), "version_policy": {"specific": versions},
            "version_labels": labels}  # fmt: skip
    try:
        modelsconfig.write(
            model_config_file,
            modelsconfig.from_models([spec], str(base.parent)),
            INIT_HEADER,
            overwrite=force,
        )
    except modelsconfig.ModelsConfigError as exc:
        raise fail(exc) from exc
    typer.echo(
        f"wrote {model_config_file}: {model_name} versions {', '.join(map(str, versions))} from {base}; "
        + ", ".join(f"{label} -> v{version}" for label, version in labels.items())
    )


@models_app.command("handoff")
def handoff(
    name: NameArg,
    version: VersionArg,
    label: Annotated[
        str | None, option("--label", "stable or canary, once serving has it (default: no label).", env=False)
    ] = None,
    wait_s: Annotated[
        float,
        option("--wait-s", "How long to wait for serving to load the version and apply the label.", min=0.0),
    ] = DEFAULT_WAIT_S,
    hub: HubOpt = None,
    model_config_file: ModelConfigFileOpt = None,
    model_base: ModelBaseOpt = None,
    serving: ServingOpt = DEFAULT_SERVING,
) -> None:
    """Hand a version already on disk to serving, as `train` does after its export.

    The version joins the version policy; once serving has loaded it, --label moves to it. Recorded in
    the hub as a serve job.
    """
    _check_label(label)
    with service(hub, model_config_file=model_config_file, model_base=model_base, serving=serving) as svc:
        job = svc.handoff(name, version, label, wait_s=wait_s)
    if label is None:
        typer.echo(f"{name}: v{version} is loaded in serving (no label set); job {job.id}")
    else:
        _report(job.results, name, job.id)


@models_app.command("promote")
def promote(
    name: NameArg,
    version: Annotated[int, typer.Argument(help="Version to label.")],
    label: Annotated[str, option("--label", "stable or canary.", env=False)],
    wait_s: WaitOpt = DEFAULT_WAIT_S,
    hub: HubOpt = None,
    model_config_file: ModelConfigFileOpt = None,
    model_base: ModelBaseOpt = None,
    serving: ServingOpt = DEFAULT_SERVING,
) -> None:
    """Point a label at a version serving has loaded (refused otherwise); recorded as a serve job."""
    _check_label(label)
    with service(hub, model_config_file=model_config_file, model_base=model_base, serving=serving) as svc:
        job = svc.promote(name, version, label, wait_s=wait_s)
    _report(job.results, name, job.id)


@models_app.command("rollback")
def rollback(
    name: NameArg,
    label: Annotated[str, option("--label", "The label to roll back.", env=False)] = "stable",
    wait_s: WaitOpt = DEFAULT_WAIT_S,
    hub: HubOpt = None,
    model_config_file: ModelConfigFileOpt = None,
    serving: ServingOpt = DEFAULT_SERVING,
) -> None:
    """Return the label (stable by default) to the version it had before."""
    _check_label(label)
    with service(hub, model_config_file=model_config_file, serving=serving) as svc:
        job = svc.rollback(name, label, wait_s=wait_s)
    _report(job.results, name, job.id)


def _report(results: dict[str, object], name: str, job_id: str) -> None:
    applied = "" if results.get("applied") else " (serving has not applied it yet; it re-reads models.config)"
    typer.echo(
        f"{name}: {results['label']} -> v{results['version']} (was {results['previous_version'] or 'unset'})"
        f"{applied}; job {job_id}"
    )


@models_app.command("export")
def export(
    out: Annotated[
        Path, option("--out", "The model base path to write into, e.g. models/chexnet.", env=False)
    ],
    version: Annotated[
        int | None, option("--version", "Version number (default: next free).", min=1, env=False)
    ] = None,
    weights: Annotated[
        str,
        option(
            "--weights",
            "random, imagenet (needs network) or a local .weights.h5 file (model or DenseNet-121 backbone).",
        ),
    ] = "random",
    seed: Annotated[int, option("--seed", "Random seed for random initialisation.")] = DEFAULT_SEED,
) -> None:
    """Build CheXNet, write it as the SavedModel version OUT/<version>/ atomically and print its path."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from chexstack.model import WeightsError, build_chexnet, export_saved_model

    try:
        model = build_chexnet(weights, seed=seed)
        path = export_saved_model(model, out, version, weights_source=weights)
    except (WeightsError, FileExistsError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(str(path))


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")

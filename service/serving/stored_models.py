"""Models in BentoML's model store.

`bento-fleet model import` puts a torchvision architecture's state_dict there under a tag, with
its class names and its preprocessing; `model.tag` in the settings serves it, and `bentoml
build` packs it into the Bento (service.py declares it), so a deploy ships one file.

A stored model is a folder of two files and metadata:

    weights.pt      the state_dict, as torch.save wrote it
    labels.txt      one class name per line
    metadata        architecture, input_size, resize_size, mean, std, weights_sha256

Nothing is half-imported: every check (the files exist, the labels are as many as the
classifier's outputs, the state_dict loads into the architecture, the preprocessing is valid)
runs before the store is touched, and BentoML's `models.create` saves the folder only when its
block ends without an error.
"""

from __future__ import annotations

import functools
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..settings import ModelSettings

WEIGHTS, LABELS = "weights.pt", "labels.txt"
KIND = "bento-fleet.torchvision"  # labels.kind of every model this module stores
PREPROCESSING = ("input_size", "resize_size", "mean", "std")


class ImportRefused(ValueError):
    """What is wrong with a model given to `import_model`, naming the file or the option."""


def read_labels(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def classifier_outputs(module: torch.nn.Module, state: dict) -> tuple[str, int, int] | None:
    """The last weight of the architecture (its classifier), the outputs it was built with and
    the outputs the state_dict gives it; None when the state_dict has no such weight."""
    key = [k for k in module.state_dict() if k.endswith("weight")][-1]
    if key not in state or not hasattr(state[key], "shape"):
        return None
    return key, module.state_dict()[key].shape[0], state[key].shape[0]


def check_model(architecture: str, weights: Path, labels: list[str]) -> str:
    """Build the architecture for these labels and load the state_dict into it, strictly;
    return the weights' sha256. Every failure is an ImportRefused that names what is wrong."""
    from .model import build_architecture, sha256_of

    try:
        module = build_architecture(architecture, len(labels))
    except ValueError as exc:
        raise ImportRefused(f"--architecture: {exc}") from None
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch's unpickler raises whatever a bad file trips
        raise ImportRefused(
            f"--weights {weights}: not a state_dict saved by torch.save ({exc})"
        ) from None
    if not isinstance(state, dict):
        raise ImportRefused(
            f"--weights {weights}: holds a {type(state).__name__}, not a state_dict"
        )
    expected = set(module.state_dict())
    missing, foreign = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or foreign:
        raise ImportRefused(
            f"--weights {weights}: the state_dict does not fit {architecture}: "
            f"{len(missing)} of its parameters missing ({', '.join(missing[:3])}...), "
            f"{len(foreign)} it does not have ({', '.join(foreign[:3])}...); was it saved "
            "from another architecture?"
        )
    outputs = classifier_outputs(module, state)
    if outputs and outputs[1] != outputs[2]:
        key, _, given = outputs
        raise ImportRefused(
            f"--labels: {len(labels)} class names, but the state_dict's classifier ({key}) has "
            f"{given} outputs"
        )
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:  # shapes that differ: the first lines name them
        first = [line.strip() for line in str(exc).splitlines()[1:4]]
        raise ImportRefused(
            f"--weights {weights}: the state_dict does not fit {architecture}: {' '.join(first)}"
        ) from None
    return sha256_of(weights)


def import_model(
    name: str,
    architecture: str,
    weights: Path,
    labels_file: Path | None = None,
    version: str | None = None,
    **preprocessing,
) -> str:
    """Check, then store; return the new model's tag (name:version)."""
    import bentoml
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError

    from ..settings import ModelSettings

    for option, path in (("--weights", weights), ("--labels", labels_file)):
        if path is not None and not path.is_file():
            raise ImportRefused(f"{option} {path}: no such file")
    try:
        if name != name.lower() or (version or "") != (version or "").lower():
            raise ValueError("lowercase only")
        tag = bentoml.Tag(name, version)
    except (BentoMLException, ValueError) as exc:
        raise ImportRefused(
            f"{name}{':' + version if version else ''} is not a valid tag ({exc}): lowercase "
            "letters, digits, _ - and ., beginning and ending with a letter or digit"
        ) from None
    given = {k: v for k, v in preprocessing.items() if v is not None}
    try:  # the settings' own checks, e.g. the centre crop inside the resized image
        ModelSettings(architecture=architecture, weights_path=weights, **given)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        # In the options' names: model.resize_size is --resize-size here.
        message = re.sub(
            r"model\.(\w+)", lambda m: "--" + m[1].replace("_", "-"), error["msg"]
        ).removeprefix("Value error, ")
        option = "--" + where.replace("_", "-")
        raise ImportRefused(f"{option}: {message}" if where else message) from None
    if labels_file is not None:
        labels = read_labels(labels_file)
        if not labels:
            raise ImportRefused(f"--labels {labels_file}: no class names in it")
    else:
        from .model import imagenet_labels

        labels = imagenet_labels()
    sha256 = check_model(architecture, weights, labels)
    metadata = {
        "architecture": architecture,
        "weights_sha256": sha256,
        "classes": len(labels),
        **{k: list(v) if isinstance(v, tuple) else v for k, v in given.items()},
    }
    with bentoml.models.create(tag, labels={"kind": KIND}, metadata=metadata) as model:
        shutil.copyfile(weights, model.path_of(WEIGHTS))
        Path(model.path_of(LABELS)).write_text("\n".join(labels) + "\n")
    # BentoML leaves the model's folder 0700 (a temporary folder moved into the store), and a
    # Bento carries it so: a service running as another user could not read its model.
    Path(bentoml.models.get(model.tag).path).chmod(0o755)
    return str(model.tag)


def stored_model(tag: str):
    """The model from BentoML's model store; from the Bento's own when this code runs from an
    unpacked Bento (see use_the_bentos_store)."""
    import bentoml

    use_the_bentos_store()
    return bentoml.models.get(tag)


@functools.cache
def use_the_bentos_store() -> None:
    """When this code runs from an unpacked Bento (the bento_service role serves one by import
    path, and the `bento-fleet` CLI runs its code), make the Bento's own `models/` BentoML's
    store, as BentoML's loader does when it serves a Bento: the model found there is then the
    one BentoML resolves before serving. Once per process: the store is BentoML's global."""
    bento = Path(__file__).resolve().parents[3]  # <bento>/src/service/serving/this file
    if (bento / "bento.yaml").is_file() and (bento / "models").is_dir():
        from bentoml._internal.configuration.containers import BentoMLContainer
        from bentoml._internal.models import ModelStore

        BentoMLContainer.model_store.set(ModelStore(bento / "models"))


def resolve(model: ModelSettings) -> None:
    """Fill `model` from the stored model its tag names: architecture, files, preprocessing,
    and the name and version answers carry (unless the settings give their own). The tag
    becomes the full name:version, so `latest` is pinned when the service starts or is built."""
    from bentoml.exceptions import NotFound

    try:
        stored = stored_model(model.tag)
    except NotFound:
        raise ValueError(
            f"model.tag {model.tag!r} is not in BentoML's model store "
            "(`bentoml models list`; `bento-fleet model import` adds one)"
        ) from None
    if stored.info.labels.get("kind") != KIND:
        raise ValueError(
            f"model.tag {model.tag!r} was not stored by `bento-fleet model import` "
            f"(labels: {stored.info.labels})"
        )
    meta = stored.info.metadata
    model.tag = str(stored.tag)
    model.architecture = meta["architecture"]
    model.weights_path = Path(stored.path_of(WEIGHTS))
    model.labels_path = Path(stored.path_of(LABELS))
    for field in PREPROCESSING:  # as imported; the defaults where the import gave none
        if meta.get(field) is not None:
            value = meta[field]
            setattr(model, field, tuple(value) if isinstance(value, list) else value)
    model.name = model.name or stored.tag.name
    if "version" not in model.model_fields_set:
        model.version = stored.tag.version

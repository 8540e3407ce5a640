"""The one typed description of a bundle: ``metadata.json`` and the ``checksums.sha256`` record.

Used by both sides: :func:`medtransfer.shared.export.write_bundle` builds a :class:`BundleMeta`
and writes it, :class:`medtransfer.shared.runtime.bundle.Bundle` reads it back through the same
model.  Torch-free (pydantic only).

A bundle folder (schema ``medtransfer-bundle/2``) holds exactly::

    metadata.json       BundleMeta as JSON (name, version, app, task, inputs, outputs,
                        preprocessing, labels, metrics, libraries, files{name: sha256}, ...)
    README.md           the model card
    <model files>       every name listed in metadata ``files`` (``*.onnx``, ``*.onnx.data``, ``*.npz``)
    checksums.sha256    ``sha256sum`` format, one line per file above (all of them, sorted):
                        ``cd BUNDLE && sha256sum -c checksums.sha256`` checks a bundle by hand

Integrity rules (checked by the reader):

- every file in the folder is listed in ``checksums.sha256`` and matches it, ``metadata.json``
  and ``README.md`` included; ``files`` in the metadata names every model file and agrees with
  the checksums; an unlisted file (a planted ``evil.onnx``), a sub-folder (``__pycache__``), a
  symbolic link or anything that is not a regular file is refused;
- names are plain file names inside the folder (no ``/``, ``\\``, ``..``, absolute paths or
  leading dots);
- the only exception: the operating-system view files :data:`OS_FILES` (``.DS_Store``,
  ``Thumbs.db``, ``desktop.ini``) that file browsers drop into any folder they show.  They are
  never opened, not part of the bundle or its identity, and reported as "ignored" by
  ``medtransfer verify``;
- the bundle's identity (``Bundle.sha256``, ``bundle_sha256`` in every scored row) is the sha256
  of the canonical checksums list, i.e. ``sha256sum checksums.sha256`` of a bundle as written: a
  change to any file changes it.

Schema versions: ``"schema": "medtransfer-bundle/<major>[.<minor>]"``.  A reader accepts its own
major (minor additions are extra keys it ignores), refuses a newer major naming both versions,
and refuses major 1 (no checksums over metadata) with a re-export hint.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, field_validator, model_validator

from medtransfer.shared.utils.errors import BundleError

SCHEMA_PREFIX = "medtransfer-bundle"
SCHEMA_MAJOR = 2
SCHEMA = f"{SCHEMA_PREFIX}/{SCHEMA_MAJOR}"

METADATA = "metadata.json"
CARD = "README.md"
CHECKSUMS = "checksums.sha256"
#: names a bundle always has besides its model files
FIXED_FILES = (METADATA, CARD)
#: operating-system view files ignored inside a bundle folder (regular files only; never opened)
OS_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
#: largest metadata.json / checksums.sha256 read (bytes)
MAX_METADATA_BYTES = 16 << 20
MAX_CHECKSUMS_BYTES = 1 << 20

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,199}")
_SHA = re.compile(r"[0-9a-f]{64}")
_SCHEMA_RE = re.compile(rf"{SCHEMA_PREFIX}/(\d{{1,6}})(?:\.(\d{{1,6}}))?")
_LINE = re.compile(r"([0-9a-f]{64}) [ *](.+)")


def is_plain_name(name: str) -> bool:
    """True for a plain file name inside a bundle folder: letters, digits, ``_.+-``, no leading
    dot, no path separators, not ``..``, at most 200 characters."""
    return isinstance(name, str) and bool(_NAME.fullmatch(name)) and ".." not in name


def _shown(name: Any) -> str:
    """A key name from the file, safe for a one-line message (repr, clipped)."""
    s = repr(str(name))
    return s if len(s) <= 60 else s[:57] + "...'"


class BundleMeta(BaseModel):
    """``metadata.json`` of a bundle (schema ``medtransfer-bundle/2``).

    Apps may add keys of their own (``ood``, ``stage``, ``run_dir``...); they are kept as they
    are (``extra="allow"``) and covered by the checksums like everything else.
    """

    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=True, frozen=True)

    schema_id: StrictStr = Field(alias="schema")
    name: StrictStr = Field(min_length=1)
    version: StrictStr = Field(min_length=1)
    app: StrictStr = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    task: StrictStr = Field(min_length=1)
    created: StrictStr = ""
    description: StrictStr = ""
    intended_use: StrictStr = ""
    network_data_format: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, dict[str, Any]]
    outputs: dict[str, dict[str, Any]]
    preprocessing: dict[str, Any]
    labels: list[StrictStr] = Field(default_factory=list)
    metrics: dict[str, Any] = Field(default_factory=dict)
    data_card: StrictStr = ""
    libraries: dict[str, StrictStr] = Field(default_factory=dict)
    files: dict[str, StrictStr]

    @field_validator("files")
    @classmethod
    def _files(cls, v: dict[str, str]) -> dict[str, str]:
        for name, digest in v.items():
            if not is_plain_name(name) or name in FIXED_FILES or name == CHECKSUMS:
                raise ValueError(f"bad entry {_shown(name)}")
            if not _SHA.fullmatch(digest):
                raise ValueError(f"entry {_shown(name)} is not a sha256")
        if not any(n.endswith(".onnx") for n in v):
            raise ValueError("no .onnx model file listed")
        return v

    def to_dict(self) -> dict[str, Any]:
        """The metadata as a plain dict (JSON key names, app keys included)."""
        return self.model_dump(by_alias=True)

    def to_json(self) -> str:
        """``metadata.json`` text."""
        return json.dumps(self.to_dict(), indent=2) + "\n"


#: what each field must be, for one-line errors that never echo values from the file
EXPECT = {
    "schema": f"'{SCHEMA_PREFIX}/<major>'",
    "name": "a non-empty string",
    "version": "a non-empty string",
    "app": "an app name (letters, digits, '_' or '-')",
    "task": "a non-empty string",
    "created": "a string",
    "description": "a string",
    "intended_use": "a string",
    "network_data_format": "a mapping",
    "inputs": "a mapping of input names to specs (mappings)",
    "outputs": "a mapping of output names to specs (mappings)",
    "preprocessing": "a mapping of parameter names to values",
    "labels": "a list of strings",
    "metrics": "a mapping",
    "data_card": "a string",
    "libraries": "a mapping of library names to version strings",
    "files": "a mapping of relative file names to sha256",
}


def schema_major(raw: Any, where: str) -> int:
    """The major schema version of parsed ``metadata.json``; refuses what this reader cannot read.

    Args:
        raw: the parsed JSON.
        where: the metadata file (for messages).

    Returns:
        :data:`SCHEMA_MAJOR`.

    Raises:
        BundleError: not an object, no/bad ``schema``, a newer major, or the retired major 1.
    """
    if not isinstance(raw, dict):
        raise BundleError(f"{where}: expected a JSON object at the top level")
    if "schema" not in raw:
        raise BundleError(f"{where}: field 'schema' is missing")
    s = raw["schema"]
    m = _SCHEMA_RE.fullmatch(s) if isinstance(s, str) else None
    if not m:
        raise BundleError(f"{where}: field 'schema': expected {EXPECT['schema']}")
    major = int(m.group(1))
    if major > SCHEMA_MAJOR:
        raise BundleError(
            f"{where}: bundle schema {major} is newer than this medtransfer (supports {SCHEMA_MAJOR}); "
            "upgrade medtransfer"
        )
    if major < SCHEMA_MAJOR:
        raise BundleError(
            f"{where}: bundle schema {major} is no longer accepted (its metadata is not covered by any "
            f"checksum); re-export it with this medtransfer: medtransfer export RUN_DIR --out BUNDLE"
        )
    return major


def validate_metadata(raw: Any, where: str) -> BundleMeta:
    """Check the schema version, then validate ``raw`` against :class:`BundleMeta`.

    Args:
        raw: parsed ``metadata.json``.
        where: the metadata file (for messages).

    Returns:
        The validated description.

    Raises:
        BundleError: one line ``<where>: field '<key>': expected ...`` naming the first bad field.
    """
    schema_major(raw, where)
    try:
        meta = BundleMeta.model_validate(raw)
    except ValidationError as e:
        raise BundleError(f"{where}: {_one_line(e)}") from None
    check_reference_entry(raw, where)
    return meta


def _one_line(e: ValidationError) -> str:
    err = e.errors(include_url=False, include_input=False)[0]
    loc = [str(x) for x in err.get("loc", ())]
    field = loc[0] if loc else "?"
    if err.get("type") == "missing" and len(loc) == 1:
        return f"field '{field}' is missing"
    what = EXPECT.get(field)
    if what is None:
        return f"field {_shown(field)}: {err.get('msg', 'invalid')}"
    detail = ""
    if field == "files":
        msg = str(err.get("msg", ""))
        if "bad entry" in msg or "not a sha256" in msg or "no .onnx" in msg:
            detail = " (" + msg.split(", ", 1)[-1] + ")"
        elif len(loc) > 1:
            detail = f" (entry {_shown(loc[1])})"
    elif len(loc) > 1 and field in ("inputs", "outputs", "libraries"):
        detail = f" (entry {_shown(loc[1])})"
    return f"field '{field}': expected {what}{detail}"


# ---------------------------------------------------------------------------------- checksums
@dataclass(frozen=True)
class FileCheck:
    """One verified file of a bundle (what ``medtransfer verify`` prints)."""

    name: str
    size: int
    sha256: str
    status: str  # "OK" or "ignored"


def format_checksums(digests: dict[str, str]) -> str:
    """The canonical ``checksums.sha256`` text: ``<sha256>  <name>`` lines sorted by name."""
    return "".join(f"{digests[n]}  {n}\n" for n in sorted(digests))


def parse_checksums(data: bytes, where: str) -> dict[str, str]:
    """Parse ``checksums.sha256`` (``sha256sum`` text or binary-mode lines).

    Args:
        data: the file bytes.
        where: the file (for messages).

    Returns:
        name -> sha256.

    Raises:
        BundleError: not UTF-8, a malformed line, a name that is not a plain file name, a duplicate.
    """
    if len(data) > MAX_CHECKSUMS_BYTES:
        raise BundleError(f"{where}: larger than {MAX_CHECKSUMS_BYTES} bytes; not a bundle checksum list")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BundleError(f"{where}: not UTF-8 text") from None
    out: dict[str, str] = {}
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.fullmatch(line)
        if not m:
            raise BundleError(f"{where}: line {i} is not '<sha256>  <file name>'")
        digest, name = m.groups()
        if not is_plain_name(name) or name == CHECKSUMS:
            raise BundleError(f"{where}: line {i}: {_shown(name)} is not a plain file name inside the bundle")
        if name in out:
            raise BundleError(f"{where}: line {i}: {_shown(name)} is listed twice")
        out[name] = digest
    return out


def read_metadata_bytes(data: bytes, where: str) -> BundleMeta:
    """Decode, parse and validate ``metadata.json`` bytes.

    Raises:
        BundleError: one line naming ``where`` and the problem.
    """
    if len(data) > MAX_METADATA_BYTES:
        raise BundleError(f"{where}: larger than {MAX_METADATA_BYTES} bytes; not bundle metadata")
    try:
        raw = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise BundleError(f"{where}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise BundleError(f"{where}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
    except RecursionError:
        raise BundleError(f"{where}: JSON nested too deeply") from None
    try:
        return validate_metadata(raw, where)
    except RecursionError:
        raise BundleError(f"{where}: JSON nested too deeply") from None


# ---------------------------------------------------------------------------------- reference statistics
REFERENCE_SCHEMA = "medtransfer-reference/1"


class ValCases(BaseModel):
    """Per validation case (no paths, no identifiers): predicted and true class, the two ATC scores."""

    model_config = ConfigDict(extra="forbid")

    pred: list[int]
    label: list[int]
    max_softmax: list[float]
    neg_entropy: list[float]

    @field_validator("label", "max_softmax", "neg_entropy")
    @classmethod
    def _same_length(cls, v: list[Any], info: Any) -> list[Any]:
        n = len(info.data.get("pred", v))
        if len(v) != n:
            raise ValueError(f"has {len(v)} entries, 'pred' has {n}")
        return v


class ReferenceStats(BaseModel):
    """``reference.json`` of a bundle: what ``medtransfer estimate`` compares a new site with.

    Written at export from the run's validation split (see ``shared.export.reference``); listed in
    the metadata's ``files`` and in ``checksums.sha256`` like every other bundle file.
    """

    model_config = ConfigDict(extra="allow")

    schema_id: StrictStr = Field(alias="schema")
    kind: StrictStr = Field(pattern=r"^(classifier|segmentation|survival|other)$")
    split: StrictStr = Field(pattern=r"^val$")
    n_cases: int = Field(ge=1)
    n_errors: int = Field(ge=0)
    labels: list[StrictStr] = Field(default_factory=list)
    accuracy: float | None = None
    balanced_accuracy: float | None = None
    score_functions: dict[str, dict[str, Any]] = Field(default_factory=dict)
    val_cases: ValCases | None = None
    confidence: dict[str, list[float]] = Field(default_factory=dict)
    stats: dict[str, list[float]] = Field(default_factory=dict)
    outputs: dict[str, list[float]] = Field(default_factory=dict)

    @field_validator("schema_id")
    @classmethod
    def _schema(cls, v: str) -> str:
        if v != REFERENCE_SCHEMA:
            raise ValueError(f"expected '{REFERENCE_SCHEMA}'")
        return v

    @model_validator(mode="after")
    def _classifier_cases(self) -> "ReferenceStats":
        if self.kind == "classifier" and (self.val_cases is None or not self.val_cases.pred):
            raise ValueError("a classifier reference needs its validation cases ('val_cases')")
        return self


def validate_reference(raw: Any, where: str) -> ReferenceStats:
    """Validate parsed ``reference.json``.

    Raises:
        BundleError: one line naming ``where`` and the first bad field (values never echoed).
    """
    if not isinstance(raw, dict):
        raise BundleError(f"{where}: expected a JSON object at the top level")
    try:
        return ReferenceStats.model_validate(raw)
    except ValidationError as e:
        err = e.errors(include_url=False, include_input=False)[0]
        loc = ".".join(str(x) for x in err.get("loc", ())) or "?"
        raise BundleError(f"{where}: field {_shown(loc)}: {err.get('msg', 'invalid')}") from None


def check_reference_entry(meta: dict[str, Any], where: str) -> None:
    """The metadata's ``reference`` summary, when present, must be a mapping naming a listed file.

    Raises:
        BundleError: a malformed summary or a ``file`` not in the metadata's ``files``.
    """
    ref = meta.get("reference")
    if ref is None:
        return
    if not isinstance(ref, dict):
        raise BundleError(f"{where}: field 'reference': expected a mapping")
    f = ref.get("file")
    if f is not None and f not in (meta.get("files") or {}):
        raise BundleError(f"{where}: field 'reference': file {_shown(f)} is not one of the bundle's files")

"""The typed bundle description: schema versions and field types give one-line BundleErrors."""

import json

import pytest

from medtransfer.shared.runtime.bundle import Bundle, load_bundle
from medtransfer.shared.runtime.schema import SCHEMA, BundleMeta
from medtransfer.shared.utils.errors import BundleError, MedTransferError


def _edit(kit, b, **changes):
    meta = kit.read_meta(b)
    meta.update(changes)
    kit.write_meta(b, meta)
    kit.reseal(b)  # schema errors must be caught even when the checksums agree


def test_writer_and_reader_share_the_model(kit, tmp_path):
    b = kit.make_bundle(tmp_path / "b")
    bundle = load_bundle(b)
    assert isinstance(bundle.description, BundleMeta) and bundle.schema == SCHEMA == "medtransfer-bundle/2"
    assert bundle.meta == BundleMeta.model_validate(kit.read_meta(b)).to_dict()
    assert bundle.meta["ood"] == {"msp_threshold": 0.4}  # app keys kept
    assert bundle.labels == ["a", "b", "c"] and bundle.preprocessing["threshold"] == 0.5


def test_newer_major_schema_is_refused_naming_the_version(kit, tmp_path):
    b = kit.make_bundle(tmp_path / "b")
    _edit(kit, b, schema="medtransfer-bundle/3", brand_new_field={"x": 1})
    with pytest.raises(BundleError) as e:
        load_bundle(b, verify=False)
    assert str(e.value) == (
        f"{b / 'metadata.json'}: bundle schema 3 is newer than this medtransfer (supports 2); upgrade medtransfer"
    )


def test_minor_additions_are_accepted_and_schema_1_needs_reexport(kit, tmp_path):
    b = kit.make_bundle(tmp_path / "b")
    _edit(kit, b, schema="medtransfer-bundle/2.1", added_in_2_1=[1, 2])
    assert load_bundle(b).meta["added_in_2_1"] == [1, 2]
    _edit(kit, b, schema="medtransfer-bundle/1")
    with pytest.raises(BundleError, match="bundle schema 1 is no longer accepted .* re-export"):
        load_bundle(b)
    for bad in ("medtransfer-bundle/two", 2, None):
        _edit(kit, b, schema=bad)
        with pytest.raises(BundleError, match=r"field 'schema': expected 'medtransfer-bundle/<major>'"):
            load_bundle(b)


@pytest.mark.parametrize(
    "field,value,expect",
    [
        ("files", ["model.onnx"], "field 'files': expected a mapping of relative file names to sha256"),
        (
            "files",
            {"model.onnx": 12},
            "field 'files': expected a mapping of relative file names to sha256 (entry 'model.onnx')",
        ),
        (
            "files",
            {},
            "field 'files': expected a mapping of relative file names to sha256 (no .onnx model file listed)",
        ),
        ("labels", "DOE^JOHN", "field 'labels': expected a list of strings"),
        ("labels", [1, 2, 3], "field 'labels': expected a list of strings"),
        ("name", ["DOE^JOHN"], "field 'name': expected a non-empty string"),
        ("app", "../../evil", "field 'app': expected an app name (letters, digits, '_' or '-')"),
        ("preprocessing", [0.5], "field 'preprocessing': expected a mapping of parameter names to values"),
        (
            "inputs",
            {"image": "DOE^JOHN"},
            "field 'inputs': expected a mapping of input names to specs (mappings) (entry 'image')",
        ),
        ("task", None, "field 'task': expected a non-empty string"),
    ],
)
def test_wrong_types_are_one_line_errors_without_values(kit, tmp_path, field, value, expect):
    """Repro: wrong types were accepted or ended in tracebacks (a list `files` -> AttributeError)."""
    b = kit.make_bundle(tmp_path / "b")
    _edit(kit, b, **{field: value})
    with pytest.raises(BundleError) as e:
        load_bundle(b)
    assert str(e.value) == f"{b / 'metadata.json'}: {expect}"
    assert "DOE" not in str(e.value)


def test_missing_field_and_bad_json(kit, tmp_path):
    b = kit.make_bundle(tmp_path / "b")
    meta = kit.read_meta(b)
    del meta["outputs"]
    kit.write_meta(b, meta)
    with pytest.raises(BundleError, match=r"metadata.json: field 'outputs' is missing$"):
        load_bundle(b)
    (b / "metadata.json").write_text('{"schema": "medtransfer-bundle/2", ')
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(b)
    (b / "metadata.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(BundleError, match="metadata.json: "):
        load_bundle(b)


@pytest.mark.fuzz
def test_fuzz_bundle_metadata(fuzz, kit, tmp_path):
    """Mutated metadata.json bytes: the loader returns a bundle or raises BundleError, never anything else,
    both as-is (checksums disagree) and resealed (the mutation passes the integrity check)."""
    b = kit.make_bundle(tmp_path / "b")
    seed = (b / "metadata.json").read_bytes()

    def reader(path):
        (b / "metadata.json").write_bytes(path.read_bytes())
        try:
            Bundle(b)
        except MedTransferError as e:
            assert isinstance(e, BundleError), type(e)
            raise
        kit.reseal(b)
        bundle = Bundle(b)
        bundle.provenance()

    (tmp_path / "cases").mkdir()
    fuzz.run(seed, ".json", reader, tmp_path / "cases")


@pytest.mark.fuzz
def test_fuzz_bundle_metadata_values(fuzz, kit, tmp_path):
    """Structured fuzz: any JSON value in any field (or a field dropped), resealed so the schema
    check is what decides: a bundle or a one-line BundleError, never another exception."""
    from hypothesis import given
    from hypothesis import strategies as st

    b = kit.make_bundle(tmp_path / "b")
    base = kit.read_meta(b)
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True),
        st.text(max_size=20),
        st.sampled_from(["model.onnx", "../x.onnx", "/etc/passwd", "a" * 64]),
    )
    values = st.recursive(
        scalars,
        lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.text(max_size=12), c, max_size=4)),
        max_leaves=12,
    )

    @fuzz.settings()
    @given(st.sampled_from(sorted(base)), values, st.booleans())
    def _one(key, value, drop):
        meta = json.loads(json.dumps(base))
        if drop:
            meta.pop(key)
        else:
            meta[key] = value
        kit.write_meta(b, meta)
        kit.reseal(b)
        fuzz.check(lambda _: Bundle(b).provenance(), b)

    _one()

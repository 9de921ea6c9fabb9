"""What we take from cog's private inspector, pinned so that a cog upgrade that changes it fails here.

cog 0.23 has no public API that lists a predictor's inputs; musicgen_cog/api/cog_schema.py is the
only module that reads `cog._inspector` and `cog._adt`. These tests name each thing it relies on.
"""

import json

import cog
import pytest

from musicgen_cog.api.cog_schema import InputCheckError, build_schema, check_inputs, read_predictor, write_schema
from musicgen_cog.audio.choices import NORMALIZATION_STRATEGIES, OUTPUT_FORMATS
from tests.helpers import HOSTED_API


@pytest.fixture(scope="module")
def info(tiny_weights):
    return read_predictor()


def test_cogs_private_inspector_still_offers_what_we_read(info):
    from cog import _adt, _inspector

    assert callable(_inspector.create_predictor) and callable(_inspector.check_input), cog.__version__
    assert {"OPTIONAL", "REQUIRED", "REPEATED", "OPTIONAL_REPEATED"} <= set(_adt.Repetition.__members__)
    field = info.inputs["top_k"]
    for attribute in ("order", "default", "description", "choices", "ge", "le", "min_length", "max_length", "regex"):
        assert hasattr(field, attribute), f"cog {cog.__version__}: InputField lost {attribute!r}"
    assert field.type.primitive.json_type() == {"type": "integer"}
    assert info.output.json_type()["format"] == "uri"


def test_the_inputs_are_read_in_predict_py_order_with_their_declarations(info):
    assert list(info.inputs) == [field["name"] for field in HOSTED_API["inputs"]]
    # predict.py spells its choices out (cog build's parser reads literals); they are what the audio code offers
    assert info.inputs["normalization_strategy"].choices == list(NORMALIZATION_STRATEGIES)
    assert info.inputs["output_format"].choices == list(OUTPUT_FORMATS)
    assert (info.inputs["continuation_end"].ge, info.inputs["duration"].default) == (-1, 8)


def test_cogs_checks_convert_values_and_fill_defaults(info):
    kwargs = check_inputs(info, {"prompt": "x", "duration": "4", "top_p": "0.5"})
    assert (kwargs["duration"], kwargs["top_p"], kwargs["top_k"], kwargs["seed"]) == (4, 0.5, 250, None)


@pytest.mark.parametrize("name, value", [("output_format", "ogg"), ("continuation_end", -2), ("duration", "eight")])
def test_a_refused_value_names_its_input_without_parsing_cogs_message(info, name, value):
    with pytest.raises(InputCheckError) as caught:
        check_inputs(info, {"prompt": "x", name: value})
    assert caught.value.input_name == name


def test_the_schema_has_cog_builds_shape(tiny_weights):
    schema = build_schema()
    assert schema["openapi"] == "3.0.2" and set(schema["paths"]) == {
        "/", "/health-check", "/predictions", "/predictions/{prediction_id}/cancel"}  # fmt: skip
    properties = schema["components"]["schemas"]["Input"]["properties"]
    assert properties["seed"] == {
        "x-order": 13, "title": "Seed", "type": "integer", "default": None, "nullable": True,
        "description": HOSTED_API["inputs"][13]["description"],
    }  # fmt: skip
    assert properties["output_format"]["allOf"] == [{"$ref": "#/components/schemas/output_format"}]
    assert "required" not in schema["components"]["schemas"]["Input"]  # every input has a default or is optional


def test_write_schema_writes_the_document_as_json(tiny_weights, tmp_path):
    path = write_schema(tmp_path / ".cog" / "openapi_schema.json")
    assert json.loads(path.read_text()) == build_schema() and [p.name for p in path.parent.iterdir()] == [path.name]

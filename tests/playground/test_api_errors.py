"""Which input an API error names, on the two shapes the real server gives (tests/test_http.py pins them)."""

from playground.api_errors import input_error_field, schema_errors


def test_a_predictor_refusal_names_its_input():
    error = (
        "Prediction failed: Async prediction failed: InputError: input_audio could not be decoded (Invalid data); "
        "expected an audio file ffmpeg can decode (wav, mp3, flac, ogg, m4a, ...)"
    )
    assert input_error_field(error) == {"input_audio": error.split("InputError: ")[1]}


def test_an_error_naming_no_input_gives_no_field():
    assert input_error_field("Input validation error: Incorrect padding") == {}
    assert input_error_field("Prediction failed: Async prediction failed: RuntimeError: boom") == {}


def test_a_422_names_each_input_in_its_detail():
    body = {
        "detail": [
            {"loc": ["body", "input", "continuation_start"], "msg": "-5 is less than the minimum of 0"},
            {"loc": ["body", "input", "output_format"], "msg": '"ogg" is not one of ["wav","mp3"]'},
            {"loc": ["body"], "msg": "Field required"},
        ]
    }
    assert schema_errors(body) == {
        "continuation_start": "continuation_start: -5 is less than the minimum of 0",
        "output_format": 'output_format: "ogg" is not one of ["wav","mp3"]',
        "input": "input: Field required",
    }
    assert schema_errors("not json") == {}

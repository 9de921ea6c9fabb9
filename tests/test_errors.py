"""InputError: the message a user sees starts with the input it is about."""

from musicgen_cog.errors import InputError


def test_a_named_input_leads_its_message():
    error = InputError("top_k", "must be between 0 and 2048, got 4000")
    assert str(error) == "top_k must be between 0 and 2048, got 4000" and error.input_name == "top_k"


def test_a_check_about_several_inputs_keeps_its_own_wording():
    error = InputError(None, "Must provide either prompt or input_audio")
    assert str(error) == "Must provide either prompt or input_audio" and error.input_name is None
    assert isinstance(error, ValueError)

"""A take as the server's updates describe it: seed, progress and file name read from real log lines."""

from playground.takes import Take

# the logs of a real 20 s prediction (tiny weights), as coglet's webhooks carried them
LOGS = (
    "Using seed 5\ngenerating 20.00 s from text\ngeneration: 884/1003 steps (88%), 441.8 steps/s\n"
    "generation: 1003/1003 steps (100%), 424.7 steps/s\ndecoded 1003 steps in 2.4 s (424.3 steps/s)\n"
    "normalizing (loudness) and encoding wav\nwrote musicgen-seed5-191104a7d555.wav (20.00 s of audio) in 3.2 s\n"
)


def test_seed_progress_and_file_name_come_from_the_logs():
    take = Take("t", {"prompt": "x"})
    assert (take.seed(), take.progress(), take.file_name()) == (None, None, "musicgen-seedNone.wav")
    take.apply({"status": "processing", "logs": LOGS.split("generation: 1003")[0]})
    assert (take.seed(), take.progress()) == (5, (884, 1003))
    take.apply({"status": "succeeded", "logs": LOGS, "output": "data:audio/wav;base64,AAAA"})
    assert (take.progress(), take.file_name(), take.output) == (
        (1003, 1003),
        "musicgen-seed5-191104a7d555.wav",
        "data:audio/wav;base64,AAAA",
    )


def test_without_its_log_line_the_file_is_named_by_seed_and_format():
    take = Take("t", {"output_format": "mp3"}, logs="Using seed 0\n")
    assert take.file_name() == "musicgen-seed0.mp3"


def test_updates_out_of_order_never_go_back():
    take = Take("t", {})
    take.apply({"status": "processing", "logs": "Using seed 1\n"})
    take.apply({"status": "starting"})  # the 202 that accepted it, read after its first webhook
    assert take.status == "processing" and take.logs == "Using seed 1\n"
    take.apply({"status": "canceled"})
    take.apply({"status": "processing", "logs": "late"})  # a webhook that lost the race to the terminal one
    assert (take.status, take.logs, take.done) == ("canceled", "Using seed 1\n", True)


def test_a_failure_keeps_the_servers_message_and_the_input_it_names():
    take = Take("t", {}, notice="The server is busy")
    refusal = "top_k must be between 0 and the codebook size 2048, got 4000"
    error = f"Prediction failed: Async prediction failed: InputError: {refusal}"
    take.apply({"status": "failed", "error": error})
    assert (take.error, take.notice) == (error, None)
    assert take.field_errors == {"top_k": refusal}
    silent = Take("u", {})
    silent.apply({"status": "failed"})
    assert silent.error == "the prediction failed and the server gave no reason"

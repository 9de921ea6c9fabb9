"""A request's random streams: those a seed starts, its own alone, never the process's."""

import random

import torch

from musicgen_cog.model.randomness import RequestRandomness


def test_the_generator_starts_where_torch_manual_seed_does():
    torch.manual_seed(42)
    expected = torch.rand(5)
    assert torch.equal(torch.rand(5, generator=RequestRandomness(42, "cpu").generator), expected)


def test_python_random_inside_continues_the_requests_stream_and_leaves_the_global_one():
    random.seed(0)
    outside = [random.random() for _ in range(3)]
    random.seed(0)
    first, second = RequestRandomness(7, "cpu"), RequestRandomness(7, "cpu")
    with first.python_random():
        a = random.random()
    with second.python_random():
        b = random.random()
    with first.python_random():
        a2 = random.random()
    reference = random.Random(7)
    assert a == b == reference.random() and a2 == reference.random()
    assert [random.random() for _ in range(3)] == outside


def test_torch_default_inside_continues_the_requests_generator_and_leaves_the_global_one():
    torch.manual_seed(0)
    outside = torch.rand(3)
    torch.manual_seed(0)
    randomness = RequestRandomness(9, "cpu")
    sampled = torch.rand(2, generator=randomness.generator)
    with randomness.torch_default():
        inside = torch.rand(2)
    after = torch.rand(2, generator=randomness.generator)
    torch.manual_seed(9)
    assert torch.equal(torch.cat([sampled, inside, after]), torch.rand(6))
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), outside)

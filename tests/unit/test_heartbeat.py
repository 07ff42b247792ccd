import doctest

import aioclock._heartbeat


def test_the_heartbeat_examples_hold():
    failed, attempted = doctest.testmod(aioclock._heartbeat)
    assert attempted and not failed

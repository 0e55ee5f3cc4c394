"""What the tests share: in-process nodes and farms, the network-namespace test
bed, and the waits (``tests.harness.waiting``)."""

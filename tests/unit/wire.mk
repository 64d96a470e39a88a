# Unit tests for the UDP fast path parts of libfb.

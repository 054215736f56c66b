"""Flow control: why a client connection has stopped reading.

The reasons are bit flags on `ClientProtocol.paused`; reading resumes once all are cleared.
"""

PAUSE_UPSTREAM = 1  # the upstream write buffer is full
PAUSE_PIPELINE = 2  # a pipelined request waits behind the active one
PAUSE_BUFFER = 4  # the body buffered during an upstream connect is large

"""Send stage: building requests, talking to Target (retries, circuit), reading answers."""

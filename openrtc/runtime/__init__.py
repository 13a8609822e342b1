"""The runtime: agents, sessions, admission, the pool and its loop."""

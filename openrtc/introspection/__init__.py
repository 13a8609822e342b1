"""The introspection daemon: task tagging, the socket, its wire format, server and client."""

"""Front ends: the `openrtc` command line."""

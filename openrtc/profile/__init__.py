"""Profiles: CPU samples per session, wall-time and semantic (token, tool) profiles, and their formats
(folded, SVG, speedscope, pprof, HTML)."""

from openrtc.profile.stacks import Profile, ProfileError

__all__ = ["Profile", "ProfileError"]

"""`openrtc top`: the operator's view of every local worker. `--once` never imports Textual."""

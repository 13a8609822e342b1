"""`openrtc stats`'s logic: sessions summed from the event log (`summary`) and the reports over them
(`report`). Pure but for reading the log's files; the command itself is `openrtc.cli.stats`."""
